"""Markdown tables of the report, and how every number in them is printed.

One place decides how a number is printed (format_number, format_p, p_clause, format_count, mean_std), and the tables
are built from it: the performance table (its Column list follows the reference study; reference rows named by
reference_label), the data splits, the stats stage's comparisons, training, and the MLflow provenance. Pure functions
of the values they are given: peftqa/report/inputs.py reads the files and refuses stale ones first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

TEST_NAMES = {"mcnemar_exact": "McNemar exact", "paired_bootstrap": "Paired bootstrap"}
METRIC_NAMES = {"accuracy": "Accuracy", "macro_f1": "Macro-F1"}


# -----------------------------------------------------------------------------
# number formatting: one place decides how a number is printed


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


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}" if not pd.isna(std) else f"{mean:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


# -----------------------------------------------------------------------------
# the performance table


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
