"""Abstention in the report: accuracy and coverage as the `--abstain-below` threshold moves.

From the methods' p_yes (yes/no labels only) this computes the abstention curves on val and test, picks the worked
example's threshold on val (never on test), and renders the report's abstention section with its table; the
selective-accuracy figure draws the same curves over every distinct threshold.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from peftqa.evaluation.metrics import abstention_curve, top_label_probability
from peftqa.report.tables import markdown_table

ABSTAIN_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9)  # --abstain-below P values tabulated; 0.5 answers all
ABSTAIN_TARGET_ACCURACY = 0.7  # the report's worked example of choosing P on val: the lowest P reaching this...
ABSTAIN_MIN_ANSWERED = 10  # ...on at least this many answered val items (below that one item moves accuracy by >0.1)


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
