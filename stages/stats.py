"""Stage stats: paired significance tests of every tuned method against the baseline, of the tuned methods pairwise,
and of every method against each reference row (stage references: majority, tfidf_lr).

Every method is scored on the same test items, so the comparisons are paired: exact McNemar on per-item correctness
and a paired bootstrap (the same resampled items for both methods) for Δaccuracy and Δmacro-F1, with Holm's correction
across the comparisons of each (test, metric). The columns are STATS_COLUMNS; in a row against a reference row,
`reference` holds that reference's name and the effect is method minus reference.

Inputs:  params.yaml (methods, prepare.labels, stats, references), reports/eval/<method>/preds_test.csv for every
         method, reports/references/<r>/preds_test.csv for every reference in references.names.
Outputs: reports/stats/stats_eval_test.csv, reports/stats/stats_eval_test.md,
         reports/stats/stats_summary.json (DVC metrics).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from peftqa.common import PeftqaError, log, run_cli, write_csv_atomic, write_json_atomic, write_text_atomic
from peftqa.params import load_params
from peftqa.paths import STATS_CSV, STATS_DIR
from peftqa.stats import compare_methods, format_markdown, preds_path, summarize_comparisons

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


def main(args: list[str]) -> None:
    if args:
        raise PeftqaError(f"stages.stats takes no arguments (it reads params.yaml), got {args}")
    params = load_params()
    log.info("stats: %s; methods %s; references %s", params.stats, list(params.methods), list(params.references.names))
    preds = {method: read_predictions(preds_path(method)) for method in params.methods}
    references = {name: read_predictions(preds_path(name)) for name in params.references.names}
    table = compare_methods(preds, methods=params.methods, baseline=params.stats.baseline,
                            labels=params.prepare.labels, stats_params=params.stats, references=references)

    write_csv_atomic(STATS_CSV, table)
    write_text_atomic(STATS_DIR / "stats_eval_test.md", format_markdown(table, params.stats))
    write_json_atomic(STATS_DIR / "stats_summary.json", summarize_comparisons(table))
    log.info("stats: %d rows (comparison x test x metric) -> %s", len(table), STATS_DIR)


if __name__ == "__main__":
    run_cli(main)
