"""Stage references: non-trained reference predictors, scored on the same splits as the methods.

They answer "does a method beat something that needs no training?": `majority` always gives the train split's most
frequent label; `tfidf_lr` is TF-IDF + LogisticRegression on question + context, fitted on train only, with its
n-gram range, C and class weighting chosen on val macro-F1 (test is never used to choose); `base_calibrated` is the
zero-shot base (seq2seq or causal family, labels yes/no) with one offset on its margin log p(yes) - log p(no),
chosen on val macro-F1: all a model gains by learning the label prior. It is not defined for the encoder family
(base is a trained probe there), for three labels, without base in methods, or without p_yes: no row is written,
and choices.json says why. `few_shot` is the zero-shot base with solved train examples in its prompt, as stage
few_shot scored it (its draw chosen on val there; not defined for the encoder family). They are not training
methods: no adapter, no MLflow run; stats and report show them as reference rows.

Inputs:  data/processed/{train,val,test}.csv (pmid, question, context, label); params: references, prepare.labels,
         methods, model.scoring; for base_calibrated models/base/train_summary.json (its family) and
         reports/eval/base/preds_{val,test}.csv (its p_yes); for few_shot reports/few_shot/choices.json and
         preds_{val,test}.csv.
Outputs: reports/references/<r>/preds_<split>.csv     pmid, gold, pred, p_yes, latency_s (evaluate's columns;
                                                       latency_s is NaN: nothing is timed)
         reports/references/<r>/metrics_<split>.json  classification_metrics of those predictions
         reports/references/choices.json              per reference: what was chosen, and every grid point's val
                                                       score (base_calibrated: delta and its val macro-F1), or
                                                       {"not_defined": why}
         reports/references_metrics.json              (DVC metrics) val and test accuracy and macro-F1 per reference
                                                       written (base_calibrated: and its delta)
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pandas as pd

from peftqa.catalog import (
    FEW_SHOT_CHOICES,
    FEW_SHOT_PREDS,
    PREDS,
    REFERENCE_CHOICES,
    REFERENCE_METRICS,
    REFERENCE_PREDS,
    REFERENCES_SUMMARY,
    SCORED_SPLITS,
    SPLIT,
    SPLITS,
    TRAIN_SUMMARY,
    Output,
    read_split,
)
from peftqa.errors import PeftqaError
from peftqa.evaluation.references import (
    base_calibrated_undefined,
    check_split,
    predict_references,
    score_predictions,
)
from peftqa.files import replace_dir_atomic
from peftqa.params import BASE_CALIBRATED, FEW_SHOT, Params, load_params
from peftqa.stops import run_cli

log = logging.getLogger("peftqa.references")


def read_base(output: Output, **fields: str) -> object:
    """One of train@base's or evaluate@base's outputs; a missing one names the stage that writes it."""
    try:
        return output.read(method="base", **fields)
    except FileNotFoundError:
        raise PeftqaError(f"{output.path(method='base', **fields)} not found: base_calibrated calibrates the zero-shot "
                          "base's predictions; run "
                          "`dvc repro evaluate@base` (it trains base first), or drop base_calibrated from "
                          "references.names") from None


def read_zero_shot_base(params: Params) -> tuple[dict[str, pd.DataFrame] | None, str | None]:
    """evaluate@base's val and test predictions for base_calibrated, or why that row is not defined (None, None when
    it is not asked for). Base's files are read only when params alone allow the row."""
    if BASE_CALIBRATED not in params.references.names:
        return None, None
    check = partial(base_calibrated_undefined, params.methods, params.prepare.labels, params.model.scoring)
    why = check()
    if why is None:
        summary = read_base(TRAIN_SUMMARY)
        why = check(summary["family"])
    if why:
        log.info("%s: %s; no row is written", BASE_CALIBRATED, why)
        return None, why
    return {split: read_base(PREDS, split=split) for split in SCORED_SPLITS}, None


def read_few_shot(params: Params) -> tuple[tuple[dict[str, pd.DataFrame], dict] | None, str | None]:
    """Stage few_shot's val and test predictions and its choice record, or why the row is not defined (None, None
    when it is not asked for)."""
    if FEW_SHOT not in params.references.names:
        return None, None
    try:
        choice = FEW_SHOT_CHOICES.read()
    except FileNotFoundError:
        raise PeftqaError(f"{FEW_SHOT_CHOICES.path()} not found: run `dvc repro few_shot`, or drop few_shot from "
                          "references.names") from None
    if "not_defined" in choice:
        return None, choice["not_defined"]
    preds = {split: FEW_SHOT_PREDS.read(split=split) for split in SCORED_SPLITS}
    return (preds, choice), None


def main(args: list[str]) -> None:
    if args:
        raise PeftqaError(f"stages.references takes no arguments (it reads params.yaml), got {args}")
    params = load_params()
    labels = params.prepare.labels
    log.info("references: %s", params.references)
    limits = {split: 0 if split == "train" else params.evaluate.limit_items for split in SPLITS}  # as the methods
    splits = {split: check_split(read_split(split, limits[split]), SPLIT.path(split=split), labels)
              for split in SPLITS}
    base_preds, not_defined = read_zero_shot_base(params)
    few_shot, few_shot_undefined = read_few_shot(params)
    preds, choices = predict_references(splits, params.references, labels, base_preds, few_shot)
    if not_defined:
        choices[BASE_CALIBRATED] = {"not_defined": not_defined}
    if few_shot_undefined:
        choices[FEW_SHOT] = {"not_defined": few_shot_undefined}
    metrics = {name: {split: score_predictions(frames[split], labels) for split in SCORED_SPLITS}
               for name, frames in preds.items()}

    def write_outputs(folder: Path) -> None:
        for name, frames in preds.items():
            for split in SCORED_SPLITS:
                REFERENCE_PREDS.write(frames[split], into=folder, reference=name, split=split)
                REFERENCE_METRICS.write(metrics[name][split], into=folder, reference=name, split=split)
        REFERENCE_CHOICES.write(choices, into=folder)

    # a reference dropped from params leaves no stale folder
    replace_dir_atomic(write_outputs, REFERENCE_CHOICES.folder_path())
    summary = {name: {split: {key: by_split[split][key] for key in ("accuracy", "macro_f1")} for split in SCORED_SPLITS}
               for name, by_split in metrics.items()}
    if BASE_CALIBRATED in summary:
        summary[BASE_CALIBRATED]["delta"] = choices[BASE_CALIBRATED]["delta"]
    REFERENCES_SUMMARY.write(summary)
    for name, by_split in metrics.items():
        log.info("%s: val macro-F1 %.4f; test accuracy %.4f, macro-F1 %.4f", name, by_split["val"]["macro_f1"],
                 by_split["test"]["accuracy"], by_split["test"]["macro_f1"])


if __name__ == "__main__":
    run_cli(main)
