"""Stage stats: paired significance tests of every tuned method against the baseline, of the tuned methods pairwise,
and of every method against each reference row (stage references: majority, tfidf_lr, base_calibrated where it is
defined).

Every method is scored on the same test items, so the comparisons are paired: exact McNemar on per-item correctness
and a paired bootstrap (the same resampled items for both methods) for Δaccuracy and Δmacro-F1, with Holm's correction
across the comparisons of each (test, metric). The columns are STATS_COLUMNS; in a row against a reference row,
`reference` holds that reference's name and the effect is method minus reference.

Inputs:  params.yaml (methods, prepare.labels, stats, references), reports/eval/<method>/preds_test.csv for every
         method, reports/references/choices.json (which references have a row: base_calibrated is not defined for
         every run) and reports/references/<r>/preds_test.csv for each of those in references.names.
Outputs: reports/stats/stats_eval_test.csv, reports/stats/stats_eval_test.md,
         reports/stats/stats_summary.json (DVC metrics).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from peftqa.errors import PeftqaError, log
from peftqa.evaluation.stats import (
    compare_methods,
    defined_references,
    format_markdown,
    preds_path,
    summarize_comparisons,
)
from peftqa.files import write_csv_atomic, write_json_atomic, write_text_atomic
from peftqa.params import load_params
from peftqa.paths import REFERENCES_CHOICES_JSON, STATS_CSV, STATS_DIR
from peftqa.stops import run_cli

# -----------------------------------------------------------------------------
# the stage


def read_predictions(path: Path) -> pd.DataFrame:
    """One preds_test.csv; PMIDs and labels as strings, an empty `pred` (unmapped generation) as NaN."""
    try:
        return pd.read_csv(path, dtype={"pmid": str, "gold": str, "pred": str})
    except FileNotFoundError:
        raise PeftqaError(f"{path}: not found; run `dvc repro` so every method in params.methods is evaluated and "
                          "every reference in references.names is computed (the stats stage needs the test "
                          "predictions of each)") from None
    except pd.errors.EmptyDataError:
        raise PeftqaError(f"{path}: empty file; re-run `dvc repro` to write these predictions again") from None


def read_choices() -> dict[str, dict]:
    """The references stage's choices.json: which references of references.names have a row."""
    try:
        return json.loads(REFERENCES_CHOICES_JSON.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftqaError(f"{REFERENCES_CHOICES_JSON}: not found; run `dvc repro references` (the stats stage "
                          "compares every method against each reference row it wrote)") from None


def main(args: list[str]) -> None:
    if args:
        raise PeftqaError(f"stages.stats takes no arguments (it reads params.yaml), got {args}")
    params = load_params()
    preds = {method: read_predictions(preds_path(method)) for method in params.methods}
    names = defined_references(params.references.names, read_choices())
    log.info("stats: %s; methods %s; references %s", params.stats, list(params.methods), names)
    references = {name: read_predictions(preds_path(name)) for name in names}
    table = compare_methods(preds, methods=params.methods, baseline=params.stats.baseline,
                            labels=params.prepare.labels, stats_params=params.stats, references=references)

    write_csv_atomic(STATS_CSV, table)
    write_text_atomic(STATS_DIR / "stats_eval_test.md", format_markdown(table, params.stats))
    write_json_atomic(STATS_DIR / "stats_summary.json", summarize_comparisons(table))
    log.info("stats: %d rows (comparison x test x metric) -> %s", len(table), STATS_DIR)


if __name__ == "__main__":
    run_cli(main)
