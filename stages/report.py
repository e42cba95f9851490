"""Stage report: the figures and the markdown report of the test-split results, with the numbers guarded.

Inputs (columns in each writing stage's docstring), for every method m in params.methods:
  data/processed/split_stats.csv, data/processed/test.csv,
  models/<m>/history.csv, models/<m>/train_summary.json,
  reports/eval/<m>/metrics_test.json, reports/eval/<m>/cm_test.csv, reports/eval/<m>/preds_test.csv,
  reports/eval/<m>/preds_val.csv (abstention thresholds are chosen on val), reports/stats/stats_eval_test.csv,
  for every reference r in params.references.names reports/references/<r>/metrics_test.json and preds_test.csv
  (reference rows: in the performance table and figure, the significance table and each method's findings),
  and reports/protocols/*.csv when the protocols stage has run.
Outputs: reports/figures/*.png (names in FIGURE_CAPTIONS, plus cm_<m>_test.png and SEEDS_FIGURE), reports/report.md, and under
  prepare.protocol: official, reports/submission/<m>.json (PMID -> predicted label; unmapped predictions are left out,
  never guessed, and counted in report.md).
Guards: preds (of a method or a reference row) whose PMIDs differ from test.csv, metrics of another n, or a stats file
missing a comparison stop the stage (stale inputs: run `dvc repro`); the performance table is parsed back from the
written report and must equal metrics_test.json as printed, or report.md is not written.
"""
from __future__ import annotations

import json
import logging
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import matplotlib

matplotlib.use("Agg")  # files only, no display; must come before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from stages.common import PeftqaError, atomic_path, run_cli, write_json_atomic  # noqa: E402
from stages.figures import METHOD_COLORS, plot_confusion, save_figure  # noqa: E402
from stages.metrics import UNMAPPED, abstention_curve, top_label_probability  # noqa: E402
from stages.params import Params, load_params  # noqa: E402
from stages.stats import mcnemar_detectable_difference  # noqa: E402

log = logging.getLogger("peftqa.report")

PROCESSED_DIR = Path("data/processed")
MODELS_DIR = Path("models")
EVAL_DIR = Path("reports/eval")
REFERENCES_DIR = Path("reports/references")
STATS_PATH = Path("reports/stats/stats_eval_test.csv")
PROTOCOLS_DIR = Path("reports/protocols")
REPORT_DIR = Path("reports")
FIGURES_DIR = REPORT_DIR / "figures"
SUBMISSION_DIR = REPORT_DIR / "submission"

COLLAPSE_SHARE = 0.95  # a method giving one label to more than this share of test items has collapsed to it
SERIES_STYLES = ({"alpha": 1.0}, {"alpha": 0.5, "hatch": "//"}, {"alpha": 0.3, "hatch": ".."})  # bars of one method
FIGURE_CAPTIONS = {  # the fixed figures; one confusion matrix per method comes on top (confusion_figure_name)
    "performance_bar_test.png": "Test accuracy and macro-F1 per method and reference row (grey)",
    "latency_bar_test.png": "Per-example test latency, mean and p95",
    "param_footprint_bar.png": "Trainable parameters per method (log scale)",
    "eval_macro_f1_per_epoch.png": "Validation macro-F1 per epoch (star: the kept epoch)",
    "loss_train_vs_eval.png": "Train (solid) and validation (dashed) loss per epoch",
    "efficiency_panel.png": "Test macro-F1 against trainable parameters and train time",
    "selective_accuracy_coverage_test.png": "Test accuracy on the answered items against coverage, as the abstention "
                                            "threshold moves (dashed: always the majority class)",
}
SEEDS_FIGURE = "seeds_macro_f1_test.png"  # only when the repeated-seeds protocol ran
TEST_NAMES = {"mcnemar_exact": "McNemar exact", "paired_bootstrap": "Paired bootstrap"}
METRIC_NAMES = {"accuracy": "Accuracy", "macro_f1": "Macro-F1"}
REQUIRED_STATS = (("paired_bootstrap", "macro_f1"), ("mcnemar_exact", "accuracy"))  # per tuned method vs baseline
REFERENCE_COLORS = {"majority": "0.8", "tfidf_lr": "0.55"}  # greys: reference rows are not methods (METHOD_COLORS)
REFERENCE_DESCRIPTIONS = {
    "majority": "always answers the train split's most frequent label",
    "tfidf_lr": "is TF-IDF + LogisticRegression on question + context, fitted on train, its n-grams, C and class "
                "weighting chosen on val macro-F1",
}
DETECT_ALPHA = 0.05  # the smallest detectable difference: two-sided McNemar at this level...
DETECT_POWER = 0.80  # ...with this power
ABSTAIN_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9)  # --abstain-below P values tabulated; 0.5 answers all
ABSTAIN_TARGET_ACCURACY = 0.7  # the report's worked example of choosing P on val: the lowest P reaching this...
ABSTAIN_MIN_ANSWERED = 10  # ...on at least this many answered val items (below that one item moves accuracy by >0.1)

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
        history=per_method(MODELS_DIR, "history.csv", pd.read_csv),
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


def stats_row(stats: pd.DataFrame, method: str, reference: str, test: str, metric: str) -> pd.Series:
    """The one stats row for a comparison; its absence means the stats stage ran on another methods list."""
    rows = stats[(stats["method"] == method) & (stats["reference"] == reference)
                 & (stats["test"] == test) & (stats["metric"] == metric)]
    if len(rows) != 1:
        raise PeftqaError(f"report: {STATS_PATH} has {len(rows)} rows for {method} vs {reference} ({test}, {metric}), "
                          "expected 1; it is stale. Run `dvc repro`.")
    return rows.iloc[0]


# -----------------------------------------------------------------------------
# number formatting: one place decides how a number is printed, so the guard can check it


def format_number(value: float, digits: int, significant: bool = False) -> str:
    """`digits` decimals, or `digits` significant digits without scientific notation (0.000769, 22.7, 1230)."""
    if math.isnan(value):
        return "n/a"
    if not significant:
        return f"{value:.{digits}f}"
    rounded = float(f"{value:.{digits}g}")
    if rounded == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{decimals}f}"


def round_as_printed(value: float, digits: int, significant: bool = False) -> float:
    """The value format_number prints, computed another way (round()), so the guard is not the formatter twice."""
    if not significant or value == 0:
        return round(value, digits)
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def format_p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def p_clause(p: float, p_holm: float) -> str:
    """'p=0.0049 (Holm 0.0098)': the raw and the Holm-adjusted p side by side, so neither is quoted alone."""
    p_text = "p<0.0001" if p < 1e-4 else f"p={p:.4f}"
    return f"{p_text} (Holm {format_p(p_holm)})"


def format_count(n: float) -> str:
    """22_700_000 -> '22.7M', 1536 -> '1.54K': short enough to sit on a bar."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def read_markdown_table(markdown: str, header: Sequence[str]) -> list[dict[str, str]]:
    """The rows under the line that is exactly `header`, as {column: cell text}."""
    lines = markdown.splitlines()
    header_line = "| " + " | ".join(header) + " |"
    if header_line not in lines:
        raise PeftqaError(f"report: no table with header {header_line!r} in the written report")
    rows = []
    for line in lines[lines.index(header_line) + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip().strip("|").split(" | ")))))
    return rows


# -----------------------------------------------------------------------------
# the performance table and its guard


@dataclass(frozen=True)
class Column:
    """A performance-table column: the metrics_test.json keys it shows (joined by ' / ') and their rounding."""
    header: str
    keys: tuple[str, ...]
    digits: int = 3
    significant: bool = False  # digits counts significant digits, not decimals

    def cell(self, metrics: dict) -> str:
        return " / ".join(format_number(float(metrics[k]), self.digits, self.significant) for k in self.keys)


def performance_columns(labels: Sequence[str]) -> list[Column]:
    """The reference study's columns; per-label F1 in alphabetical order (No before Yes, as the reference)."""
    return [
        Column("Macro-F1", ("macro_f1",)),
        Column("Accuracy", ("accuracy",)),
        *(Column(f"F1 ({label.capitalize()})", (f"f1_{label}",)) for label in sorted(labels)),
        Column("Latency mean / p95 (s)", ("latency_mean_s", "latency_p95_s"), digits=4),
        Column("Trainable Params (M)", ("trainable_params_m",), significant=True),
    ]


def reference_label(reference: str) -> str:
    """How a reference row is named in the report's tables and prose: never mistaken for a method."""
    return f"{reference} (reference)"


def performance_rows(metrics: dict[str, dict], reference_metrics: dict[str, dict],
                     columns: Sequence[Column]) -> dict[str, dict]:
    """The performance table's rows, by their printed name: the methods, then the reference rows. A reference has no
    latency (nothing is timed) and no trainable parameters: those cells get NaN, printed n/a."""
    keys = [key for column in columns for key in column.keys]
    references = {reference_label(r): {key: float("nan") for key in keys} | values
                  for r, values in reference_metrics.items()}
    return {**metrics, **references}


def performance_table(metrics: dict[str, dict], columns: Sequence[Column]) -> str:
    rows = [[method, *(c.cell(values) for c in columns)] for method, values in metrics.items()]
    return markdown_table(["Method", *(c.header for c in columns)], rows)


def check_performance_table(markdown: str, metrics: dict[str, dict], columns: Sequence[Column]) -> None:
    """Parse the performance table back from the written report and compare every cell with metrics_test.json.
    The report is what people quote: a formatting or row-order bug must stop the stage, not ship a wrong number."""
    rows = read_markdown_table(markdown, ["Method", *(c.header for c in columns)])
    if [row["Method"] for row in rows] != list(metrics):
        listed = [row["Method"] for row in rows]
        raise PeftqaError(f"report: the performance table lists {listed}, expected {list(metrics)}")
    for row in rows:
        for column in columns:
            printed = row[column.header].split(" / ")
            for text, key in zip(printed, column.keys):
                value = float(metrics[row["Method"]][key])
                same = (text == "n/a") if math.isnan(value) else text != "n/a" and math.isclose(
                    float(text), round_as_printed(value, column.digits, column.significant))
                if not same or len(printed) != len(column.keys):
                    raise PeftqaError(f"report: report.md says {column.header} = {row[column.header]} for "
                                      f"{row['Method']}, but metrics_test.json has {key} = {value}; not written.")


# -----------------------------------------------------------------------------
# the other tables


def split_table(split_stats: pd.DataFrame) -> str:
    header = [column.replace("_pct", " %") for column in split_stats.columns]  # yes_pct -> "yes %"
    return markdown_table(header, split_stats.astype(str).to_numpy().tolist())


def comparison_name(method: str, reference: str, baseline: str, references: Sequence[str]) -> str:
    """'lora' against the baseline, 'lora vs prompt_tuning' against a method, 'lora vs majority (reference)'."""
    if reference == baseline:
        return method
    return f"{method} vs {reference_label(reference) if reference in references else reference}"


def significance_table(stats: pd.DataFrame, baseline: str, confidence: float, references: Sequence[str] = ()) -> str:
    """Every comparison of the stats stage; 'Tuned Method' is the method alone when its reference is the baseline,
    and names a reference row as such (comparison_name)."""
    rows = []
    for row in stats.itertuples(index=False):
        ci = "—" if pd.isna(row.ci_low) else f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
        rows.append([
            comparison_name(row.method, row.reference, baseline, references),
            TEST_NAMES.get(row.test, row.test),
            METRIC_NAMES.get(row.metric, row.metric),
            f"{row.effect:+.3f}",
            ci,
            p_clause(row.p_value, row.p_holm),
            f"b={int(row.b)}, c={int(row.c)}",
        ])
    header = ["Tuned Method", "Test", "Metric", "Effect", f"{confidence:.0%} CI", "p-value", "Notes"]
    return markdown_table(header, rows)


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}" if not pd.isna(std) else f"{mean:.3f}"


def main_protocol_line(params: Params, n_test: int) -> str:
    """The protocol of the main tables, stated where they are."""
    return (f"Protocol: one training run per method (train seed {params.train.seed}) on the `{params.prepare.protocol}` "
            f"split (split seed {params.prepare.seed}), tested on its n = {n_test} test items"
            + (f" (evaluate.limit_items: the first {params.evaluate.limit_items} only, a demo slice, not a result)."
               if params.evaluate.limit_items else "."))


def seeds_section(results: ProtocolResults | None, params: Params) -> str:
    head = "## Repeated seeds\n\n"
    if results is None or results.seeds_test.empty:
        return head + ("Not run. Set `seeds: [1, 2, 3]` in params.yaml (stage `protocols`) to retrain every method "
                       "once per seed on the same split; this section then gives mean ± std per method.")
    runs, baseline = results.seeds_test, params.stats.baseline
    rows = []
    for row in results.seeds_summary.to_dict("records"):
        f1 = runs.loc[runs["method"] == row["method"], "macro_f1"]
        delta = "—" if row["method"] == baseline else mean_std(row["delta_macro_f1_mean"], row["delta_macro_f1_std"])
        rows.append([row["method"], int(row["n_seeds"]), mean_std(row["accuracy_mean"], row["accuracy_std"]),
                     mean_std(row["macro_f1_mean"], row["macro_f1_std"]), f"{f1.min():.3f} – {f1.max():.3f}", delta])
    header = ["Method", "Seeds", "Accuracy", "Macro-F1", "Macro-F1 range", f"Δ macro-F1 vs {baseline}"]
    return head + (
        f"Protocol: every method retrained with train seeds {', '.join(map(str, params.seeds))} on the main split "
        f"(split seed {params.prepare.seed}), each run tested on the same n = {int(runs['n'].iloc[0])} test items. "
        f"Mean ± sample std over seeds; Δ is the per-seed difference from `{baseline}` trained with the same seed. "
        "A single-run difference smaller than these stds is seed noise.\n\n" + markdown_table(header, rows))


def cv_section(results: ProtocolResults | None, params: Params) -> str:
    head = "## Cross-validation\n\n"
    if results is None or results.cv_folds.empty:
        return head + ("Not run. Set `prepare.folds: 5` in params.yaml (stages `prepare` and `protocols`) to test "
                       "every cleaned item once, with paired tests on all of them instead of the test split alone.")
    folds = results.cv_folds.assign(fold=results.cv_folds["fold"].astype(str))
    rows = []
    for method, frame in folds.groupby("method", sort=False):
        pooled = frame.loc[frame["fold"] == "pooled"].iloc[0]
        per_fold = frame.loc[frame["fold"] != "pooled", "macro_f1"]
        name = f"{method} (reference)" if method in params.references.names else method
        rows.append([name, int(pooled["n"]), f"{pooled['accuracy']:.3f}", f"{pooled['macro_f1']:.3f}",
                     mean_std(per_fold.mean(), per_fold.std(ddof=1))])
    n = int(folds.loc[folds["fold"] == "pooled", "n"].iloc[0])
    text = head + (
        f"Protocol: stratified {params.prepare.folds}-fold cross-validation over all n = {n} cleaned items (fold "
        f"seed {params.prepare.seed}). Each item is tested once, by a model (train seed {params.train.seed}) trained "
        f"on the other folds, {params.prepare.val_fraction:.0%} of them held out for early stopping. Pooled metrics "
        "are over all n predictions. The reference rows are refitted on each fold's train (their settings chosen on "
        "its val), like the methods.\n\n"
        + markdown_table(["Method", "n", "Pooled accuracy", "Pooled macro-F1", "Fold macro-F1 (mean ± std)"], rows))
    if not results.cv_stats.empty:
        text += ("\n\nPaired tests on the pooled predictions (same protocol, n = " + str(n) + "):\n\n"
                 + significance_table(results.cv_stats, params.stats.baseline, params.stats.confidence,
                                      list(params.references.names)))
    return text


def plot_seed_spread(runs: pd.DataFrame) -> Figure:
    """Test macro-F1 of every seed's run (dots) with the mean ± std (bar) per method."""
    methods = list(dict.fromkeys(runs["method"]))
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 3, 3.6), layout="constrained")
    for i, method in enumerate(methods):
        f1 = runs.loc[runs["method"] == method, "macro_f1"].to_numpy()
        jitter = np.linspace(-0.12, 0.12, len(f1)) if len(f1) > 1 else np.zeros(1)
        ax.scatter(i + jitter, f1, color=METHOD_COLORS[method], alpha=0.7, zorder=3)
        ax.errorbar(i + 0.3, f1.mean(), yerr=f1.std(ddof=1) if len(f1) > 1 else 0, fmt="o", color="black",
                    capsize=4, zorder=4)
    ax.set_xticks(range(len(methods)), methods)
    ax.set(title=f"Test macro-F1 per seed (black: mean ± std, {runs['seed'].nunique()} seeds)", ylabel="macro-F1")
    ax.grid(axis="y", alpha=0.3)
    return fig


def training_table(summary: dict[str, dict]) -> str:
    header = ["Method", "Best epoch", "Epochs run", "Best val macro-F1", "Train time (s)", "Examples/s", "Note"]
    rows = [[method, s["best_epoch"], s["epochs_run"], f"{s['best_val_macro_f1']:.3f}", f"{s['train_seconds']:.1f}",
             f"{s['examples_per_s']:.1f}", s.get("note", "")] for method, s in summary.items()]
    return markdown_table(header, rows)


def provenance_table(summary: dict[str, dict], parent_runs: dict[str, str] | None = None) -> str:
    """Per method its training run and logged model; per protocol the parent run its seed or fold runs nest under."""
    rows = [[method, f"`{s['mlflow_run_id']}`", f"`{s['mlflow_model_id']}`" if s.get("mlflow_model_id") else "—",
             s["mlflow_experiment_id"]] for method, s in summary.items()]
    experiment = next(iter(summary.values()))["mlflow_experiment_id"] if summary else ""
    rows += [[f"protocol {protocol} (parent run)", f"`{run_id}`", "—", experiment]
             for protocol, run_id in (parent_runs or {}).items()]
    return markdown_table(["Run", "MLflow run id", "MLflow logged model id", "MLflow experiment id"], rows)


# -----------------------------------------------------------------------------
# abstention: accuracy and coverage as the --abstain-below threshold moves


def confidence_from_p_yes(p_yes: Sequence[float]) -> np.ndarray:
    """Labels yes/no: the top label probability max(p_yes, 1 - p_yes), the confidence --abstain-below compares."""
    p_yes = np.asarray(p_yes, dtype=float)
    return top_label_probability(np.column_stack([p_yes, 1 - p_yes]))


def split_scored_methods(preds: dict[str, pd.DataFrame], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """(methods with p_yes on every item, the others). With labels other than yes/no none is scored: under 'maybe',
    p_yes alone does not give the top label's probability."""
    if sorted(labels) != ["no", "yes"]:
        return [], list(preds)
    scored = [m for m, frame in preds.items() if frame["p_yes"].notna().all()]
    return scored, [m for m in preds if m not in scored]


def abstention_frame(preds: dict[str, pd.DataFrame], labels: Sequence[str],
                     thresholds: Sequence[float] | None = None) -> pd.DataFrame:
    """abstention_curve per method, stacked: method, threshold, answered, coverage, accuracy, macro_f1. thresholds
    None: each method's own distinct confidences, i.e. every point where its coverage changes."""
    columns = ["method", "threshold", "answered", "coverage", "accuracy", "macro_f1"]
    curves = []
    for method, frame in preds.items():
        confidence = confidence_from_p_yes(frame["p_yes"])
        pred = [p if isinstance(p, str) else None for p in frame["pred"]]  # NaN: unmapped, wrong
        grid = np.unique(confidence) if thresholds is None else thresholds
        curves.append(abstention_curve(frame["gold"], pred, confidence, grid, labels).assign(method=method))
    return pd.concat(curves, ignore_index=True)[columns] if curves else pd.DataFrame(columns=columns)


def choose_threshold(val: pd.DataFrame, target_accuracy: float, min_answered: int) -> dict[str, float | None]:
    """Per method of an abstention_frame on val: the lowest threshold (the most answered) whose accuracy reaches
    target_accuracy on at least min_answered items; None where no threshold does."""
    reached = val[(val["accuracy"] >= target_accuracy) & (val["answered"] >= min_answered)]
    lowest = reached.groupby("method")["threshold"].min()
    return {m: (float(lowest[m]) if m in lowest.index else None) for m in val["method"].unique()}


def format_share(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def abstention_table(val: pd.DataFrame, test: pd.DataFrame, n_val: int, n_test: int) -> str:
    """One row per method and threshold: the val columns to choose P with, then what P gives on test. A threshold
    above every confidence of a method on both splits (no item answered) has no row."""
    both = val.merge(test, on=["method", "threshold"], suffixes=("_val", "_test"), sort=False)
    both = both[(both["answered_val"] > 0) | (both["answered_test"] > 0)]
    rows = [[r.method, f"{r.threshold:.2f}", f"{r.answered_val}/{n_val}", format_share(r.accuracy_val),
             f"{r.coverage_test:.2f}", f"{r.answered_test}/{n_test}", format_share(r.accuracy_test),
             format_share(r.macro_f1_test)] for r in both.itertuples(index=False)]
    header = ["Method", "P", "Val answered", "Val accuracy", "Test coverage", "Test answered", "Test accuracy",
              "Test macro-F1"]
    return markdown_table(header, rows)


def threshold_sentence(method: str, threshold: float | None, val: pd.DataFrame, test: pd.DataFrame,
                       n_test: int) -> str:
    """What the val-chosen threshold gives on test, or that no threshold reaches the target on val."""
    if threshold is None:
        return f"{method}: no P does"
    v = val[(val["method"] == method) & (val["threshold"] == threshold)].iloc[0]
    t = test[(test["method"] == method) & (test["threshold"] == threshold)].iloc[0]
    return (f"{method}: P = {threshold:.2f} (val: {v.answered} answered, accuracy {v.accuracy:.3f}), which on test "
            f"answers {t.answered}/{n_test} with accuracy {format_share(t.accuracy)}")


def majority_class_accuracy(split_stats: pd.DataFrame, labels: Sequence[str]) -> tuple[str, float]:
    """The train split's most frequent label and its share of the test items: the accuracy of always answering it."""
    stats = split_stats.set_index("split")
    label = max(labels, key=lambda name: stats.loc["train", name])
    return label, float(stats.loc["test", label] / stats.loc["test", "n"])


def abstention_section(preds_val: dict[str, pd.DataFrame], preds_test: dict[str, pd.DataFrame],
                       split_stats: pd.DataFrame, labels: Sequence[str]) -> str:
    title = "## Abstention: accuracy and coverage as the threshold moves\n\n"
    scored, unscored = split_scored_methods(preds_test, labels)
    skipped = (f" Not shown: {', '.join(unscored)} (no p_yes on every item: `model.scoring: generate` gives no label "
               "probabilities, and with a 'maybe' label p_yes alone does not give the top one)." if unscored else "")
    if not scored:
        return title + "No method has label probabilities to abstain on." + skipped
    val = abstention_frame({m: preds_val[m] for m in scored}, labels, ABSTAIN_THRESHOLDS)
    test = abstention_frame({m: preds_test[m] for m in scored}, labels, ABSTAIN_THRESHOLDS)
    n_val, n_test = len(preds_val[scored[0]]), len(preds_test[scored[0]])
    chosen = choose_threshold(val, ABSTAIN_TARGET_ACCURACY, ABSTAIN_MIN_ANSWERED)
    label, majority = majority_class_accuracy(split_stats, labels)
    target = f"val accuracy ≥ {ABSTAIN_TARGET_ACCURACY:.2f} on at least {ABSTAIN_MIN_ANSWERED} answered val items"
    if all(threshold is None for threshold in chosen.values()):
        example = f"For example, no method reaches {target} at any P in the table."
    else:
        example = (f"For example, the lowest P with {target}: "
                   + "; ".join(threshold_sentence(m, chosen[m], val, test, n_test) for m in scored) + ".")
    return (title + "`peftqa predict --abstain-below P` answers `abstain` when the top label's probability, "
            "max(p_yes, 1 − p_yes), is below P. For each P: how many items a method still answers, and its "
            f"accuracy and macro-F1 on those alone (—: none answered). With {n_test} test items the answered subsets "
            "get small fast (on 10 items one answer moves accuracy by 0.1), so read the counts before the accuracies; "
            "a P that leaves nothing answered on either split has no row. "
            f"Always answering the train majority class '{label}' scores {majority:.3f} on test." + skipped + "\n\n"
            + abstention_table(val, test, n_val, n_test) + "\n\n"
            "Choose P on val, never on test: take the P whose val columns meet your need, and read its test columns "
            "as the estimate of what it gives. " + example + " "
            "`figures/selective_accuracy_coverage_test.png` draws test accuracy against coverage over every distinct "
            "threshold.")


# -----------------------------------------------------------------------------
# generated prose: what the numbers allow us to say, and nothing more


def dominant_prediction(preds: pd.DataFrame) -> tuple[str, float]:
    """The most frequent prediction (unmapped counts as its own value) and its share of the items."""
    shares = preds["pred"].fillna(UNMAPPED).value_counts(normalize=True)
    return str(shares.index[0]), float(shares.iloc[0])


def collapse_sentence(method: str, preds: pd.DataFrame) -> str:
    """A warning when a method answers (nearly) always the same: its accuracy then only mirrors the class balance."""
    label, share = dominant_prediction(preds)
    if share <= COLLAPSE_SHARE:
        return ""
    return (f" Caution: {method} predicts '{label}' for {share:.0%} of the test items (majority-class collapse), so "
            "its accuracy mostly reflects the class balance, not the questions.")


def describe_method(method: str, baseline: str, metrics: dict[str, dict], stats: pd.DataFrame,
                    confidence: float) -> str:
    """One paragraph on `method` vs the baseline: 'better'/'worse' only when the CI of Δmacro-F1 excludes 0."""
    boot = stats_row(stats, method, baseline, "paired_bootstrap", "macro_f1")
    mcnemar = stats_row(stats, method, baseline, "mcnemar_exact", "accuracy")
    ci = f"{confidence:.0%} bootstrap CI [{boot.ci_low:+.3f}, {boot.ci_high:+.3f}]"
    text = (f"**{method}** vs **{baseline}**: test macro-F1 {metrics[method]['macro_f1']:.3f} vs "
            f"{metrics[baseline]['macro_f1']:.3f} (Δ {boot.effect:+.3f}, {ci}). ")
    if boot.ci_low > 0 or boot.ci_high < 0:
        verdict = "better" if boot.ci_low > 0 else "worse"
        text += (f"{method} is {verdict} than {baseline} on macro-F1: the CI excludes 0 (bootstrap "
                 f"{p_clause(boot.p_value, boot.p_holm)}).")
        if boot.p_holm >= 1 - confidence:
            text += (f" After Holm correction across all comparisons p is {format_p(boot.p_holm)}, above "
                     f"{1 - confidence:.2f}: treat this as suggestive.")
    else:
        text += (f"The difference is not distinguishable from noise at this test size (n={int(boot.n)}): "
                 "the CI contains 0.")
    text += (f" On accuracy (Δ {mcnemar.effect:+.3f}), {method} fixes b={int(mcnemar.b)} items {baseline} got wrong "
             f"and regresses on c={int(mcnemar.c)} (exact McNemar "
             f"{p_clause(mcnemar.p_value, mcnemar.p_holm)}).")
    return text


def describe_baseline(baseline: str, metrics: dict, preds: pd.DataFrame) -> str:
    return (f"**{baseline}** (the baseline): test macro-F1 {metrics['macro_f1']:.3f}, accuracy "
            f"{metrics['accuracy']:.3f}." + collapse_sentence(baseline, preds))


def describe_against_references(method: str, references: Sequence[str], stats: pd.DataFrame,
                                confidence: float) -> str:
    """One sentence on `method` vs each reference row: 'beats' / 'is worse than' only when the paired bootstrap CI of
    Δmacro-F1 excludes 0, otherwise 'is indistinguishable from'; '' without reference rows."""
    clauses = []
    for reference in references:
        boot = stats_row(stats, method, reference, "paired_bootstrap", "macro_f1")
        verdict = ("beats" if boot.ci_low > 0 else "is worse than" if boot.ci_high < 0
                   else "is indistinguishable from")
        caveat = (", suggestive only after Holm correction" if verdict != "is indistinguishable from"
                  and boot.p_holm >= 1 - confidence else "")
        clauses.append(f"{method} {verdict} {reference_label(reference)} (Δ macro-F1 {boot.effect:+.3f}, "
                       f"{confidence:.0%} CI [{boot.ci_low:+.3f}, {boot.ci_high:+.3f}], "
                       f"{p_clause(boot.p_value, boot.p_holm)}{caveat})")
    if not clauses:
        return ""
    return " Against the reference rows: " + "; ".join(clauses) + "."


def format_detectable(delta: float) -> str:
    """A mcnemar_detectable_difference as printed: 'none' where no difference reaches the power (inf)."""
    if math.isnan(delta):
        return "not estimable (no discordant item)"
    return "none" if math.isinf(delta) else f"{delta:.3f}"


def detectable_difference_sentence(stats: pd.DataFrame, methods: Sequence[str], baseline: str,
                                   references: Sequence[str], n_test: int) -> str:
    """The smallest accuracy difference this test set can detect (mcnemar_detectable_difference), at the mean
    discordance (b + c) / n observed over the comparisons against the baseline; with no tuned method, over the
    baseline's comparisons against the reference rows. Each comparison's own value follows in parentheses."""
    pairs = [(m, baseline) for m in methods if m != baseline] or [(baseline, r) for r in references]
    if not pairs:
        return ""
    mcnemar = {pair: stats_row(stats, *pair, "mcnemar_exact", "accuracy") for pair in pairs}
    rates = {pair: (row.b + row.c) / row.n for pair, row in mcnemar.items()}  # the discordance ψ of each comparison
    deltas = {pair: mcnemar_detectable_difference(n_test, rate, DETECT_ALPHA, DETECT_POWER)
              for pair, rate in rates.items()}
    mean_rate = float(np.mean(list(rates.values())))
    mean_delta = mcnemar_detectable_difference(n_test, mean_rate, DETECT_ALPHA, DETECT_POWER)
    which = (f"the comparisons against the baseline `{baseline}`" if pairs[0][1] == baseline
             else "the baseline's comparisons against the reference rows")
    each = ", ".join(f"{comparison_name(m, r, baseline, references)} {rates[m, r]:.3f} → "
                     f"{format_detectable(deltas[m, r])}" for m, r in pairs)
    text = (f"Smallest detectable difference: with n = {n_test} test items, the smallest accuracy difference a "
            f"two-sided McNemar test at α = {DETECT_ALPHA:.2f} detects with {DETECT_POWER:.0%} power is "
            f"{format_detectable(mean_delta)}, at the discordance rate (b+c)/n = {mean_rate:.3f}, the mean over "
            f"{which} (per comparison, (b+c)/n → smallest difference: {each}). It uses the normal approximation "
            "n = [z_(α/2)√ψ + z_β√(ψ − δ²)]² / δ², solved for the accuracy difference δ at the discordance ψ. "
            "A smaller true difference would most often go undetected, so 'indistinguishable' does not mean 'equal'.")
    if any(math.isinf(delta) for delta in [mean_delta, *deltas.values()]):
        text += (" 'none': even a method winning every discordant item would fall short of that power at this "
                 "test size.")
    return text


# -----------------------------------------------------------------------------
# figures: one helper per kind of drawing, shared by the figures that use it


def clip_for_log(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Values a log axis can show: zeros (a zero-shot method trains nothing) are lifted to a floor below the rest."""
    positive = values[values > 0]
    floor = positive.min() / 10 if positive.size else 1.0
    return np.where(values > 0, values, floor), float(floor)


def draw_grouped_bars(ax: Axes, table: pd.DataFrame, value_format: Callable[[float], str],
                      log_scale: bool = False, colors: Sequence[object] | None = None) -> None:
    """One cluster per method (row) in the method's colour (or `colors`, one per row), one bar per series (column)
    told apart by hatching; every bar carries its value. On a log axis a zero sits at the floor and is still labelled
    with its true value."""
    values = table.to_numpy(dtype=float)  # (methods, series)
    heights, floor = clip_for_log(values) if log_scale else (values, 0.0)
    n_series = values.shape[1]
    width = 0.8 / n_series
    x = np.arange(len(table))
    colors = [METHOD_COLORS[m] for m in table.index] if colors is None else list(colors)
    for j, style in zip(range(n_series), SERIES_STYLES):
        bars = ax.bar(x + (j - (n_series - 1) / 2) * width, heights[:, j], width, color=colors, edgecolor="black",
                      linewidth=0.5, **style)
        ax.bar_label(bars, labels=[value_format(v) for v in values[:, j]], padding=2, fontsize=8)
    ax.set_xticks(x, table.index)
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(floor, np.nanmax(heights) * 10)  # headroom for the labels, a decade up
    else:
        ax.set_ylim(0, np.nanmax(heights) * 1.18)
    if n_series > 1:
        handles = [Patch(facecolor="lightgrey", edgecolor="black", label=s, **st)
                   for s, st in zip(table.columns, SERIES_STYLES)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)


def new_bar_figure(n_methods: int) -> tuple[Figure, Axes]:
    """A figure wide enough that method names and bar labels never overlap."""
    return plt.subplots(figsize=(1.5 * n_methods + 2.5, 4.2), layout="constrained")


def plot_performance(metrics: dict[str, dict], n_test: int, reference_metrics: dict[str, dict] | None = None
                     ) -> Figure:
    """The methods in their colours, then the reference rows in grey, named '<r>\n(reference)'."""
    rows = {**metrics, **(reference_metrics or {})}
    names = [*metrics, *(reference_label(r).replace(" (", "\n(") for r in reference_metrics or {})]
    table = pd.DataFrame({"accuracy": [m["accuracy"] for m in rows.values()],
                          "macro-F1": [m["macro_f1"] for m in rows.values()]}, index=names)
    colors = [METHOD_COLORS[m] for m in metrics] + [REFERENCE_COLORS[r] for r in reference_metrics or {}]
    fig, ax = new_bar_figure(len(table))
    draw_grouped_bars(ax, table, lambda v: f"{v:.3f}", colors=colors)
    ax.set(title=f"Test accuracy and macro-F1 (n={n_test})", xlabel="method or reference row", ylabel="score")
    return fig


def plot_latency(metrics: dict[str, dict]) -> Figure:
    table = pd.DataFrame({"mean": [m["latency_mean_s"] * 1e3 for m in metrics.values()],
                          "p95": [m["latency_p95_s"] * 1e3 for m in metrics.values()]}, index=list(metrics))
    fig, ax = new_bar_figure(len(table))
    draw_grouped_bars(ax, table, lambda v: f"{v:.3g}")
    ax.set(title="Per-example test latency", xlabel="method", ylabel="latency (ms)")
    return fig


def plot_param_footprint(summary: dict[str, dict]) -> Figure:
    """Trainable parameters on a log axis, with each method's note (e.g. base: a head on the frozen encoder)."""
    table = pd.DataFrame({"trainable": [s["trainable_params"] for s in summary.values()]}, index=list(summary))
    fig, ax = new_bar_figure(len(table))
    draw_grouped_bars(ax, table, format_count, log_scale=True)
    ax.set(title="Trainable parameters per method", xlabel="method", ylabel="trainable parameters (log scale)")
    notes = [textwrap.fill(f"{m}: {s['note']}", 100) for m, s in summary.items() if s.get("note")]
    if notes:
        fig.text(0.01, -0.02, "\n".join(notes), fontsize=8, va="top")
    return fig


def draw_method_lines(ax: Axes, history: dict[str, pd.DataFrame], column: str, linestyle: str = "-") -> None:
    """One line per method over epochs, in the method's colour; epochs without a value (zero-shot) are skipped."""
    for method, frame in history.items():
        points = frame[["epoch", column]].dropna()
        ax.plot(points["epoch"], points[column], linestyle=linestyle, marker="o", color=METHOD_COLORS[method])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def method_handles(methods: Sequence[str]) -> list[Line2D]:
    return [Line2D([], [], color=METHOD_COLORS[m], marker="o", label=m) for m in methods]


def plot_val_macro_f1(history: dict[str, pd.DataFrame], summary: dict[str, dict]) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    draw_method_lines(ax, history, "val_macro_f1")
    for method, s in summary.items():
        ax.plot(s["best_epoch"], s["best_val_macro_f1"], marker="*", markersize=16, color=METHOD_COLORS[method],
                markeredgecolor="black")
    ax.legend(handles=method_handles(list(history)), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set(title="Validation macro-F1 per epoch (star: kept epoch)", xlabel="epoch", ylabel="val macro-F1")
    return fig


def plot_losses(history: dict[str, pd.DataFrame]) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    draw_method_lines(ax, history, "train_loss", "-")
    draw_method_lines(ax, history, "val_loss", "--")
    styles = [Line2D([], [], color="black", linestyle=ls, label=name) for ls, name in (("-", "train"), ("--", "val"))]
    ax.legend(handles=method_handles(list(history)) + styles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set(title="Train (solid) and validation (dashed) loss", xlabel="epoch", ylabel="loss")
    return fig


def draw_labelled_points(ax: Axes, x: Sequence[float], y: Sequence[float], methods: Sequence[str],
                         labels: Sequence[str]) -> None:
    for xi, yi, method, label in zip(x, y, methods, labels):
        ax.scatter(xi, yi, s=60, color=METHOD_COLORS[method], edgecolor="black", zorder=3)
        ax.annotate(label, (xi, yi), xytext=(6, 6), textcoords="offset points", fontsize=9)
    ax.margins(x=0.2, y=0.2)
    ax.grid(alpha=0.3)


def plot_efficiency(metrics: dict[str, dict], summary: dict[str, dict]) -> Figure:
    """A zero-shot method (0 params) sits at the log axis floor, its label saying 0 so the position cannot mislead."""
    methods = list(metrics)
    f1 = [metrics[m]["macro_f1"] for m in methods]
    labels = [f"{m} ({metrics[m]['macro_f1']:.3f})" for m in methods]
    params, _ = clip_for_log(np.array([summary[m]["trainable_params"] for m in methods], dtype=float))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
    draw_labelled_points(left, params, f1, methods,
                         [f"{label}, 0 params" if not summary[m]["trainable_params"] else label
                          for m, label in zip(methods, labels)])
    left.set_xscale("log")
    left.set(title="against trainable parameters", xlabel="trainable parameters (log scale)", ylabel="test macro-F1")
    draw_labelled_points(right, [summary[m]["train_seconds"] for m in methods], f1, methods, labels)
    right.set(title="against train time", xlabel="train time (s)")
    fig.suptitle("Test macro-F1 against training cost")
    return fig


def plot_selective_accuracy(curves: pd.DataFrame, majority: tuple[str, float], n_test: int) -> Figure:
    """Accuracy on the answered test items against coverage, one line per method of an abstention_frame over every
    distinct threshold (right end: P = 0.5, all answered); the top axis counts the items, so small subsets show."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    for method, curve in curves.groupby("method", sort=False):
        ax.plot(curve["coverage"], curve["accuracy"], marker=".", color=METHOD_COLORS[method], label=method)
    if curves.empty:
        ax.text(0.5, 0.5, "no method has label probabilities (p_yes)", ha="center", transform=ax.transAxes)
    label, accuracy = majority
    ax.axhline(accuracy, color="grey", linestyle="--", label=f"always '{label}' ({accuracy:.3f})")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.05), title=f"Selective accuracy against coverage (test, n={n_test})",
           xlabel="coverage (share of test items answered)", ylabel="accuracy on the answered items")
    ax.secondary_xaxis("top", functions=(lambda c: c * n_test, lambda k: k / n_test)).set_xlabel("items answered")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def confusion_figure_name(method: str) -> str:
    return f"cm_{method}_test.png"


def build_figures(inputs: ReportInputs, labels: Sequence[str]) -> dict[str, Figure]:
    figures = {
        "performance_bar_test.png": plot_performance(inputs.metrics, inputs.n_test, inputs.reference_metrics),
        "latency_bar_test.png": plot_latency(inputs.metrics),
        "param_footprint_bar.png": plot_param_footprint(inputs.summary),
        "eval_macro_f1_per_epoch.png": plot_val_macro_f1(inputs.history, inputs.summary),
        "loss_train_vs_eval.png": plot_losses(inputs.history),
        "efficiency_panel.png": plot_efficiency(inputs.metrics, inputs.summary),
        "selective_accuracy_coverage_test.png": plot_selective_accuracy(
            abstention_frame({m: inputs.preds[m] for m in split_scored_methods(inputs.preds, labels)[0]}, labels),
            majority_class_accuracy(inputs.split_stats, labels), inputs.n_test),
    }
    for method, confusion in inputs.confusion.items():
        figures[confusion_figure_name(method)] = plot_confusion(confusion, labels, method)
    if inputs.protocols is not None and not inputs.protocols.seeds_test.empty:
        figures[SEEDS_FIGURE] = plot_seed_spread(inputs.protocols.seeds_test)
    return figures


# -----------------------------------------------------------------------------
# the report


def build_submission(preds: pd.DataFrame) -> tuple[dict[str, str], int]:
    """PMID -> predicted label (official format); unmapped predictions are left out, never guessed, and counted."""
    mapped = preds.dropna(subset=["pred"])
    return dict(zip(mapped["pmid"], mapped["pred"])), len(preds) - len(mapped)


def references_note(references: Sequence[str]) -> str:
    """What the reference rows are, after the performance table; '' without any."""
    if not references:
        return ""
    return (" Reference rows (stage `references`) are not trained methods: "
            + "; ".join(f"`{r}` {REFERENCE_DESCRIPTIONS[r]}" for r in references)
            + " (choices in `reports/references/choices.json`). Their latency and trainable parameters are n/a.")


def unmapped_note(metrics: dict[str, dict]) -> str:
    counts = {m: int(v.get("unmapped", 0)) for m, v in metrics.items() if v.get("unmapped", 0)}
    if not counts:
        return "Every prediction mapped to a label."
    return ("Unmapped predictions (a generation that matches no label; counted as wrong): "
            + ", ".join(f"{m} {n}" for m, n in counts.items()) + ".")


def submission_section(left_out: dict[str, int]) -> str:
    lines = [f"- `submission/{m}.json`: {n} unmapped prediction(s) left out" for m, n in left_out.items()]
    return ("## Official submission\n\nPMID -> predicted label over the official test split. Unmapped predictions "
            "are left out rather than mapped to a label, so a file with any left out is incomplete:\n\n"
            + "\n".join(lines))


def protocol_section(params: Params, n_test: int, summary: dict[str, dict],
                     parent_runs: dict[str, str] | None = None) -> str:
    p, s = params.prepare, params.stats
    return (f"## Protocol and provenance\n\nThese tables come from `prepare.protocol: {p.protocol}` "
            f"(split seed {p.seed}), n = {n_test} test items, labels {', '.join(p.labels)}, training seed "
            f"{params.train.seed}. Significance: exact McNemar and a paired bootstrap ({s.n_bootstrap} resamples, "
            f"seed {s.seed}, {s.confidence:.0%} percentile CI), Holm-adjusted within each test and metric. "
            "Regenerate everything with `dvc repro`. The runs are in the MLflow store (`make ui`); a protocol's seed "
            "or fold runs are the children of its parent run.\n\n" + provenance_table(summary, parent_runs))


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
        check_performance_table(tmp.read_text(encoding="utf-8"),
                                performance_rows(inputs.metrics, inputs.reference_metrics, columns), columns)
    log.info("wrote %s and %d figures", REPORT_DIR / "report.md", len(FIGURE_CAPTIONS) + len(params.methods))


if __name__ == "__main__":
    run_cli(main)
