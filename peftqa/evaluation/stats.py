"""Paired tests of each method against the baseline on the same items: McNemar's exact test on accuracy, a paired
bootstrap on accuracy and macro-F1 (CIs of the difference), Holm's adjustment, and the smallest difference McNemar
can detect at a given size. Pure functions over prediction frames; stage stats reads and writes the files.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binom

from peftqa.catalog import PREDS, REFERENCE_CHOICES, REFERENCE_PREDS, STATS_COLUMNS, Output
from peftqa.errors import PeftqaError
from peftqa.evaluation.metrics import classification_metrics
from peftqa.params import REFERENCES, StatsParams

BOOTSTRAP_METRICS = ("accuracy", "macro_f1")  # what the paired bootstrap reports, in this row order
UNMAPPED_CODE = -1  # label code of a prediction that is empty, NaN or not a label: never equal to a gold code


DETECT_TOLERANCE = 1e-6  # mcnemar_detectable_difference's bisection stops at this width


def mcnemar_exact(correct_reference: Sequence[bool], correct_method: Sequence[bool]) -> tuple[int, int, float]:
    """Exact two-sided McNemar test on per-item correctness: (b, c, p).

    b counts the items the reference got wrong and the method right (fixes), c the reverse (regressions). Under H0 the
    discordant items split evenly, so p = min(1, 2 * P(X <= min(b, c))) with X ~ Bin(b + c, 1/2); p = 1 when b + c = 0.
    The exact form is used because b + c is small on an 89-item test set, where the chi-square approximation is poor.
    """
    reference = np.asarray(correct_reference, dtype=bool)
    method = np.asarray(correct_method, dtype=bool)
    if reference.shape != method.shape:
        raise ValueError(f"correctness vectors differ in length: {reference.shape} vs {method.shape}")
    b = int(np.sum(~reference & method))
    c = int(np.sum(reference & ~method))
    if b + c == 0:
        return b, c, 1.0
    return b, c, float(min(1.0, 2.0 * binom.cdf(min(b, c), b + c, 0.5)))


def mcnemar_exact_floor(alpha: float) -> int:
    """The fewest discordant items for which the two-sided exact McNemar test can reach p <= alpha: all of them one
    way, b = k and c = 0, gives p = 2 * 0.5**k."""
    k = 1
    while 2 * 0.5**k > alpha:
        k += 1
    return k


def holm_family_size(table: pd.DataFrame) -> int:
    """How many comparisons one Holm family of a stats table holds: those of one test on one metric (every family the
    same size), counted on McNemar's rows."""
    return int(((table["test"] == "mcnemar_exact") & (table["metric"] == "accuracy")).sum())


def mcnemar_exact_power(n_items: int, discordance: float, delta: float, alpha: float = 0.05) -> float:
    """The power of the two-sided exact McNemar test (mcnemar_exact) at `alpha`, on n_items paired items, of which
    the discordant ones number D ~ Bin(n, ψ), ψ = `discordance`, and among them the fixes b ~ Bin(D, (ψ + δ) / 2ψ):
    an accuracy difference δ = (b - c) / n in expectation. Summed exactly over every D and b."""
    d = np.arange(n_items + 1)
    # per D, the largest m with p = 2 P(X <= m) <= alpha, X ~ Bin(D, 1/2) (-1: no split of D items is significant)
    m = binom.ppf(alpha / 2, d, 0.5).astype(int)
    m = np.where(2 * binom.cdf(m, d, 0.5) <= alpha, m, m - 1)
    q = (discordance + delta) / (2 * discordance)
    reject = np.where(m >= 0, binom.cdf(m, d, q) + binom.sf(d - m - 1, d, q), 0.0)
    return float(binom.pmf(d, n_items, discordance) @ reject)


def mcnemar_detectable_difference(n_items: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest accuracy difference δ = (b - c) / n that the two-sided exact McNemar test at `alpha` detects with
    `power`, on n_items paired items of which a share `discordance` (ψ = (b + c) / n) is discordant: the δ where
    mcnemar_exact_power reaches `power`, by bisection to 1e-6 (it grows with δ). NaN when ψ = 0 (no discordant item
    to estimate from); inf when no δ <= ψ reaches the power (|b - c| can be at most b + c). Connor's (1987) normal
    approximation, which this replaced, is up to 0.017 lower (optimistic) at n = 89.
    """
    if not 0 <= discordance <= 1 or n_items < 1:
        raise ValueError(f"need n_items >= 1 and a discordance in [0, 1], got {n_items} and {discordance}")
    if discordance == 0:
        return float("nan")
    if mcnemar_exact_power(n_items, discordance, discordance, alpha) < power:
        return math.inf
    low, high = 0.0, discordance
    while high - low > DETECT_TOLERANCE:
        middle = (low + high) / 2
        low, high = (low, middle) if mcnemar_exact_power(n_items, discordance, middle, alpha) >= power else (middle,
                                                                                                             high)
    return high


def encode_labels(values: Sequence[str | None], labels: Sequence[str]) -> np.ndarray:
    """Integer codes (n,) in the order of `labels`; None, NaN and unknown strings become UNMAPPED_CODE
    (always wrong)."""
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(value, UNMAPPED_CODE) for value in values], dtype=np.int64)


def resample_weights(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_items): how often each item is drawn in each bootstrap resample (rows sum to n_items).

    Counting draws instead of keeping indices lets every metric of every resample be one matrix product, and sharing
    one matrix between the two methods is what makes the bootstrap paired.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_items, size=(n_resamples, n_items))  # (R, n) item index drawn at each position
    flat = (draws + n_items * np.arange(n_resamples)[:, None]).ravel()  # unique bin per (resample, item)
    return np.bincount(flat, minlength=n_resamples * n_items).reshape(n_resamples, n_items).astype(float)


def resample_metrics(weights: np.ndarray, gold_codes: np.ndarray, pred_codes: np.ndarray,
                     n_labels: int) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 (each of shape (R,)) of every weighted resample; `weights` is (R, n).

    A vectorised twin of classification_metrics, kept only because 5000 Python-level calls per comparison are too slow;
    tests hold it equal to that function. Per label, F1 = 2TP / (predicted + actual), which equals 2PR / (P + R) and is
    0 where that is undefined (sklearn's zero_division=0); macro-F1 averages over all `n_labels`, as there.
    """
    label_ids = np.arange(n_labels)
    gold_onehot = (gold_codes[:, None] == label_ids).astype(float)  # (n, L)
    pred_onehot = (pred_codes[:, None] == label_ids).astype(float)  # (n, L); an unmapped prediction is an all-zero row
    true_pos = weights @ (gold_onehot * pred_onehot)  # (R, L)
    support = weights @ (gold_onehot + pred_onehot)  # (R, L): gold count + predicted count
    f1 = np.divide(2 * true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    accuracy = weights @ (gold_codes == pred_codes).astype(float) / weights.sum(axis=1)
    return {"accuracy": accuracy, "macro_f1": f1.mean(axis=1)}


def bootstrap_p_value(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value for H0: Δ = 0, as min(1, 2 (k + 1) / (R + 1)), k the smaller of the counts of
    Δ* <= 0 and of Δ* >= 0 among the R resamples.

    Up to that +1 and quantile interpolation it is the smallest α at which the equal-tailed (1 - α) percentile
    interval excludes 0, so it agrees with the reported CI. The +1 counts the observed data as one more resample
    (Davison & Hinkley): no resample on the other side of 0 gives 2 / (R + 1), never 0. Δ* == 0 counts on both sides,
    which makes ties conservative (identical predictions give p = 1).
    """
    k = min(int(np.sum(deltas <= 0)), int(np.sum(deltas >= 0)))
    return float(min(1.0, 2.0 * (k + 1) / (len(deltas) + 1)))


@dataclass(frozen=True)
class PairedEffect:
    """One metric of one paired comparison: the point difference (method minus reference), its CI and p-value."""
    effect: float
    ci_low: float
    ci_high: float
    p_value: float


def paired_bootstrap(gold: Sequence[str], pred_reference: Sequence[str | None], pred_method: Sequence[str | None],
                     labels: Sequence[str], n_resamples: int, seed: int, confidence: float) -> dict[str, PairedEffect]:
    """Paired bootstrap of Δaccuracy and Δmacro-F1 (method minus reference), keyed by metric.

    Items are resampled with replacement, the same items for both methods, so the item-to-item variation the methods
    share cancels out of Δ*. The effect is the difference on the full set (classification_metrics, the numbers in
    metrics_test.json); the CI is the percentile interval of Δ* at `confidence`; the p-value is bootstrap_p_value.
    """
    gold_codes = encode_labels(gold, labels)
    if np.any(gold_codes == UNMAPPED_CODE):
        raise ValueError(f"a gold label is not one of {list(labels)}")
    weights = resample_weights(len(gold_codes), n_resamples, seed)
    resampled_reference = resample_metrics(weights, gold_codes, encode_labels(pred_reference, labels), len(labels))
    resampled_method = resample_metrics(weights, gold_codes, encode_labels(pred_method, labels), len(labels))
    point_reference = classification_metrics(gold, pred_reference, labels)
    point_method = classification_metrics(gold, pred_method, labels)
    tail = (1.0 - confidence) / 2
    results = {}
    for metric in BOOTSTRAP_METRICS:
        deltas = resampled_method[metric] - resampled_reference[metric]  # (R,)
        ci_low, ci_high = np.quantile(deltas, [tail, 1.0 - tail])
        results[metric] = PairedEffect(effect=point_method[metric] - point_reference[metric], ci_low=float(ci_low),
                                       ci_high=float(ci_high), p_value=bootstrap_p_value(deltas))
    return results


def bootstrap_interval(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str], n_resamples: int,
                       seed: int, confidence: float) -> dict[str, tuple[float, float]]:
    """One method's percentile bootstrap interval of accuracy and macro-F1 at `confidence`, keyed by metric: the
    uncertainty of its own score on these items (the performance bars'), not of a difference (paired_bootstrap's)."""
    gold_codes = encode_labels(gold, labels)
    if np.any(gold_codes == UNMAPPED_CODE):
        raise ValueError(f"a gold label is not one of {list(labels)}")
    resampled = resample_metrics(resample_weights(len(gold_codes), n_resamples, seed), gold_codes,
                                 encode_labels(pred, labels), len(labels))
    tail = (1.0 - confidence) / 2
    return {metric: tuple(float(q) for q in np.quantile(resampled[metric], [tail, 1.0 - tail]))
            for metric in BOOTSTRAP_METRICS}


ADD_ONE_NOTE = "a bootstrap p-value is 2 (k + 1) / (R + 1)"  # in the stats table's prose since the add-one mend


def with_add_one_bootstrap_p(table: pd.DataFrame, n_resamples: int) -> pd.DataFrame:
    """A stats table written before bootstrap_p_value counted the data as a resample (its p = 2k/R, so a 0 where no
    resample fell beyond 0), with its bootstrap p-values as bootstrap_p_value now gives them: 2 (k + 1) / (R + 1),
    k recovered exactly from 2k/R, and Holm re-applied within each (test, metric) family as the stats stage does.
    McNemar's rows are unchanged."""
    table = table.copy()
    boot = table["test"] == "paired_bootstrap"
    k = np.round(table.loc[boot, "p_value"] * n_resamples / 2)
    table.loc[boot, "p_value"] = np.minimum(1.0, 2 * (k + 1) / (n_resamples + 1))
    table["p_holm"] = table.groupby(["test", "metric"])["p_value"].transform(lambda p: holm_adjust(p.tolist()))
    return table


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order: monotone in the raw p-values and capped at 1.

    The k-th smallest of m p-values is scaled by (m - k + 1), then a running maximum keeps the order; it controls the
    family-wise error rate with no assumption on how the comparisons depend on each other (they share items here).
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted.tolist()


def _index_by_pmid(frame: pd.DataFrame, method: str, labels: Sequence[str]) -> pd.DataFrame:
    """The predictions indexed by PMID (as a string), after the checks a paired test relies on."""
    path = preds_path(method)
    missing = {"pmid", "gold", "pred"} - set(frame.columns)
    if missing:
        raise PeftqaError(f"{path}: missing columns {sorted(missing)}; "
                          "expected pmid, gold, pred (as stages.evaluate writes them)")
    if frame.empty:
        raise PeftqaError(f"{path}: no predictions; re-run {producing_stage(method)}")
    pmids = frame["pmid"].astype(str)
    if pmids.duplicated().any():
        raise PeftqaError(f"{path}: PMID {pmids[pmids.duplicated()].iloc[0]} is listed twice; each test item once")
    unknown = sorted(set(frame["gold"].astype(str)) - set(labels))
    if unknown:
        raise PeftqaError(f"{path}: gold labels {unknown} are not in prepare.labels {list(labels)}; "
                          "the predictions are stale, re-run `dvc repro`")
    return frame.assign(pmid=pmids).set_index("pmid")


def align_predictions(preds: Mapping[str, pd.DataFrame], baseline: str,
                      labels: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Every method's predictions indexed by PMID in the baseline's order.

    Paired tests compare two predictions of the same item, so every file must hold the same PMIDs with the same gold
    labels; a mismatch (e.g. one method evaluated before the split changed) raises a PeftqaError naming the file.
    """
    reference = _index_by_pmid(preds[baseline], baseline, labels)
    aligned = {baseline: reference}
    for method, frame in preds.items():
        if method == baseline:
            continue
        indexed = _index_by_pmid(frame, method, labels)
        only_one = reference.index.symmetric_difference(indexed.index)
        if len(only_one):
            raise PeftqaError(f"{preds_path(method)} and {preds_path(baseline)} cover different test items: "
                              f"{len(only_one)} PMIDs are in only one of them (e.g. {', '.join(only_one[:3])}); "
                              "paired tests need the same items, re-run `dvc repro` so both are evaluated on one split")
        indexed = indexed.loc[reference.index]
        differ = indexed.index[indexed["gold"].astype(str) != reference["gold"].astype(str)]
        if len(differ):
            raise PeftqaError(f"{preds_path(method)}: gold labels differ from {preds_path(baseline)} for "
                              f"{len(differ)} PMIDs (e.g. {', '.join(differ[:3])}); re-run `dvc repro`")
        aligned[method] = indexed
    return aligned


def comparison_pairs(methods: Sequence[str], baseline: str, references: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(method, reference) pairs: every tuned method vs the baseline, then each pair of tuned methods
    (later vs earlier), then every method (the baseline included) vs each reference row, method by method."""
    tuned = [method for method in methods if method != baseline]
    pairwise = [(later, earlier) for earlier, later in itertools.combinations(tuned, 2)]
    against_references = [(method, reference) for method in methods for reference in references]
    return [(method, baseline) for method in tuned] + pairwise + against_references


def compare_pair(gold: Sequence[str], pred_reference: Sequence[str | None], pred_method: Sequence[str | None],
                 labels: Sequence[str], stats_params: StatsParams) -> list[dict]:
    """The three rows of one comparison (McNemar on accuracy, bootstrap on accuracy and macro-F1), without p_holm."""
    gold_codes = encode_labels(gold, labels)
    b, c, p_mcnemar = mcnemar_exact(encode_labels(pred_reference, labels) == gold_codes,
                                    encode_labels(pred_method, labels) == gold_codes)
    bootstrap = paired_bootstrap(gold, pred_reference, pred_method, labels, n_resamples=stats_params.n_bootstrap,
                                 seed=stats_params.seed, confidence=stats_params.confidence)
    shared = {"n": len(gold), "b": b, "c": c}  # b, c repeated on the bootstrap rows for reference
    rows = [{"test": "mcnemar_exact", "metric": "accuracy", "effect": bootstrap["accuracy"].effect,
             "ci_low": np.nan, "ci_high": np.nan, "p_value": p_mcnemar, **shared}]
    for metric, result in bootstrap.items():
        rows.append({"test": "paired_bootstrap", "metric": metric, "effect": result.effect, "ci_low": result.ci_low,
                     "ci_high": result.ci_high, "p_value": result.p_value, **shared})
    return rows


def compare_methods(preds: Mapping[str, pd.DataFrame], methods: Sequence[str], baseline: str, labels: Sequence[str],
                    stats_params: StatsParams, references: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The rows of stats_eval_test.csv (columns STATS_COLUMNS), Holm-adjusted within each (test, metric).

    `references` maps a reference row's name to its test predictions; each method is also compared against each.
    Every comparison uses the same bootstrap seed, so all of them resample the same items (common random numbers):
    differences between comparisons are not blurred by differences between resample draws.
    """
    references = dict(references or {})
    aligned = align_predictions({**{method: preds[method] for method in methods}, **references}, baseline, labels)
    gold = aligned[baseline]["gold"].astype(str).tolist()
    rows = []
    for method, reference in comparison_pairs(methods, baseline, list(references)):
        for row in compare_pair(gold, aligned[reference]["pred"].tolist(), aligned[method]["pred"].tolist(), labels,
                                stats_params):
            rows.append({"method": method, "reference": reference, **row})
    table = pd.DataFrame(rows, columns=[column for column in STATS_COLUMNS if column != "p_holm"])
    table["p_holm"] = table.groupby(["test", "metric"])["p_value"].transform(lambda p: holm_adjust(p.tolist()))
    return table[STATS_COLUMNS]


def format_markdown(table: pd.DataFrame, stats_params: StatsParams) -> str:
    """The stats table as markdown, rounded for reading (the CSV keeps full precision), with what each column means."""
    def cell(column: str, value: object) -> str:
        if isinstance(value, float) and np.isnan(value):
            return ""
        if column in ("effect", "ci_low", "ci_high"):
            return f"{value:+.4f}"
        if column in ("p_value", "p_holm"):
            return f"{value:.4g}"
        return str(value)

    lines = ["# Paired tests on the test split", "",
             "effect: method minus reference. b: items the reference got wrong and the method right (fixes); "
             "c: the reverse (regressions). A reference is the baseline, an earlier method, or a reference row "
             f"of the references stage ({', '.join(REFERENCES)}).",
             f"CI: {stats_params.confidence:.0%} percentile interval of a paired bootstrap with "
             f"R = {stats_params.n_bootstrap} resamples (seed {stats_params.seed}); {ADD_ONE_NOTE}, k the "
             f"resamples on the smaller side of 0, so it is at least "
             f"{2 / (stats_params.n_bootstrap + 1):.2g}.",
             "p_holm: Holm-adjusted within each (test, metric) family: across every comparison of this table with "
             "the same test and metric.", "",
             "| " + " | ".join(STATS_COLUMNS) + " |", "|" + "---|" * len(STATS_COLUMNS)]
    for row in table[STATS_COLUMNS].itertuples(index=False):
        lines.append("| " + " | ".join(cell(column, value) for column, value in zip(STATS_COLUMNS, row)) + " |")
    return "\n".join(lines) + "\n"


def summarize_comparisons(table: pd.DataFrame) -> dict[str, dict[str, float | int]]:
    """stats_summary.json: per '<method>_vs_<reference>', the McNemar counts and p, and each bootstrap Δ with CI and p.

    The numbers are read from `table`, so the DVC metrics and the CSV cannot disagree. p-values are unadjusted; the
    Holm-adjusted ones are in the CSV.
    """
    summary = {}
    for (method, reference), rows in table.groupby(["method", "reference"], sort=False):
        by_test = rows.set_index(["test", "metric"])
        mcnemar = by_test.loc[("mcnemar_exact", "accuracy")]
        entry = {"mcnemar_b": int(mcnemar["b"]), "mcnemar_c": int(mcnemar["c"]), "mcnemar_p": float(mcnemar["p_value"])}
        for metric in BOOTSTRAP_METRICS:
            row = by_test.loc[("paired_bootstrap", metric)]
            entry[f"delta_{metric}"] = float(row["effect"])
            entry[f"delta_{metric}_ci_low"] = float(row["ci_low"])
            entry[f"delta_{metric}_ci_high"] = float(row["ci_high"])
            entry[f"delta_{metric}_p"] = float(row["p_value"])
        summary[f"{method}_vs_{reference}"] = entry
    return summary


def preds_output(name: str) -> tuple[Output, dict[str, str]]:
    """The catalog's output, and its fields, of the test predictions of a method (evaluate@<name>) or of a reference
    row (the references stage). Reference names (params.REFERENCES) are never method names."""
    if name in REFERENCES:
        return REFERENCE_PREDS, {"reference": name, "split": "test"}
    return PREDS, {"method": name, "split": "test"}


def preds_path(name: str) -> Path:
    """Where preds_output(name) is: error messages name this file."""
    output, fields = preds_output(name)
    return output.path(**fields)


def producing_stage(name: str) -> str:
    """The DVC stage that writes preds_path(name), for the hint in an error message."""
    return "references" if name in REFERENCES else f"evaluate@{name}"


def defined_references(names: Sequence[str], choices: Mapping[str, dict]) -> list[str]:
    """The references of `names` (params' references.names) that the references stage wrote a row for, in that
    order: choices.json gives each a choice record, or {"not_defined": why} (base_calibrated on an encoder run). A name
    it does not list is stale output."""
    missing = [name for name in names if name not in choices]
    if missing:
        raise PeftqaError(f"{REFERENCE_CHOICES.path()} lists no {missing} of references.names {list(names)}: it is "
                          "stale, run `dvc repro references`")
    return [name for name in names if "not_defined" not in choices[name]]
