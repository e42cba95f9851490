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


def top_label_probability(probs: np.ndarray) -> np.ndarray:
    """The model's confidence in its answer: the largest label probability per item, (N, n_labels) -> (N,).
    `peftqa predict --abstain-below P` abstains where it is below P; the report's abstention table uses the same."""
    return np.asarray(probs, dtype=float).max(axis=1)


def abstention_curve(gold: Sequence[str], pred: Sequence[str | None], confidence: Sequence[float],
                     thresholds: Sequence[float], labels: Sequence[str]) -> pd.DataFrame:
    """Selective prediction: at threshold t the model answers the items with confidence >= t and abstains on the
    rest (as --abstain-below t). Per t: answered (items), coverage (share answered), and accuracy and macro_f1 over
    the answered items only (NaN when none is answered)."""
    gold, pred, confidence = list(gold), list(pred), np.asarray(confidence, dtype=float)
    if not len(gold) == len(pred) == len(confidence):
        raise ValueError(f"gold, pred and confidence differ in length ({len(gold)}, {len(pred)}, {len(confidence)})")
    if np.isnan(confidence).any():
        raise ValueError(f"{int(np.isnan(confidence).sum())} confidence value(s) are NaN: abstention needs label "
                         "probabilities (model.scoring: verbalizer)")
    rows = []
    for threshold in thresholds:
        answered = np.flatnonzero(confidence >= threshold)
        scores = (classification_metrics([gold[i] for i in answered], [pred[i] for i in answered], labels)
                  if answered.size else {"accuracy": float("nan"), "macro_f1": float("nan")})
        rows.append({"threshold": float(threshold), "answered": int(answered.size),
                     "coverage": answered.size / len(confidence) if len(confidence) else float("nan"),
                     "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]})
    return pd.DataFrame(rows, columns=["threshold", "answered", "coverage", "accuracy", "macro_f1"])
