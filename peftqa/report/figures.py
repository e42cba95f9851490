"""The report's figures: performance, latency, parameter footprint, training curves, efficiency, abstention, seeds.

One helper per kind of drawing (grouped bars, per-epoch lines, labelled points), shared by the figures that use it;
methods keep their colours (peftqa.report.palette.method_color) and reference rows are grey. build_figures maps each
file name under reports/figures/ to its figure; FIGURE_CAPTIONS gives the fixed ones their captions in the report."""
from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

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

from peftqa.evaluation.stats import bootstrap_interval  # noqa: E402
from peftqa.report.abstention import abstention_frame, majority_class_accuracy, split_scored_methods  # noqa: E402
from peftqa.report.palette import method_color, plot_confusion  # noqa: E402
from peftqa.report.tables import format_count, reference_label  # noqa: E402

if TYPE_CHECKING:
    from peftqa.params import StatsParams
    from peftqa.report.inputs import ReportInputs

SERIES_STYLES = ({"alpha": 1.0}, {"alpha": 0.5, "hatch": "//"}, {"alpha": 0.3, "hatch": ".."})  # bars of one method
# greys: not methods; one per name of params.REFERENCES (tests/test_report.py checks it)
REFERENCE_COLORS = {"majority": "0.8", "tfidf_lr": "0.55", "base_calibrated": "0.35", "few_shot": "0.2"}
FIGURE_CAPTIONS = {  # the fixed figures; one confusion matrix per method comes on top (confusion_figure_name)
    "performance_bar_test.png": "Test accuracy and macro-F1 per method and reference row (grey), with each one's "
                                "bootstrap interval",
    "latency_bar_test.png": "Per-example test latency, mean and p95",
    "param_footprint_bar.png": "Trainable parameters per method (log scale)",
    "eval_macro_f1_per_epoch.png": "Validation macro-F1 per epoch (star: the kept epoch)",
    "loss_train_vs_eval.png": "Train (solid) and validation (dashed) loss per epoch",
    "efficiency_panel.png": "Test macro-F1 against trainable parameters and train time",
    "selective_accuracy_coverage_test.png": "Test accuracy on the answered items against coverage, as the abstention "
                                            "threshold moves (dashed: always the majority class)",
}
SEEDS_FIGURE = "seeds_macro_f1_test.png"  # only when the repeated-seeds protocol ran


def clip_for_log(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Values a log axis can show: zeros (a zero-shot method trains nothing) are lifted to a floor below the rest."""
    positive = values[values > 0]
    floor = positive.min() / 10 if positive.size else 1.0
    return np.where(values > 0, values, floor), float(floor)


def draw_grouped_bars(ax: Axes, table: pd.DataFrame, value_format: Callable[[float], str],
                      log_scale: bool = False, colors: Sequence[object] | None = None,
                      intervals: np.ndarray | None = None) -> None:
    """One cluster per method (row) in the method's colour (or `colors`, one per row), one bar per series (column)
    told apart by hatching; every bar carries its value. On a log axis a zero sits at the floor and is still labelled
    with its true value. `intervals` (methods, series, 2), low and high, are drawn as error bars; the values then sit
    inside the bars, clear of them."""
    values = table.to_numpy(dtype=float)  # (methods, series)
    heights, floor = clip_for_log(values) if log_scale else (values, 0.0)
    n_series = values.shape[1]
    width = 0.8 / n_series
    x = np.arange(len(table))
    colors = [method_color(m) for m in table.index] if colors is None else list(colors)
    for j, style in zip(range(n_series), SERIES_STYLES):
        centres = x + (j - (n_series - 1) / 2) * width
        bars = ax.bar(centres, heights[:, j], width, color=colors, edgecolor="black", linewidth=0.5, **style)
        labels = [value_format(v) for v in values[:, j]]
        if intervals is None:
            ax.bar_label(bars, labels=labels, padding=2, fontsize=8)
            continue
        errors = np.abs(intervals[:, j, :].T - values[:, j])  # (2, methods): below and above the value
        ax.errorbar(centres, values[:, j], yerr=errors, fmt="none", ecolor="black", elinewidth=1, capsize=3)
        ax.bar_label(bars, labels=labels, label_type="center", fontsize=8,
                     bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.set_xticks(x, table.index)
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(floor, np.nanmax(heights) * 10)  # headroom for the labels, a decade up
    else:
        top = np.nanmax(heights) if intervals is None else max(np.nanmax(heights), np.nanmax(intervals))
        ax.set_ylim(0, top * 1.18)
    if n_series > 1:
        handles = [Patch(facecolor="lightgrey", edgecolor="black", label=s, **st)
                   for s, st in zip(table.columns, SERIES_STYLES)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)


def new_bar_figure(n_methods: int) -> tuple[Figure, Axes]:
    """A figure wide enough that method names and bar labels never overlap."""
    return plt.subplots(figsize=(1.5 * n_methods + 2.5, 4.2), layout="constrained")


def plot_performance(metrics: dict[str, dict], n_test: int, reference_metrics: dict[str, dict] | None = None,
                     intervals: dict[str, dict[str, tuple[float, float]]] | None = None, confidence: float = 0.95
                     ) -> Figure:
    """The methods in their colours, then the reference rows in grey, named '<r>\n(reference)'; with `intervals`
    (per method or reference row, per metric: low, high), each bar's bootstrap interval as an error bar."""
    rows = {**metrics, **(reference_metrics or {})}
    names = [*metrics, *(reference_label(r).replace(" (", "\n(") for r in reference_metrics or {})]
    table = pd.DataFrame({"accuracy": [m["accuracy"] for m in rows.values()],
                          "macro-F1": [m["macro_f1"] for m in rows.values()]}, index=names)
    colors = [method_color(m) for m in metrics] + [REFERENCE_COLORS[r] for r in reference_metrics or {}]
    bounds = None if intervals is None else np.array(
        [[intervals[name][metric] for metric in ("accuracy", "macro_f1")] for name in rows])  # (rows, 2, 2)
    fig, ax = new_bar_figure(len(table))
    draw_grouped_bars(ax, table, lambda v: f"{v:.3f}", colors=colors, intervals=bounds)
    title = f"Test accuracy and macro-F1 (n={n_test})"
    if intervals is not None:
        title += f", {confidence:.0%} bootstrap intervals"
    ax.set(title=title, xlabel="method or reference row", ylabel="score")
    return fig


def performance_intervals(preds: Mapping[str, pd.DataFrame], labels: Sequence[str], stats_params: StatsParams
                          ) -> dict[str, dict[str, tuple[float, float]]]:
    """Each row's (method's or reference row's) percentile bootstrap interval on its test predictions, by name
    (stats' resamples and seed). The report's bars and peftqa.studies.run_copy's tables both draw them here."""
    return {name: bootstrap_interval(frame["gold"].astype(str).tolist(),
                                     [p if isinstance(p, str) else None for p in frame["pred"]], labels,
                                     stats_params.n_bootstrap, stats_params.seed, stats_params.confidence)
            for name, frame in preds.items()}


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
        ax.plot(points["epoch"], points[column], linestyle=linestyle, marker="o", color=method_color(method))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def method_handles(methods: Sequence[str]) -> list[Line2D]:
    return [Line2D([], [], color=method_color(m), marker="o", label=m) for m in methods]


def plot_val_macro_f1(history: dict[str, pd.DataFrame], summary: dict[str, dict]) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    draw_method_lines(ax, history, "val_macro_f1")
    for method, s in summary.items():
        ax.plot(s["best_epoch"], s["best_val_macro_f1"], marker="*", markersize=16, color=method_color(method),
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
        ax.scatter(xi, yi, s=60, color=method_color(method), edgecolor="black", zorder=3)
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
        ax.plot(curve["coverage"], curve["accuracy"], marker=".", color=method_color(method), label=method)
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


def plot_seed_spread(runs: pd.DataFrame) -> Figure:
    """Test macro-F1 of every seed's run (dots) with the mean ± std (bar) per method."""
    methods = list(dict.fromkeys(runs["method"]))
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 3, 3.6), layout="constrained")
    for i, method in enumerate(methods):
        f1 = runs.loc[runs["method"] == method, "macro_f1"].to_numpy()
        jitter = np.linspace(-0.12, 0.12, len(f1)) if len(f1) > 1 else np.zeros(1)
        ax.scatter(i + jitter, f1, color=method_color(method), alpha=0.7, zorder=3)
        ax.errorbar(i + 0.3, f1.mean(), yerr=f1.std(ddof=1) if len(f1) > 1 else 0, fmt="o", color="black",
                    capsize=4, zorder=4)
    ax.set_xticks(range(len(methods)), methods)
    ax.set(title=f"Test macro-F1 per seed (black: mean ± std, {runs['seed'].nunique()} seeds)", ylabel="macro-F1")
    ax.grid(axis="y", alpha=0.3)
    return fig


def confusion_figure_name(method: str) -> str:
    return f"cm_{method}_test.png"


def build_figures(inputs: ReportInputs, labels: Sequence[str], stats_params: StatsParams) -> dict[str, Figure]:
    figures = {
        "performance_bar_test.png": plot_performance(
            inputs.metrics, inputs.n_test, inputs.reference_metrics,
            performance_intervals({**inputs.preds, **inputs.reference_preds}, labels, stats_params),
            stats_params.confidence),
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
