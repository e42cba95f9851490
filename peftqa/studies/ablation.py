"""The ablation table of a sweep, from parsed DVC experiments (peftqa.studies.experiments): one row per experiment with
the swept params' values and the val and test metrics evaluate@<method> wrote, the row with the best val metric marked
`chosen`, rows whose other params differ from the majority flagged; then its markdown and its figure. Pure functions
of the records: `peftqa ablation` reads the experiments and writes the files."""
from __future__ import annotations

import difflib
import json
from collections import Counter
from typing import Literal, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display; must come before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from peftqa.catalog import METRICS  # noqa: E402
from peftqa.errors import PeftqaError  # noqa: E402
from peftqa.report.palette import method_color  # noqa: E402
from peftqa.studies.experiments import ExpRecord  # noqa: E402

METRIC_LABELS = {"macro_f1": "macro-F1", "accuracy": "accuracy"}  # how the sentence and the figure name a metric
LOG_X_SPAN = 8  # positive numeric values spanning at least this ratio are plotted on a log x axis (ranks 2..64)


def metrics_path(method: str, split: str) -> str:
    """Where evaluate@<method> writes a split's metrics, as `dvc exp show` names the file (relative to the root)."""
    return str(METRICS.path(method=method, split=split))


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


# -----------------------------------------------------------------------------
# the ablation table: pure functions of the parsed records


def check_param(records: Sequence[ExpRecord], param: str) -> None:
    """Raise a PeftqaError when `param` is no params key of any row, or when every row sets it to one value."""
    known = sorted({key for record in records for key in record.params})
    if param not in known:
        close = difflib.get_close_matches(param, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; params keys look like {', '.join(known[:3])}"
        raise PeftqaError(f"{param} is not a param of any experiment in `dvc exp show`{hint}")
    values = {json.dumps(record.params[param], sort_keys=True) for record in records if param in record.params}
    if len(values) < 2:
        raise PeftqaError(f"no experiment in `dvc exp show` sets {param} (every row has {param}={next(iter(values))}); "
                          f"run e.g. `dvc exp run -S {param}={example_value(json.loads(next(iter(values))))}` first")


def example_value(value: object) -> str:
    """Another value of a param, for the hint in an error message: double a number, negate a flag."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, (int, float)):
        return f"{value * 2:g}" if value else "1"
    return "<value>"


def confounding_keys(records: Sequence[ExpRecord], param: str | Sequence[str]) -> list[list[str]]:
    """Per record, the params keys (other than the swept ones) whose value differs from the most common value across
    records.

    A tie goes to the value seen first, and `dvc exp show` lists a baseline before its experiments, so in a two-row
    table the experiment (not the baseline) is the one flagged.
    """
    keys = sorted({key for record in records for key in record.params} - set(as_list(param)))
    absent = "<absent>"
    majority = {key: Counter(json.dumps(r.params.get(key, absent), sort_keys=True)
                             for r in records).most_common(1)[0][0]
                for key in keys}
    return [[key for key in keys if json.dumps(r.params.get(key, absent), sort_keys=True) != majority[key]]
            for r in records]


def value_sort_key(value: object) -> tuple:
    """Numbers in numeric order before everything else (strings, booleans) in text order."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def metric_columns(metric: str) -> list[str]:
    """The metric columns of the table: the selection metric on val, then test accuracy, macro-F1, `metric` and n."""
    return list(dict.fromkeys([f"val_{metric}", "test_accuracy", "test_macro_f1", f"test_{metric}", "test_n"]))


def as_list(param: str | Sequence[str]) -> list[str]:
    return [param] if isinstance(param, str) else list(param)


def other_methods_only(keys: Sequence[str], method: str) -> bool:
    """True when every key is in another method's peft.<m> section: such a row never retrains `method`."""
    return bool(keys) and all(key.startswith("peft.") and key.split(".")[1] != method for key in keys)


def build_ablation(records: Sequence[ExpRecord], param: str | Sequence[str], method: str, metric: str = "macro_f1",
                   select_on: Literal["val", "test"] = "val") -> tuple[pd.DataFrame, list[str]]:
    """The ablation table sorted by the swept values (the first param slowest), with `chosen` marking the best
    `select_on` metric, and one "<name>: <why>" note per record left out (a param not set, only other methods'
    params changed, or a metrics file or key missing).

    Ties in the selection go to the row first in sorted order, i.e. the smallest swept value (the cheaper model).
    """
    params = as_list(param)
    for key in params:
        check_param(records, key)
    confounds = confounding_keys(records, params)
    paths = {split: metrics_path(method, split) for split in ("val", "test")}
    rows, skipped = [], []
    for record, other_changes in zip(records, confounds):
        unset = [key for key in params if key not in record.params]
        if unset:
            skipped.append(f"{record.name}: does not set {', '.join(unset)}")
            continue
        if other_methods_only(other_changes, method):
            skipped.append(f"{record.name}: changes only {', '.join(other_changes)}, which {method} does not read")
            continue
        split_metrics = {split: record.metrics.get(path) for split, path in paths.items()}
        missing = [f"{paths[split]}" + ("" if split_metrics[split] is None else f" key '{metric}'")
                   for split in ("val", "test") if metric not in (split_metrics[split] or {})]
        if missing:
            skipped.append(f"{record.name}: no {' or '.join(missing)}")
            continue
        row = {"experiment": record.name, "kind": record.kind, "rev": record.rev,
               **{key: record.params[key] for key in params}}
        for column in metric_columns(metric):
            split, key = column.split("_", 1)
            row[column] = split_metrics[split].get(key, np.nan)
        rows.append({**row, "chosen": False, "other_changes": ", ".join(other_changes)})
    if not rows:
        raise PeftqaError(f"no experiment that sets {', '.join(params)} has {metrics_path(method, 'val')} and "
                          f"{metrics_path(method, 'test')} with '{metric}' ({len(skipped)} skipped: "
                          f"{'; '.join(skipped[:3])}); did evaluate@{method} run in these experiments?")
    order = sorted(range(len(rows)), key=lambda i: (*[value_sort_key(rows[i][key]) for key in params], i))
    table = pd.DataFrame([rows[i] for i in order]).reset_index(drop=True)
    scores = pd.to_numeric(table[f"{select_on}_{metric}"], errors="coerce")
    if scores.notna().any():
        table.loc[scores.idxmax(), "chosen"] = True  # idxmax returns the first of tied maxima
    return table, skipped


# -----------------------------------------------------------------------------
# reports: markdown for people, CSV for code, one figure


def format_value(value: object, width: int = 40) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def chosen_sentence(table: pd.DataFrame, param: str | Sequence[str], metric: str, select_on: str) -> str:
    """e.g. "chosen by val macro-F1: r=8 (test macro-F1 0.512)", with the caveats a reader needs."""
    chosen = table[table["chosen"]]
    if chosen.empty:
        return f"no row has a {select_on} {metric_label(metric)}, so none is chosen."
    row = chosen.iloc[0]
    report_on = "test" if select_on == "val" else "val"
    values = ", ".join(f"{key.split('.')[-1]}={format_value(row[key])}" for key in as_list(param))
    sentence = (f"chosen by {select_on} {metric_label(metric)}: {values} "
                f"({report_on} {metric_label(metric)} {row[f'{report_on}_{metric}']:.3f})")
    if select_on == "test":
        sentence += "; chosen on test, so its test score is optimistic"
    if row["other_changes"]:
        sentence += f"; note that this experiment also changes {row['other_changes']}"
    return sentence + "."


def format_markdown(table: pd.DataFrame, param: str | Sequence[str], metric: str, select_on: str,
                    skipped: Sequence[str]) -> str:
    """The table (metrics to 3 decimals, the CSV keeps full precision), the chosen row, then the rows left out."""
    numbers = [column for column in metric_columns(metric) if column in table and column != "test_n"]
    shown = table.drop(columns=["kind"]).assign(
        **{key: table[key].map(format_value) for key in as_list(param)},
        **{column: pd.to_numeric(table[column], errors="coerce").map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
           for column in numbers},
        chosen=table["chosen"].map({True: "yes", False: ""}))
    # every cell is text already: numparse would turn a swept lr of 0.0001 back into a float and print it as 0.000
    lines = [shown.to_markdown(index=False, disable_numparse=True), "",
             chosen_sentence(table, param, metric, select_on)]
    if table["other_changes"].astype(bool).any():
        lines.append("other_changes: params that differ from most rows besides the swept one; "
                     "those rows do not isolate its effect.")
    if skipped:
        lines.append(f"{len(skipped)} skipped: " + "; ".join(skipped) + ".")
    return "\n".join(lines) + "\n"


def plot_ablation(table: pd.DataFrame, param: str | Sequence[str], metric: str, method: str) -> Figure:
    """Val and test `metric` against the (first) swept value: points per experiment, a line through the per-value
    means, one pair of lines per combination of the other swept params. Text or boolean values go on a categorical
    axis; positive numbers spanning >= LOG_X_SPAN x on a log axis."""
    first, rest = as_list(param)[0], as_list(param)[1:]
    values = table[first].tolist()
    numeric = all(value_sort_key(v)[0] == 0 for v in values)
    if numeric:
        x = np.array(values, dtype=float)
    else:
        categories = list(dict.fromkeys(values))  # already in sorted order
        x = np.array([categories.index(v) for v in values], dtype=float)
    combos = table[rest].apply(lambda r: ", ".join(f"{k.split('.')[-1]}={format_value(v, 16)}" for k, v in r.items()),
                               axis=1) if rest else pd.Series("", index=table.index)
    palette = [method_color(method)] + [f"C{i}" for i in range(10)]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    for k, combo in enumerate(dict.fromkeys(combos)):
        rows = (combos == combo).to_numpy()
        color, suffix = palette[k % len(palette)], f" ({combo})" if combo else ""
        for split, style, marker in (("test", "-", "o"), ("val", "--", "s")):
            y = pd.to_numeric(table[f"{split}_{metric}"], errors="coerce").to_numpy()[rows]
            means = pd.Series(y).groupby(x[rows]).mean()
            ax.plot(means.index, means.to_numpy(), style, color=color, alpha=1.0 if split == "test" else 0.6)
            ax.plot(x[rows], y, marker, linestyle="none", color=color, alpha=1.0 if split == "test" else 0.6,
                    label=f"{split} {metric_label(metric)}{suffix}")
    chosen = table.index[table["chosen"]]
    if len(chosen):
        i = chosen[0]
        ax.plot(x[i], table.loc[i, f"val_{metric}"], "o", markersize=14, markerfacecolor="none", color="black",
                label="chosen")
    if numeric and x.min() > 0 and x.max() / x.min() >= LOG_X_SPAN:
        ax.set_xscale("log")
    if numeric:
        ticks = sorted(set(x.tolist()))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    else:
        ax.set_xticks(range(len(categories)), [format_value(c, 20) for c in categories],
                      rotation=20 if any(len(str(c)) > 8 for c in categories) else 0)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set(title=f"{method}: {metric_label(metric)} against {', '.join(as_list(param))}", xlabel=first,
           ylabel=metric_label(metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small" if rest else None)
    return fig


