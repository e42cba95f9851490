"""Classification metrics, written once for training (val each epoch) and evaluation (val and test).

Pure functions over label strings. A prediction of None (a generation that maps to no label) counts as
wrong for its gold class and is reported in `unmapped`; it is never mapped to a label.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

UNMAPPED = "unmapped"  # the confusion-matrix column for generations that map to no label


def confusion_counts(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> np.ndarray:
    """Counts (n_labels, n_labels + 1): rows are gold labels, columns predicted labels, then 'unmapped'."""
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels) + 1), dtype=np.int64)
    for g, p in zip(gold, pred, strict=True):
        if g not in index:
            raise ValueError(f"gold label {g!r} is not one of {list(labels)}")
        counts[index[g], index.get(p, len(labels)) if p is not None else len(labels)] += 1
    return counts


def classification_metrics(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """accuracy, macro_f1, and precision/recall/F1 per label (F1 is 0 where undefined, as sklearn's zero_division=0)."""
    counts = confusion_counts(gold, pred, labels)
    n = int(counts.sum())
    true_pos = np.diag(counts[:, : len(labels)]).astype(float)
    predicted = counts[:, : len(labels)].sum(axis=0).astype(float)  # column sums: how often each label was predicted
    actual = counts.sum(axis=1).astype(float)  # row sums: gold support
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    out = {"n": n, "accuracy": float(true_pos.sum() / n) if n else 0.0, "macro_f1": float(f1.mean())}
    for i, label in enumerate(labels):
        out[f"f1_{label}"] = float(f1[i])
        out[f"precision_{label}"] = float(precision[i])
        out[f"recall_{label}"] = float(recall[i])
    out["unmapped"] = int(counts[:, len(labels)].sum())
    return out


def confusion_frame(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> pd.DataFrame:
    """The confusion matrix in long form (gold, pred, count), every cell listed, 'unmapped' last."""
    counts = confusion_counts(gold, pred, labels)
    columns = [*labels, UNMAPPED]
    rows = [{"gold": g, "pred": columns[j], "count": int(counts[i, j])}
            for i, g in enumerate(labels) for j in range(len(columns))]
    return pd.DataFrame(rows, columns=["gold", "pred", "count"])


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """Mean, median and 95th percentile of per-example latencies, in seconds."""
    values = np.asarray(latencies_s, dtype=float)
    if values.size == 0:
        return {"latency_mean_s": float("nan"), "latency_p50_s": float("nan"), "latency_p95_s": float("nan")}
    return {
        "latency_mean_s": float(values.mean()),
        "latency_p50_s": float(np.percentile(values, 50)),
        "latency_p95_s": float(np.percentile(values, 95)),
    }
