"""Stage references: non-trained reference predictors, scored on the same splits as the methods.

They answer "does a method beat something that needs no training?": `majority` always gives the train split's most
frequent label; `tfidf_lr` is TF-IDF + LogisticRegression on question + context, fitted on train only, with its
n-gram range, C and class weighting chosen on val macro-F1 (test is never used to choose). They are not training
methods: no adapter, no MLflow run; stats and report show them as reference rows.

Inputs:  data/processed/{train,val,test}.csv (pmid, question, context, label); params: references, prepare.labels.
Outputs: reports/references/<r>/preds_<split>.csv     pmid, gold, pred, p_yes, latency_s (evaluate's columns;
                                                       latency_s is NaN: nothing is timed)
         reports/references/<r>/metrics_<split>.json  classification_metrics of those predictions
         reports/references/choices.json              per reference: what was chosen, and every grid point's val score
         reports/references_metrics.json              (DVC metrics) val and test accuracy and macro-F1 per reference
"""
from __future__ import annotations

import logging
from pathlib import Path

from peftqa.common import PeftqaError, read_split, replace_dir_atomic, run_cli, write_csv_atomic, write_json_atomic
from peftqa.params import load_params
from peftqa.paths import DATA_DIR, REFERENCES_DIR, REFERENCES_METRICS_JSON
from peftqa.references import SCORED_SPLITS, check_split, predict_references, score_predictions

log = logging.getLogger("peftqa.references")

SPLITS = ("train", "val", "test")  # fitted on train, chosen on val, reported on val and test


def main(args: list[str]) -> None:
    if args:
        raise PeftqaError(f"stages.references takes no arguments (it reads params.yaml), got {args}")
    params = load_params()
    labels = params.prepare.labels
    log.info("references: %s", params.references)
    limits = {split: 0 if split == "train" else params.evaluate.limit_items for split in SPLITS}  # as the methods
    splits = {split: check_split(read_split(DATA_DIR / f"{split}.csv", limits[split]), DATA_DIR / f"{split}.csv",
                                 labels) for split in SPLITS}
    preds, choices = predict_references(splits, params.references, labels)
    metrics = {name: {split: score_predictions(frames[split], labels) for split in SCORED_SPLITS}
               for name, frames in preds.items()}

    def write_outputs(folder: Path) -> None:
        for name, frames in preds.items():
            for split in SCORED_SPLITS:
                write_csv_atomic(folder / name / f"preds_{split}.csv", frames[split])
                write_json_atomic(folder / name / f"metrics_{split}.json", metrics[name][split])
        write_json_atomic(folder / "choices.json", choices)

    replace_dir_atomic(write_outputs, REFERENCES_DIR)  # a reference dropped from params leaves no stale folder
    summary = {name: {split: {key: by_split[split][key] for key in ("accuracy", "macro_f1")} for split in SCORED_SPLITS}
               for name, by_split in metrics.items()}
    write_json_atomic(REFERENCES_METRICS_JSON, summary)
    for name, by_split in metrics.items():
        log.info("%s: val macro-F1 %.4f; test accuracy %.4f, macro-F1 %.4f", name, by_split["val"]["macro_f1"],
                 by_split["test"]["accuracy"], by_split["test"]["macro_f1"])


if __name__ == "__main__":
    run_cli(main)
