"""Peer benchmark: zero-shot yes/no scoring with lm-evaluation-harness (lm-eval 0.4.13), for the peer row of
`make bench BENCH=smollm2` (peftqa bench-cpu speed).

Standalone: it runs in its own venv, outside the project's lock (`make .venv-lmeval/.installed`, pins in
requirements/lm-eval.txt), as

    .venv-lmeval/bin/python peftqa/studies/lm_eval_peer.py --model DIR [--gguf-file NAME] --items ITEMS.jsonl \\
        [--batch-size 4] --out RESULT.json

It imports nothing from peftqa, and imports torch, transformers and lm_eval only inside functions, so importing this
module in the project's venv (which has no lm_eval) does not fail. No test depends on it.

ITEMS.jsonl holds one JSON object per line: `prompt` (the full prompt, ending right before the answer), `choices`
(e.g. [" yes", " no"]) and `gold` (the index of the right choice).

What it times: the model is built as lm-eval's HF model (lm_eval.models.huggingface.HFLM: device cpu, float32,
batch_size N; a GGUF is dequantised by transformers) and that load is timed on its own. Then one
`HFLM.loglikelihood` call scores every (prompt, choice) pair, as lm_eval.api.instance.Instance objects of
request_type "loglikelihood" with arguments (context, continuation): exactly the requests a multiple_choice task
hands the model inside simple_evaluate, so lm-eval's own tokenisation, length sorting, batching (its Collator) and
shared-context logits cache are what is timed, without the task/dataset/metric machinery. torch's thread count is
left at its default.

RESULT.json: lm_eval, torch and transformers versions, batch_size, items, load_seconds, score_seconds, items_per_s
(items / score_seconds), accuracy (argmax over the choices vs gold) and loglikelihoods (per item, one summed
log-probability per choice, in the choices' order).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def read_items(path: str) -> list[dict]:
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        missing = {"prompt", "choices", "gold"} - item.keys()
        if missing:
            raise SystemExit(f"{path}:{n}: missing field(s) {sorted(missing)}")
        items.append(item)
    if not items:
        raise SystemExit(f"{path}: no items")
    return items


def load_model(model: str, gguf_file: str | None, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    kwargs = {"pretrained": model, "device": "cpu", "dtype": "float32", "batch_size": batch_size}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return HFLM(**kwargs)


def score(lm, items: list[dict]) -> list[list[float]]:
    """Summed log-likelihood of each choice after its prompt, through one lm.loglikelihood call."""
    from lm_eval.api.instance import Instance

    requests, owners = [], []
    for i, item in enumerate(items):
        for j, choice in enumerate(item["choices"]):
            requests.append(Instance(request_type="loglikelihood", doc=item, arguments=(item["prompt"], choice),
                                     idx=j, metadata=("lm_eval_peer", i, 1)))
            owners.append(i)
    results = lm.loglikelihood(requests, disable_tqdm=True)
    out: list[list[float]] = [[] for _ in items]
    for i, (ll, _is_greedy) in zip(owners, results):
        out[i].append(float(ll))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a local model folder")
    parser.add_argument("--gguf-file", default=None, help="a GGUF file's name inside --model")
    parser.add_argument("--items", required=True, help="JSONL: prompt, choices, gold per line")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)

    import lm_eval
    import torch
    import transformers

    items = read_items(args.items)
    start = time.perf_counter()
    lm = load_model(args.model, args.gguf_file, args.batch_size)
    load_seconds = time.perf_counter() - start

    start = time.perf_counter()
    lls = score(lm, items)
    score_seconds = time.perf_counter() - start

    correct = sum(max(range(len(ll)), key=ll.__getitem__) == int(item["gold"]) for ll, item in zip(lls, items))
    result = {
        "lm_eval": lm_eval.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "items": len(items),
        "load_seconds": round(load_seconds, 3),
        "score_seconds": round(score_seconds, 3),
        "items_per_s": round(len(items) / score_seconds, 3),
        "accuracy": correct / len(items),
        "loglikelihoods": lls,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "loglikelihoods"}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
