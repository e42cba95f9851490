"""What the report reads, as typed inputs: every method's and reference's predictions, metrics and summaries, the
stats and the protocol results; and the freshness checks that refuse inputs made for other items or params.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from peftqa.catalog import (
    CONFUSION,
    CV_FOLDS,
    CV_STATS,
    METRICS,
    PARENT_RUNS,
    PREDS,
    REFERENCE_CHOICES,
    REFERENCE_METRICS,
    REFERENCE_PREDS,
    SEEDS_SUMMARY,
    SEEDS_TEST,
    SPLIT,
    SPLIT_STATS,
    STATS,
    TRAIN_SUMMARY,
    Output,
)
from peftqa.errors import PeftqaError
from peftqa.evaluation.stats import defined_references
from peftqa.params import Params
from peftqa.report.findings import stats_row
from peftqa.training.history import read_history

REQUIRED_STATS = (("paired_bootstrap", "macro_f1"), ("mcnemar_exact", "accuracy"))  # per tuned method vs baseline


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
    # per reference in references.names: its entry of choices.json, {"not_defined": why} for one with no row
    reference_choices: dict[str, dict] = field(default_factory=dict)

    @property
    def n_test(self) -> int:
        return len(self.test_pmids)

    @property
    def references(self) -> list[str]:
        """The reference rows (those of references.names that the references stage defined for this run)."""
        return list(self.reference_metrics)


def read_input(output: Output, **fields: object) -> object:
    """Read one upstream output; a missing one means an upstream stage has not run, so say which file."""
    try:
        return output.read(**fields)
    except FileNotFoundError:
        raise PeftqaError(f"report: {output.path(**fields)} is missing; run `dvc repro` to produce it") from None


def read_inputs(methods: Sequence[str], references: Sequence[str] = (), limit_items: int = 0) -> ReportInputs:
    """Everything the report reads; the test items are test.csv's first `limit_items` when evaluate scored only
    those (evaluate.limit_items, a demo slice), so the freshness checks compare against what was scored. Of
    `references` (references.names), the rows are those choices.json does not mark not defined."""
    def per_method(output: Output, **fields: str) -> dict[str, object]:
        return {m: read_input(output, method=m, **fields) for m in methods}

    def per_reference(output: Output) -> dict[str, object]:
        return {r: read_input(output, reference=r, split="test") for r in rows}

    test = read_input(SPLIT, split="test")
    test = test.iloc[:limit_items] if limit_items else test
    split_stats = read_input(SPLIT_STATS)
    n_val = int(split_stats.set_index("split").loc["val", "n"])
    choices = read_input(REFERENCE_CHOICES) if references else {}
    rows = defined_references(references, choices)
    return ReportInputs(
        split_stats=split_stats,
        test_pmids=frozenset(test["pmid"]),
        n_val=min(n_val, limit_items) if limit_items else n_val,
        history={m: read_history(m) for m in methods},  # the curves stage's reader: one message, columns checked
        summary=per_method(TRAIN_SUMMARY),
        metrics=per_method(METRICS, split="test"),
        confusion=per_method(CONFUSION, split="test"),
        preds=per_method(PREDS, split="test"),
        preds_val=per_method(PREDS, split="val"),
        stats=read_input(STATS),
        protocols=read_protocols(),
        reference_metrics=per_reference(REFERENCE_METRICS),
        reference_preds=per_reference(REFERENCE_PREDS),
        reference_choices={name: choices[name] for name in references},
    )


def read_protocols() -> ProtocolResults | None:
    if not PARENT_RUNS.folder_path().exists():
        return None
    return ProtocolResults(seeds_test=read_input(SEEDS_TEST), seeds_summary=read_input(SEEDS_SUMMARY),
                           cv_folds=read_input(CV_FOLDS), cv_stats=read_input(CV_STATS),
                           parent_runs=read_input(PARENT_RUNS) if PARENT_RUNS.exists() else {})


def check_protocols_fresh(results: ProtocolResults | None, params: Params, n_items: int) -> None:
    """The protocol tables must come from the current seeds, folds and methods, and agree with their per-run rows."""
    if results is None:
        return

    def stale(output: Output, why: str) -> PeftqaError:
        return PeftqaError(f"report: {output.path()} is stale ({why}); run `dvc repro protocols`")

    runs, summary = results.seeds_test, results.seeds_summary
    want = {(m, s) for m in params.methods for s in params.seeds}
    if set(zip(runs["method"], runs["seed"])) != want or len(runs) != len(want):
        raise stale(SEEDS_TEST, f"it has {len(runs)} runs, params ask for seeds {list(params.seeds)} x "
                                      f"methods {list(params.methods)}")
    for row in summary.to_dict("records"):
        of_method = runs.loc[runs["method"] == row["method"], "macro_f1"]
        if row["n_seeds"] != len(of_method) or not math.isclose(row["macro_f1_mean"], of_method.mean(), abs_tol=1e-9):
            raise stale(SEEDS_SUMMARY, f"its {row['method']} row disagrees with {SEEDS_TEST.file}")
    folds = results.cv_folds
    per_fold = folds.loc[folds["fold"].astype(str) != "pooled"]
    rows_per_fold = len(params.methods) + len(params.references.per_fold)  # those references are refitted per fold
    if len(per_fold) != params.prepare.folds * rows_per_fold * (params.prepare.folds > 0):
        raise stale(CV_FOLDS, f"it has {len(per_fold)} fold rows, params ask for prepare.folds "
                                    f"{params.prepare.folds} x ({len(params.methods)} methods + "
                                    f"{len(params.references.per_fold)} references)")
    pooled = folds.loc[folds["fold"].astype(str) == "pooled"]
    if len(pooled) and set(pooled["n"]) != {n_items}:
        raise stale(CV_FOLDS, f"its pooled rows cover {sorted(set(pooled['n']))} items, the splits {n_items}")


def check_method_fresh(inputs: ReportInputs, method: str) -> None:
    """A method's preds and metrics must cover exactly the PMIDs of test.csv, or they predate the current split."""
    pmids = inputs.preds[method]["pmid"]
    missing, extra = inputs.test_pmids - set(pmids), set(pmids) - inputs.test_pmids
    if missing or extra or len(pmids) != inputs.n_test:
        raise PeftqaError(
            f"report: method '{method}' is stale: {PREDS.path(method=method, split='test')} has {len(pmids)} rows, "
            f"{len(missing)} PMIDs of {SPLIT.path(split='test')} missing and {len(extra)} not in it "
            f"(e.g. {sorted(missing | extra)[:3]}). Run `dvc repro` to re-evaluate it.")
    if inputs.metrics[method]["n"] != inputs.n_test:
        raise PeftqaError(f"report: method '{method}' is stale: {METRICS.path(method=method, split='test')} has "
                          f"n={inputs.metrics[method]['n']}, {SPLIT.path(split='test')} {inputs.n_test} items. "
                          "Run `dvc repro`.")
    if len(inputs.preds_val[method]) != inputs.n_val:
        raise PeftqaError(f"report: method '{method}' is stale: {PREDS.path(method=method, split='val')} has "
                          f"{len(inputs.preds_val[method])} rows, and {inputs.n_val} val items were to be scored "
                          f"({SPLIT_STATS.path()}, evaluate.limit_items). Run `dvc repro`.")


def check_reference_fresh(inputs: ReportInputs, reference: str) -> None:
    """A reference row's preds and metrics must cover exactly the PMIDs of test.csv, as a method's."""
    pmids = inputs.reference_preds[reference]["pmid"]
    unlike = set(pmids) ^ inputs.test_pmids
    if unlike or len(pmids) != inputs.n_test or inputs.reference_metrics[reference]["n"] != inputs.n_test:
        raise PeftqaError(
            f"report: reference '{reference}' is stale: {REFERENCE_PREDS.path(reference=reference, split='test')} "
            f"has {len(pmids)} rows and its metrics n={inputs.reference_metrics[reference]['n']}, "
            f"{len(unlike)} PMIDs differ from {SPLIT.path(split='test')} ({inputs.n_test} items). "
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
                raise PeftqaError(f"report: {STATS.path()} compares '{method}' on another test size than "
                                  f"{SPLIT.path(split='test')} ({inputs.n_test}); it is stale. Run `dvc repro`.")
