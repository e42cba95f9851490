"""Stage report: the figures and the markdown report of the test-split results, from checked inputs.

Inputs (columns in each writing stage's docstring), for every method m in params.methods:
  data/processed/split_stats.csv, data/processed/test.csv,
  models/<m>/history.csv, models/<m>/train_summary.json,
  reports/eval/<m>/metrics_test.json, reports/eval/<m>/cm_test.csv, reports/eval/<m>/preds_test.csv,
  reports/eval/<m>/preds_val.csv (abstention thresholds are chosen on val), reports/stats/stats_eval_test.csv,
  reports/references/choices.json (what each reference chose, or why it is not defined for this run: base_calibrated
  on an encoder run) and, for every reference r in params.references.names with a row,
  reports/references/<r>/metrics_test.json and preds_test.csv (reference rows: in the performance table and
  figure, the significance table and each method's findings),
  and reports/protocols/*.csv when the protocols stage has run.
Outputs: reports/figures/*.png (names in FIGURE_CAPTIONS, plus cm_<m>_test.png and SEEDS_FIGURE), reports/report.md,
  and under prepare.protocol: official, reports/submission/<m>.json (PMID -> predicted label; unmapped predictions
  are left out, never guessed, and counted in report.md).
Guards: preds (of a method or a reference row) whose PMIDs differ from test.csv, metrics of another n, or a stats file
missing a comparison stop the stage (stale inputs: run `dvc repro`).
This module reads and checks the inputs and assembles the report; what it renders lives in peftqa/report/tables.py
(tables, number formatting), report_findings.py (the findings prose), report_sections.py (protocol sections),
report_abstention.py (the abstention section) and report_figures.py (the figures).
"""
from __future__ import annotations

import logging

from peftqa.catalog import FIGURE, REPORT, SUBMISSION
from peftqa.params import load_params
from peftqa.report.build import build_report, build_submission
from peftqa.report.figures import FIGURE_CAPTIONS, build_figures
from peftqa.report.inputs import check_inputs_fresh, check_protocols_fresh, read_inputs
from peftqa.report.palette import save_figure
from peftqa.report.tables import performance_columns
from peftqa.stops import run_cli

log = logging.getLogger("peftqa.report")


def main(args: list[str]) -> None:
    params = load_params()
    inputs = read_inputs(params.methods, params.references.names, params.evaluate.limit_items)
    check_inputs_fresh(inputs, params.methods, params.stats.baseline, inputs.references)
    check_protocols_fresh(inputs.protocols, params, int(inputs.split_stats["n"].sum()))
    for name, figure in build_figures(inputs, params.prepare.labels, params.stats).items():
        save_figure(figure, FIGURE.path(figure=name))
    left_out = {}  # written under every protocol; a valid PubMedQA submission only under the official one
    for method in params.methods:
        submission, left_out[method] = build_submission(inputs.preds[method])
        SUBMISSION.write(submission, method=method)
    columns = performance_columns(params.prepare.labels)
    markdown = build_report(inputs, params, columns, left_out if params.prepare.protocol == "official" else None)
    REPORT.write(markdown)
    log.info("wrote %s and %d figures", REPORT.path(), len(FIGURE_CAPTIONS) + len(params.methods))


if __name__ == "__main__":
    run_cli(main)
