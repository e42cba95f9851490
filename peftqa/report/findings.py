"""The report's findings prose: what the numbers allow us to say, and nothing more.

Each method against the baseline (describe_method: 'better' or 'worse' only when the bootstrap CI of Δmacro-F1
excludes 0, with McNemar's fixes and regressions on accuracy), every method against each reference row, whether each
trained method learned more than the label prior (against base_calibrated, where that row is defined), a warning
when a method has collapsed onto one label, and the smallest accuracy difference the test set can detect. The
numbers come from the stats stage's rows (stats_row), which this module looks up and never recomputes.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from peftqa.catalog import STATS
from peftqa.errors import PeftqaError
from peftqa.evaluation.metrics import UNMAPPED
from peftqa.evaluation.stats import mcnemar_detectable_difference
from peftqa.params import BASE_CALIBRATED
from peftqa.report.tables import comparison_name, format_p, p_clause, reference_label

COLLAPSE_SHARE = 0.95  # a method giving one label to more than this share of test items has collapsed to it
DETECT_ALPHA = 0.05  # the smallest detectable difference: two-sided McNemar at this level...
DETECT_POWER = 0.80  # ...with this power


def stats_row(stats: pd.DataFrame, method: str, reference: str, test: str, metric: str) -> pd.Series:
    """The one stats row for a comparison; its absence means the stats stage ran on another methods list."""
    rows = stats[(stats["method"] == method) & (stats["reference"] == reference)
                 & (stats["test"] == test) & (stats["metric"] == metric)]
    if len(rows) != 1:
        raise PeftqaError(f"report: {STATS.path()} has {len(rows)} rows for {method} vs {reference} ({test}, "
                          f"{metric}), expected 1; it is stale. Run `dvc repro`.")
    return rows.iloc[0]


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


def judged_against_prior(method: str, references: Sequence[str]) -> bool:
    """Whether describe_against_prior speaks of `method` (then describe_against_references leaves base_calibrated
    to it): every method but base, the model base_calibrated is built from, when that row exists."""
    return BASE_CALIBRATED in references and method != "base"


def describe_against_references(method: str, references: Sequence[str], stats: pd.DataFrame,
                                confidence: float) -> str:
    """One sentence on `method` vs each reference row: 'beats' / 'is worse than' only when the paired bootstrap CI of
    Δmacro-F1 excludes 0, otherwise 'is indistinguishable from'; '' without reference rows. base_calibrated is left
    to describe_against_prior where that one speaks (judged_against_prior)."""
    clauses = []
    for reference in references:
        if reference == BASE_CALIBRATED and judged_against_prior(method, references):
            continue
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


def describe_against_prior(method: str, references: Sequence[str], stats: pd.DataFrame, confidence: float) -> str:
    """Did `method` learn more than the label prior? Its paired bootstrap Δmacro-F1 against base_calibrated (the
    zero-shot base with one val-chosen offset: the best a model does by learning the prior alone) says 'yes' or 'no'
    only when its CI excludes 0, and 'undecidable at this size' otherwise. '' without that row, and for base itself,
    the model base_calibrated is built from."""
    if not judged_against_prior(method, references):
        return ""
    boot = stats_row(stats, method, BASE_CALIBRATED, "paired_bootstrap", "macro_f1")
    label = reference_label(BASE_CALIBRATED)
    numbers = (f"Δ macro-F1 {boot.effect:+.3f}, {confidence:.0%} CI [{boot.ci_low:+.3f}, {boot.ci_high:+.3f}], "
               f"{p_clause(boot.p_value, boot.p_holm)}")
    if boot.ci_low > 0:
        answer = f"yes: {method} beats {label} ({numbers})"
    elif boot.ci_high < 0:
        answer = f"no: {method} is worse than {label} ({numbers}), which only moves the zero-shot threshold"
    else:
        answer = (f"undecidable at this size (n={int(boot.n)}): the CI of {method} against {label} contains 0 "
                  f"({numbers})")
    if (boot.ci_low > 0 or boot.ci_high < 0) and boot.p_holm >= 1 - confidence:
        answer += ", suggestive only after Holm correction"
    return f" Learned more than the label prior? {answer}."


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
            f"two-sided exact McNemar test at α = {DETECT_ALPHA:.2f} detects with {DETECT_POWER:.0%} power is "
            f"{format_detectable(mean_delta)}, at the discordance rate (b+c)/n = {mean_rate:.3f}, the mean over "
            f"{which} (per comparison, (b+c)/n → smallest difference: {each}). It is the accuracy difference δ at "
            "which the exact test's power, summed over every count and split of the discordant items at the "
            "discordance ψ, reaches that level. "
            "A smaller true difference would most often go undetected, so 'indistinguishable' does not mean 'equal'.")
    if any(math.isinf(delta) for delta in [mean_delta, *deltas.values()]):
        text += (" 'none': even a method winning every discordant item would fall short of that power at this "
                 "test size.")
    return text
