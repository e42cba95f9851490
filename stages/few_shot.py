"""Stage few_shot: the zero-shot base with solved train examples in its prompt, scored like a method; the references
stage makes it the reference row `few_shot`.

Each of references.few_shot_draws draws one train item per label (seed train.seed + 1000 + k,
peftqa.evaluation.few_shot), puts them whole before every prompt (earlier chat turns under a chat template) and scores
val with the verbalizer. The draw with the best val macro-F1 (ties: the earlier) is the row: val and test are scored
with it, greedy answers too (generate_parse_rate, generate_agreement), and its batched test throughput is its cost. Test
is scored once, with the chosen draw alone. Prompts are cut to references.few_shot_max_length tokens (the item's context
alone is cut, as model.truncation says; items_cut counts them). Not defined (no model is loaded) for the encoder family
or when few_shot is not in references.names: choices.json says why.

Inputs:  data/processed/{train,val,test}.csv; params: model, references, prepare.labels, train.seed, train.device,
         train.limit_train (the examples come from the items training reads), train.length_groups, evaluate.
Outputs: reports/few_shot/preds_{val,test}.csv        the chosen draw's predictions (evaluate's columns; latency_s
                                                       is NaN: the batched throughput is in the metrics)
         reports/few_shot/preds_val_draw<k>.csv       every draw's val predictions
         reports/few_shot/metrics_{val,test}.json     classification metrics, greedy-answer metrics, examples_per_s,
                                                       prompt tokens (max, median) and items_cut
         reports/few_shot/choices.json                per draw its seed, examples (pmid, label), val scores and
                                                       prompt tokens; the chosen draw; or {"not_defined": why}
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from peftqa.catalog import (
    FEW_SHOT_CHOICES,
    FEW_SHOT_DRAW,
    FEW_SHOT_METRICS,
    FEW_SHOT_PREDS,
    SCORED_SPLITS,
    read_split,
)
from peftqa.compute import use_bf16
from peftqa.errors import PeftqaError
from peftqa.evaluation.few_shot import (
    chosen_draw,
    draw_examples,
    draw_seed,
    examples_of,
    few_shot_undefined,
)
from peftqa.evaluation.predictions import generation_metrics, scored_split
from peftqa.families import Backbone
from peftqa.families.load import backbone_class
from peftqa.families.resolve import resolve_model
from peftqa.files import replace_dir_atomic
from peftqa.methods.attach import load_backbone
from peftqa.params import Params, load_params
from peftqa.stops import run_cli

log = logging.getLogger("peftqa.few_shot")


def prompt_tokens(backbone: Backbone, frame: pd.DataFrame) -> dict[str, float]:
    """The prompts' lengths in tokens as scored (examples included), and how many reached the budget (their
    context was cut)."""
    lengths = np.asarray(backbone.token_lengths(frame))
    return {"prompt_tokens_max": int(lengths.max()), "prompt_tokens_median": float(np.median(lengths)),
            "items_cut": int((lengths >= backbone.max_length).sum())}


def score(backbone: Backbone, frame: pd.DataFrame, params: Params, bf16: bool) -> tuple[pd.DataFrame, dict]:
    """The split's predictions in evaluate's columns, and its metrics with the batched run's throughput."""
    pred_frame, metrics, seconds = scored_split(backbone, frame, params, bf16)
    metrics["examples_per_s"] = len(frame) / seconds if seconds > 0 else float("nan")
    return pred_frame, {**metrics, **prompt_tokens(backbone, frame)}


def main(args: list[str]) -> None:
    if args:
        raise PeftqaError(f"stages.few_shot takes no arguments (it reads params.yaml), got {args}")
    params = load_params()
    why = few_shot_undefined(params.references.names, None)
    if why is None:
        why = few_shot_undefined(params.references.names,
                                 backbone_class(params.model.family, resolve_model(params.model.name_or_path)).family)
    if why:
        log.info("few_shot: %s; no row is written", why)
        replace_dir_atomic(lambda folder: FEW_SHOT_CHOICES.write({"not_defined": why}, into=folder),
                           FEW_SHOT_CHOICES.folder_path())
        return
    labels = params.prepare.labels
    train = read_split("train", params.train.limit_train)
    splits = {split: read_split(split, params.evaluate.limit_items) for split in SCORED_SPLITS}
    model_params = dataclasses.replace(params.model, max_length=params.references.few_shot_max_length)
    backbone = load_backbone(model_params, "base", params.peft, labels, seed=params.train.seed,
                             device=params.train.device)
    bf16 = use_bf16(params.model.dtype, backbone.device)

    draws, val_scored = [], []
    for draw in range(params.references.few_shot_draws):
        seed = draw_seed(params.train.seed, draw)
        examples = draw_examples(train, labels, seed)
        backbone.set_demonstrations(examples_of(examples))
        preds, metrics = score(backbone, splits["val"], params, bf16)
        val_scored.append((preds, metrics))
        draws.append({"draw": draw + 1, "seed": seed,
                      "examples": [{"pmid": str(row.pmid), "label": str(row.label)} for row in examples.itertuples()],
                      "val_macro_f1": metrics["macro_f1"], "val_accuracy": metrics["accuracy"],
                      "val_examples_per_s": metrics["examples_per_s"],
                      **{f"val_{key}": metrics[key] for key in ("prompt_tokens_max", "prompt_tokens_median",
                                                                  "items_cut")}})
        log.info("few_shot draw %d (seed %d, examples %s): val macro-F1 %.4f, accuracy %.4f", draw + 1, seed,
                 [e["pmid"] for e in draws[-1]["examples"]], metrics["macro_f1"], metrics["accuracy"])
    best = chosen_draw([d["val_macro_f1"] for d in draws])
    backbone.set_demonstrations(examples_of(draw_examples(train, labels, draws[best]["seed"])))
    outputs = {}
    for split in SCORED_SPLITS:  # test is scored here, once, with the draw val chose
        preds, metrics = val_scored[best] if split == "val" else score(backbone, splits[split], params, bf16)
        metrics.update(generation_metrics(backbone, splits[split], preds["pred"].tolist(), params.model.scoring,
                                          params.evaluate.batch_size, bf16, params.train.length_groups))
        outputs[split] = (preds, metrics)
        log.info("few_shot %s: accuracy %.4f macro-F1 %.4f, %.2f items/s", split, metrics["accuracy"],
                 metrics["macro_f1"], metrics["examples_per_s"])
    choices = {"draws": draws, "chosen": best + 1, "max_length": params.references.few_shot_max_length,
               "selected_on": "val macro_f1 (ties: the earlier draw)",
               "examples": "one train item per label, whole, before the item; drawn with seed train.seed + 1000 + "
                           "(draw - 1), in a seeded order"}

    def write_outputs(folder: Path) -> None:
        for split, (preds, metrics) in outputs.items():
            FEW_SHOT_PREDS.write(preds, into=folder, split=split)
            FEW_SHOT_METRICS.write(metrics, into=folder, split=split)
        for draw, (preds, _) in enumerate(val_scored, start=1):
            FEW_SHOT_DRAW.write(preds, into=folder, draw=draw)
        FEW_SHOT_CHOICES.write(choices, into=folder)

    replace_dir_atomic(write_outputs, FEW_SHOT_CHOICES.folder_path())


if __name__ == "__main__":
    run_cli(main)
