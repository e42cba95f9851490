"""The peer row of `peftqa bench-cpu speed`: lm-evaluation-harness, in its own venv, against peftqa's scoring on the
same zero-shot items and prompt. lm-eval runs as a subprocess (peftqa/studies/lm_eval_peer.py), so nothing here imports
it."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from peftqa.errors import PeftqaError
from peftqa.evaluation.scoring import score_frame
from peftqa.methods.attach import load_backbone
from peftqa.params import Params

LM_EVAL_PYTHON = Path(".venv-lmeval/bin/python")  # its own venv, outside the lock (make .venv-lmeval/.installed)
LM_EVAL_DRIVER = Path(__file__).with_name("lm_eval_peer.py")  # runs in that venv: imports nothing of peftqa
LM_EVAL_BATCH = 4  # lm-eval's --batch_size in the measurement; it sorts requests by length itself
PEER_MAX_LENGTH = 1024  # whole prompts: the plain template's longest test prompt is far shorter, nothing is cut


def peer(test: pd.DataFrame, workdir: Path, params: Params, seed: int, progress) -> dict:
    """Zero-shot scoring of `test` with the plain template (no chat template, label words " yes" / " no"), nothing
    cut: lm-evaluation-harness (loglikelihood of each answer, its own length-sorted batches) against peftqa in
    fp32 in file order (evaluate.batch_size), fp32 in length order, and bf16 compute in length order. Each is one
    timed pass after the model is loaded and warmed up. `params`: the SmolLM2 profile at PEER_MAX_LENGTH, plain
    template, exact label words, model.dtype bf16_compute (its fp32 passes run without autocast: exactly fp32)."""
    if not LM_EVAL_PYTHON.exists():
        raise PeftqaError(f"{LM_EVAL_PYTHON} not found: the peer row needs lm-evaluation-harness in its own venv; "
                          "`make .venv-lmeval/.installed` makes it (make bench BENCH=smollm2 does too)")
    backbone = load_backbone(params.model, "base", params.peft, params.prepare.labels, seed=seed, device="cpu")
    lengths = backbone.token_lengths(test)
    if max(lengths) >= PEER_MAX_LENGTH - 2:
        raise PeftqaError(f"a test prompt takes {max(lengths)} tokens: raise PEER_MAX_LENGTH so nothing is cut")
    choices = [" " + label for label in params.prepare.labels]
    items = workdir / "peer_items.jsonl"
    items.write_text("".join(json.dumps({"prompt": "".join(backbone._filled(q, c)), "choices": choices,
                                         "gold": params.prepare.labels.index(label)}) + "\n"
                             for q, c, label in zip(test["question"], test["context"], test["label"], strict=True)))
    model_path, model_kwargs = backbone.source
    out = workdir / "peer_lm_eval.json"
    progress(f"peer: lm-evaluation-harness on {len(test)} items")
    subprocess.run([str(LM_EVAL_PYTHON), str(LM_EVAL_DRIVER), "--model", str(model_path), "--items", str(items),
                    "--batch-size", str(LM_EVAL_BATCH), "--out", str(out),
                    *(["--gguf-file", model_kwargs["gguf_file"]] if model_kwargs.get("gguf_file") else [])],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lm_eval = json.loads(out.read_text())
    lm_eval["items_per_s"] = lm_eval["items"] / lm_eval["score_seconds"]  # unrounded
    lm_eval_margin = np.array([yes - no for yes, no in lm_eval["loglikelihoods"]])
    score_frame(backbone, test.iloc[:2], 2, with_loss=False)  # warm-up
    rows = [{"scorer": f"lm-evaluation-harness {lm_eval['lm_eval']} (batch {LM_EVAL_BATCH}, sorted by length)",
             "items_per_s": lm_eval["items_per_s"], "seconds": lm_eval["score_seconds"], "label_agreement": 1.0,
             "max_abs_margin_difference": 0.0}]
    for name, bf16, by_length in (("fp32, file order", False, False), ("fp32, length order", False, True),
                                  ("bf16 compute, length order", True, True)):
        progress(f"peer: peftqa, {name}")
        start = time.perf_counter()
        _, log_probs = score_frame(backbone, test, params.evaluate.batch_size, with_loss=False, bf16=bf16,
                                   by_length=by_length)
        seconds = time.perf_counter() - start
        margin = log_probs[:, 0] - log_probs[:, 1]
        rows.append({"scorer": f"peftqa score_frame, {name} (batch {params.evaluate.batch_size})",
                     "items_per_s": len(test) / seconds, "seconds": seconds,
                     "label_agreement": float(np.mean((margin > 0) == (lm_eval_margin > 0))),
                     "max_abs_margin_difference": float(np.abs(margin - lm_eval_margin).max())})
    for row in rows:
        row["vs_lm_eval"] = row["items_per_s"] / lm_eval["items_per_s"]
    return {"items": len(test), "max_length": PEER_MAX_LENGTH, "template": "plain (no chat template)",
            "lm_eval_load_seconds": lm_eval["load_seconds"], "rows": rows}
