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

import pandas as pd

from peftqa.catalog import REFERENCE_CHOICES, STATS, STATS_MD, STATS_SUMMARY
from peftqa.errors import PeftqaError, log
from peftqa.evaluation.stats import (
    compare_methods,
    defined_references,
    format_markdown,
    preds_output,
    summarize_comparisons,
)
from peftqa.params import load_params
from peftqa.stops import run_cli

# -----------------------------------------------------------------------------
# the stage


def read_predictions(name: str) -> pd.DataFrame:
    """A method's or reference row's test predictions; PMIDs and labels as strings, an empty `pred` (unmapped
    generation) as NaN."""
    output, fields = preds_output(name)
    try:
        return output.read(**fields)
    except FileNotFoundError:
        raise PeftqaError(f"{output.path(**fields)}: not found; run `dvc repro` so every method in params.methods is "
                          "evaluated and "
                          "every reference in references.names is computed (the stats stage needs the test "
                          "predictions of each)") from None


def read_choices() -> dict[str, dict]:
    """The references stage's choice records: which references of references.names have a row."""
    try:
        return REFERENCE_CHOICES.read()
    except FileNotFoundError:
        raise PeftqaError(f"{REFERENCE_CHOICES.path()}: not found; run `dvc repro references` (the stats stage "
                          "compares every method against each reference row it wrote)") from None


def main(args: list[str]) -> None:
    if args:
        raise PeftqaError(f"stages.stats takes no arguments (it reads params.yaml), got {args}")
    params = load_params()
    preds = {method: read_predictions(method) for method in params.methods}
    names = defined_references(params.references.names, read_choices())
    log.info("stats: %s; methods %s; references %s", params.stats, list(params.methods), names)
    references = {name: read_predictions(name) for name in names}
    table = compare_methods(preds, methods=params.methods, baseline=params.stats.baseline,
                            labels=params.prepare.labels, stats_params=params.stats, references=references)

    STATS.write(table)
    STATS_MD.write(format_markdown(table, params.stats))
    STATS_SUMMARY.write(summarize_comparisons(table))
    log.info("stats: %d rows (comparison x test x metric) -> %s", len(table), STATS.folder_path())


if __name__ == "__main__":
    run_cli(main)
