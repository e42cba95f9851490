"""Stage report: the figures and the markdown report of the test-split results, from checked inputs.

Inputs (columns in each writing stage's docstring), for every method m in params.methods:
  data/processed/split_stats.csv, data/processed/test.csv,
  models/<m>/history.csv, models/<m>/train_summary.json,
  reports/eval/<m>/metrics_test.json, reports/eval/<m>/cm_test.csv, reports/eval/<m>/preds_test.csv,
  reports/eval/<m>/preds_val.csv (abstention thresholds are chosen on val), reports/stats/stats_eval_test.csv,
  for every reference r in params.references.names reports/references/<r>/metrics_test.json and preds_test.csv
  (reference rows: in the performance table and figure, the significance table and each method's findings),
  and reports/protocols/*.csv when the protocols stage has run.
Outputs: reports/figures/*.png (names in FIGURE_CAPTIONS, plus cm_<m>_test.png and SEEDS_FIGURE), reports/report.md,
  and under prepare.protocol: official, reports/submission/<m>.json (PMID -> predicted label; unmapped predictions
  are left out, never guessed, and counted in report.md).
Guards: preds (of a method or a reference row) whose PMIDs differ from test.csv, metrics of another n, or a stats file
missing a comparison stop the stage (stale inputs: run `dvc repro`).
This module reads and checks the inputs and assembles the report; what it renders lives in stages/report_tables.py
(tables, number formatting), report_findings.py (the findings prose), report_sections.py (protocol sections),
report_abstention.py (the abstention section) and report_figures.py (the figures).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import pandas as pd

from stages.common import PeftqaError, atomic_path, run_cli, write_json_atomic
from stages.curves import read_history
from stages.figures import save_figure
from stages.params import Params, load_params
from stages.report_abstention import abstention_section
from stages.report_figures import FIGURE_CAPTIONS, SEEDS_FIGURE, build_figures, confusion_figure_name
from stages.report_findings import (
    STATS_PATH,
    collapse_sentence,
    describe_against_references,
    describe_baseline,
    describe_method,
    detectable_difference_sentence,
    stats_row,
)
from stages.report_sections import (
    cv_section,
    main_protocol_line,
    protocol_section,
    references_note,
    seeds_section,
    submission_section,
    unmapped_note,
)
from stages.report_tables import (
    Column,
    performance_columns,
    performance_rows,
    performance_table,
    significance_table,
    split_table,
    training_table,
)

log = logging.getLogger("peftqa.report")

PROCESSED_DIR = Path("data/processed")
MODELS_DIR = Path("models")
EVAL_DIR = Path("reports/eval")
REFERENCES_DIR = Path("reports/references")
PROTOCOLS_DIR = Path("reports/protocols")
REPORT_DIR = Path("reports")
FIGURES_DIR = REPORT_DIR / "figures"
SUBMISSION_DIR = REPORT_DIR / "submission"

REQUIRED_STATS = (("paired_bootstrap", "macro_f1"), ("mcnemar_exact", "accuracy"))  # per tuned method vs baseline

T = TypeVar("T")


# -----------------------------------------------------------------------------
# inputs: read once at the edge, then checked for staleness before any number is shown


@dataclass(frozen=True)
class ProtocolResults:
    """The protocols stage's tables (reports/protocols/*.csv); empty frames when a protocol is off."""
    seeds_test: pd.DataFrame
    seeds_summary: pd.DataFrame
    cv_folds: pd.DataFrame
    cv_stats: pd.DataFrame
    parent_runs: dict[str, str] = field(default_factory=dict)  # {protocol: MLflow parent run id} (parent_runs.json)


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report reads, per method where it is per method; the helpers below never open files."""
    split_stats: pd.DataFrame
    test_pmids: frozenset[str]
    n_val: int  # the val items evaluate scored: split_stats.csv's, or evaluate.limit_items's first N
    history: dict[str, pd.DataFrame]
    summary: dict[str, dict]
    metrics: dict[str, dict]
    confusion: dict[str, pd.DataFrame]
    preds: dict[str, pd.DataFrame]
    preds_val: dict[str, pd.DataFrame]
    stats: pd.DataFrame
    protocols: ProtocolResults | None = None  # None: the protocols stage has not run (reports/protocols/ absent)
    reference_metrics: dict[str, dict] = field(default_factory=dict)  # per reference row: its metrics_test.json
    reference_preds: dict[str, pd.DataFrame] = field(default_factory=dict)  # per reference row: its preds_test.csv

    @property
    def n_test(self) -> int:
        return len(self.test_pmids)


def read_input(path: Path, reader: Callable[[Path], T]) -> T:
    """Read one upstream output; a missing one means an upstream stage has not run, so say which file."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise PeftqaError(f"report: {path} is missing; run `dvc repro` to produce it") from None


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_csv(path: Path) -> pd.DataFrame:
    """CSV with PMIDs kept as strings (they are identifiers, and the submission keys)."""
    return pd.read_csv(path, dtype={"pmid": str})


def read_inputs(methods: Sequence[str], references: Sequence[str] = (), limit_items: int = 0) -> ReportInputs:
    """Everything the report reads; the test items are test.csv's first `limit_items` when evaluate scored only
    those (evaluate.limit_items, a demo slice), so the freshness checks compare against what was scored."""
    def per_method(folder: Path, name: str, reader: Callable[[Path], T], names: Sequence[str] = methods
                   ) -> dict[str, T]:
        return {m: read_input(folder / m / name, reader) for m in names}

    test = read_input(PROCESSED_DIR / "test.csv", read_csv)
    test = test.iloc[:limit_items] if limit_items else test
    split_stats = read_input(PROCESSED_DIR / "split_stats.csv", pd.read_csv)
    n_val = int(split_stats.set_index("split").loc["val", "n"])
    return ReportInputs(
        split_stats=split_stats,
        test_pmids=frozenset(test["pmid"]),
        n_val=min(n_val, limit_items) if limit_items else n_val,
        history={m: read_history(m) for m in methods},  # the curves stage's reader: one message, columns checked
        summary=per_method(MODELS_DIR, "train_summary.json", read_json),
        metrics=per_method(EVAL_DIR, "metrics_test.json", read_json),
        confusion=per_method(EVAL_DIR, "cm_test.csv", pd.read_csv),
        preds=per_method(EVAL_DIR, "preds_test.csv", read_csv),
        preds_val=per_method(EVAL_DIR, "preds_val.csv", read_csv),
        stats=read_input(STATS_PATH, pd.read_csv),
        protocols=read_protocols(),
        reference_metrics=per_method(REFERENCES_DIR, "metrics_test.json", read_json, references),
        reference_preds=per_method(REFERENCES_DIR, "preds_test.csv", read_csv, references),
    )


def read_protocols() -> ProtocolResults | None:
    if not PROTOCOLS_DIR.exists():
        return None
    parents = PROTOCOLS_DIR / "parent_runs.json"
    return ProtocolResults(**{name: read_input(PROTOCOLS_DIR / f"{name}.csv", pd.read_csv)
                              for name in ("seeds_test", "seeds_summary", "cv_folds", "cv_stats")},
                           parent_runs=read_input(parents, read_json) if parents.exists() else {})


def check_protocols_fresh(results: ProtocolResults | None, params: Params, n_items: int) -> None:
    """The protocol tables must come from the current seeds, folds and methods, and agree with their per-run rows."""
    if results is None:
        return

    def stale(name: str, why: str) -> PeftqaError:
        return PeftqaError(f"report: {PROTOCOLS_DIR / name} is stale ({why}); run `dvc repro protocols`")

    runs, summary = results.seeds_test, results.seeds_summary
    want = {(m, s) for m in params.methods for s in params.seeds}
    if set(zip(runs["method"], runs["seed"])) != want or len(runs) != len(want):
        raise stale("seeds_test.csv", f"it has {len(runs)} runs, params ask for seeds {list(params.seeds)} x "
                                      f"methods {list(params.methods)}")
    for row in summary.to_dict("records"):
        of_method = runs.loc[runs["method"] == row["method"], "macro_f1"]
        if row["n_seeds"] != len(of_method) or not math.isclose(row["macro_f1_mean"], of_method.mean(), abs_tol=1e-9):
            raise stale("seeds_summary.csv", f"its {row['method']} row disagrees with seeds_test.csv")
    folds = results.cv_folds
    per_fold = folds.loc[folds["fold"].astype(str) != "pooled"]
    rows_per_fold = len(params.methods) + len(params.references.names)  # the reference rows are refitted per fold
    if len(per_fold) != params.prepare.folds * rows_per_fold * (params.prepare.folds > 0):
        raise stale("cv_folds.csv", f"it has {len(per_fold)} fold rows, params ask for prepare.folds "
                                    f"{params.prepare.folds} x ({len(params.methods)} methods + "
                                    f"{len(params.references.names)} references)")
    pooled = folds.loc[folds["fold"].astype(str) == "pooled"]
    if len(pooled) and set(pooled["n"]) != {n_items}:
        raise stale("cv_folds.csv", f"its pooled rows cover {sorted(set(pooled['n']))} items, the splits {n_items}")


def check_method_fresh(inputs: ReportInputs, method: str) -> None:
    """A method's preds and metrics must cover exactly the PMIDs of test.csv, or they predate the current split."""
    pmids = inputs.preds[method]["pmid"]
    missing, extra = inputs.test_pmids - set(pmids), set(pmids) - inputs.test_pmids
    if missing or extra or len(pmids) != inputs.n_test:
        raise PeftqaError(
            f"report: method '{method}' is stale: reports/eval/{method}/preds_test.csv has {len(pmids)} rows, "
            f"{len(missing)} PMIDs of data/processed/test.csv missing and {len(extra)} not in it "
            f"(e.g. {sorted(missing | extra)[:3]}). Run `dvc repro` to re-evaluate it.")
    if inputs.metrics[method]["n"] != inputs.n_test:
        raise PeftqaError(f"report: method '{method}' is stale: its metrics_test.json has "
                          f"n={inputs.metrics[method]['n']}, test.csv {inputs.n_test} items. Run `dvc repro`.")
    if len(inputs.preds_val[method]) != inputs.n_val:
        raise PeftqaError(f"report: method '{method}' is stale: reports/eval/{method}/preds_val.csv has "
                          f"{len(inputs.preds_val[method])} rows, and {inputs.n_val} val items were to be scored "
                          "(split_stats.csv, evaluate.limit_items). Run `dvc repro`.")


def check_reference_fresh(inputs: ReportInputs, reference: str) -> None:
    """A reference row's preds and metrics must cover exactly the PMIDs of test.csv, as a method's."""
    pmids = inputs.reference_preds[reference]["pmid"]
    unlike = set(pmids) ^ inputs.test_pmids
    if unlike or len(pmids) != inputs.n_test or inputs.reference_metrics[reference]["n"] != inputs.n_test:
        raise PeftqaError(
            f"report: reference '{reference}' is stale: {REFERENCES_DIR / reference / 'preds_test.csv'} has "
            f"{len(pmids)} rows and metrics_test.json n={inputs.reference_metrics[reference]['n']}, "
            f"{len(unlike)} PMIDs differ from data/processed/test.csv ({inputs.n_test} items). "
            "Run `dvc repro references`.")


def check_inputs_fresh(inputs: ReportInputs, methods: Sequence[str], baseline: str,
                       references: Sequence[str] = ()) -> None:
    """Refuse to report numbers computed on another test set or by another model: those are stale DVC outputs."""
    for method in methods:
        check_method_fresh(inputs, method)
    for reference in references:
        check_reference_fresh(inputs, reference)
    models = {m: (inputs.summary[m]["model"], inputs.summary[m]["family"]) for m in methods}
    if len(set(models.values())) > 1:
        raise PeftqaError(f"report: the methods were trained on different models {models}; some are stale. "
                          "Run `dvc repro`.")
    pairs = [(m, baseline) for m in methods if m != baseline] + [(m, r) for m in methods for r in references]
    for method, reference in pairs:
        for test, metric in REQUIRED_STATS:
            if stats_row(inputs.stats, method, reference, test, metric)["n"] != inputs.n_test:
                raise PeftqaError(f"report: {STATS_PATH} compares '{method}' on another test size than "
                                  f"test.csv ({inputs.n_test}); it is stale. Run `dvc repro`.")


# -----------------------------------------------------------------------------
# the report


def build_submission(preds: pd.DataFrame) -> tuple[dict[str, str], int]:
    """PMID -> predicted label (official format); unmapped predictions are left out, never guessed, and counted."""
    mapped = preds.dropna(subset=["pred"])
    return dict(zip(mapped["pmid"], mapped["pred"])), len(preds) - len(mapped)


def build_report(inputs: ReportInputs, params: Params, columns: Sequence[Column],
                 left_out: dict[str, int] | None) -> str:
    baseline, confidence = params.stats.baseline, params.stats.confidence
    first = next(iter(inputs.summary.values()))
    tuned = [m for m in params.methods if m != baseline]
    references = list(inputs.reference_metrics)
    findings = [describe_baseline(baseline, inputs.metrics[baseline], inputs.preds[baseline])
                + describe_against_references(baseline, references, inputs.stats, confidence)]
    findings += [describe_method(m, baseline, inputs.metrics, inputs.stats, confidence)
                 + describe_against_references(m, references, inputs.stats, confidence)
                 + collapse_sentence(m, inputs.preds[m]) for m in tuned]
    captions = {**FIGURE_CAPTIONS, **{confusion_figure_name(m): f"Test confusion matrix: {m}" for m in params.methods}}
    if inputs.protocols is not None and not inputs.protocols.seeds_test.empty:
        captions[SEEDS_FIGURE] = "Test macro-F1 of each repeated-seed run, with mean ± std per method"
    main_protocol = main_protocol_line(params, inputs.n_test)
    sections = [
        f"# PEFT on PubMedQA: {first['model']}",
        f"Model `{first['model']}` ({first['family']} family), protocol `{params.prepare.protocol}`, "
        f"n = {inputs.n_test} test items; methods {', '.join(params.methods)} against the baseline `{baseline}`.",
        "## Data splits\n\n" + split_table(inputs.split_stats),
        "## Test performance\n\n" + main_protocol + "\n\n"
        + performance_table(performance_rows(inputs.metrics, inputs.reference_metrics, columns), columns) + "\n\n"
        + unmapped_note(inputs.metrics) + references_note(references),
        "## Significance\n\n" + main_protocol + " Each tuned method against the baseline, then tuned methods "
        "pairwise, then every method against each reference row. b = items the "
        "reference got wrong and the method right (fixes), c = the reverse (regressions).\n\n"
        + significance_table(inputs.stats, baseline, confidence, references) + "\n\n"
        + detectable_difference_sentence(inputs.stats, params.methods, baseline, references, inputs.n_test),
        "## Findings\n\n" + "\n\n".join(findings),
        seeds_section(inputs.protocols, params),
        cv_section(inputs.protocols, params),
        abstention_section(inputs.preds_val, inputs.preds, inputs.split_stats, params.prepare.labels),
        "## Training\n\n" + training_table(inputs.summary),
        "## Figures\n\n" + "\n\n".join(f"![{c}](figures/{name})" for name, c in captions.items()),
        protocol_section(params, inputs.n_test, inputs.summary,
                         inputs.protocols.parent_runs if inputs.protocols else None),
    ]
    if left_out is not None:
        sections.append(submission_section(left_out))
    return "\n\n".join(sections) + "\n"


def main(args: list[str]) -> None:
    params = load_params()
    inputs = read_inputs(params.methods, params.references.names, params.evaluate.limit_items)
    check_inputs_fresh(inputs, params.methods, params.stats.baseline, params.references.names)
    check_protocols_fresh(inputs.protocols, params, int(inputs.split_stats["n"].sum()))
    for name, figure in build_figures(inputs, params.prepare.labels).items():
        save_figure(figure, FIGURES_DIR / name)
    left_out = {}  # written under every protocol; a valid PubMedQA submission only under the official one
    for method in params.methods:
        submission, left_out[method] = build_submission(inputs.preds[method])
        write_json_atomic(SUBMISSION_DIR / f"{method}.json", submission)
    columns = performance_columns(params.prepare.labels)
    markdown = build_report(inputs, params, columns, left_out if params.prepare.protocol == "official" else None)
    with atomic_path(REPORT_DIR / "report.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    log.info("wrote %s and %d figures", REPORT_DIR / "report.md", len(FIGURE_CAPTIONS) + len(params.methods))


if __name__ == "__main__":
    run_cli(main)
