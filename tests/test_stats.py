"""Tests for stages.stats (paired tests) and the metrics it builds on: tiny in-memory predictions, plus one run of
main."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from peftqa.errors import PeftqaError
from peftqa.evaluation.metrics import classification_metrics
from peftqa.evaluation.stats import (
    STATS_COLUMNS,
    bootstrap_p_value,
    compare_methods,
    comparison_pairs,
    defined_references,
    encode_labels,
    holm_adjust,
    holm_family_size,
    mcnemar_detectable_difference,
    mcnemar_exact,
    mcnemar_exact_floor,
    mcnemar_exact_power,
    paired_bootstrap,
    preds_path,
    resample_metrics,
    resample_weights,
)
from peftqa.params import StatsParams, load_params
from stages.stats import main

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
METHODS = ("base", "prompt_tuning", "prefix_tuning", "lora")
REFERENCES = ("majority", "tfidf_lr")
YES_NO = ("yes", "no")
FAST_STATS = StatsParams(n_bootstrap=500, seed=7, confidence=0.95)


def make_preds(methods=METHODS, labels=YES_NO, n_items=40, seed=0) -> dict[str, pd.DataFrame]:
    """PubMedQA-shaped preds_test frames: shared PMIDs and gold, each method right ~70% of the time, a few unmapped."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(labels, n_items)
    preds = {}
    for method in methods:
        pred = np.where(rng.random(n_items) < 0.7, gold, rng.choice(labels, n_items)).astype(object)
        pred[rng.random(n_items) < 0.05] = None  # a generation that mapped to no label
        preds[method] = pd.DataFrame({"pmid": [str(10_000_000 + i) for i in range(n_items)], "gold": gold, "pred": pred,
                                      "p_yes": rng.random(n_items), "latency_s": 0.01})
    return preds


def correctness(b: int, c: int, both_right: int = 5, both_wrong: int = 3) -> tuple[list[bool], list[bool]]:
    """Correctness vectors (reference, method) with b fixes and c regressions, plus concordant items."""
    reference = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    method = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    return reference, method


# -----------------------------------------------------------------------------
# McNemar


def test_mcnemar_matches_scipy_binomtest_over_a_grid():
    for b in range(0, 31, 3):
        for c in range(0, 31, 2):
            if b + c == 0:
                continue
            assert mcnemar_exact(*correctness(b, c)) == pytest.approx(
                (b, c, binomtest(min(b, c), b + c, 0.5).pvalue), rel=1e-9)


@pytest.mark.parametrize(("b", "c", "p"), [(46, 22, 0.004903), (44, 18, 0.001299)])
def test_mcnemar_reproduces_the_reference_study(b, c, p):
    assert round(mcnemar_exact(*correctness(b, c))[2], 6) == p


def test_mcnemar_without_discordant_items_gives_p_one():
    assert mcnemar_exact(*correctness(0, 0)) == (0, 0, 1.0)


def test_mcnemar_counts_fixes_as_b_and_regressions_as_c():
    b, c, _ = mcnemar_exact(correct_reference=[False, False, True], correct_method=[True, True, False])
    assert (b, c) == (2, 1)


@pytest.mark.parametrize(("n", "expected"), [(89, 0.216), (445, 0.096), (890, 0.068)])
def test_detectable_difference_matches_an_independent_computation(n, expected):
    """An independent re-computation of the SmolLM2 study (its own code) found these at the discordance 0.506 of
    LoRA against base_calibrated: exact McNemar, α = 0.05, 80% power. Connor's normal approximation gives 0.208 at
    n = 89: the negative control, which the exact test must not reproduce."""
    assert mcnemar_detectable_difference(n, 0.506) == pytest.approx(expected, abs=1.5e-3)
    assert abs(mcnemar_detectable_difference(89, 0.506) - 0.208) > 0.005


@pytest.mark.parametrize(("n", "psi"), [(89, 0.35), (89, 0.6), (445, 0.2), (40, 0.9)])
def test_detectable_difference_is_where_the_exact_power_reaches_80_percent(n, psi):
    """At δ the power is 0.8, just below it less; more items detect less. And a simulation of the stats stage's own
    test (mcnemar_exact on drawn correctness vectors) at δ rejects about 80% of the time."""
    delta = mcnemar_detectable_difference(n, psi, alpha=0.05, power=0.8)
    assert mcnemar_exact_power(n, psi, delta) >= 0.8 > mcnemar_exact_power(n, psi, delta - 1e-4)
    assert mcnemar_detectable_difference(4 * n, psi) < delta
    rng = np.random.default_rng(0)
    draws = 2000
    kinds = rng.choice(3, size=(draws, n), p=[(psi + delta) / 2, (psi - delta) / 2, 1 - psi])  # fix, regression, same
    rejected = sum(mcnemar_exact(kind == 1, kind == 0)[2] <= 0.05 for kind in kinds)
    assert abs(rejected / draws - 0.8) < 3 * np.sqrt(0.8 * 0.2 / draws)


def test_detectable_difference_edge_cases():
    assert np.isnan(mcnemar_detectable_difference(89, 0.0))  # nothing discordant: nothing to estimate from
    assert mcnemar_detectable_difference(8, 0.3) == np.inf  # δ would exceed ψ: no split of 8 items gets 80% power
    with pytest.raises(ValueError, match="discordance in \\[0, 1\\]"):
        mcnemar_detectable_difference(89, 1.5)


# -----------------------------------------------------------------------------
# metrics: classification_metrics against scikit-learn, and the vectorised bootstrap twin against both

labeled_vectors = st.sampled_from([YES_NO, ("yes", "no", "maybe")]).flatmap(lambda labels: st.tuples(
    st.just(labels),
    st.lists(st.tuples(st.sampled_from(labels), st.sampled_from([*labels, None])), min_size=1, max_size=40)))


@settings(max_examples=60, deadline=None)
@given(labeled_vectors)
def test_classification_metrics_agree_with_sklearn(case):
    labels, pairs = case
    gold, pred = [g for g, _ in pairs], [p for _, p in pairs]
    sk_pred = [p if p is not None else "unmapped" for p in pred]  # sklearn cannot mix None with strings
    ours = classification_metrics(gold, pred, labels)
    kwargs = {"labels": list(labels), "average": None, "zero_division": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # labels absent from y_true: expected on tiny vectors
        expected = {"accuracy": accuracy_score(gold, sk_pred),
                    "macro_f1": f1_score(gold, sk_pred, labels=list(labels), average="macro", zero_division=0)}
        for name, score in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
            expected.update({f"{name}_{label}": value for label, value in zip(labels, score(gold, sk_pred, **kwargs))})
    assert {key: ours[key] for key in expected} == pytest.approx(expected, abs=1e-12)
    assert ours["unmapped"] == pred.count(None)


@settings(max_examples=40, deadline=None)
@given(labeled_vectors, st.integers(0, 2**32 - 1))
def test_resample_metrics_agree_with_classification_metrics(case, seed):
    labels, pairs = case
    gold, pred = [g for g, _ in pairs], [p for _, p in pairs]
    weights = resample_weights(len(gold), n_resamples=3, seed=seed)  # (3, n)
    got = resample_metrics(weights, encode_labels(gold, labels), encode_labels(pred, labels), len(labels))
    for r, row in enumerate(weights.astype(int)):  # a resample is the items repeated by their weights
        expected = classification_metrics(np.repeat(gold, row), np.repeat(np.array(pred, dtype=object), row), labels)
        assert (got["accuracy"][r], got["macro_f1"][r]) == pytest.approx((expected["accuracy"], expected["macro_f1"]))


def test_resample_weights_draw_n_items_per_resample():
    weights = resample_weights(n_items=89, n_resamples=50, seed=1)
    assert weights.shape == (50, 89)
    assert np.all(weights.sum(axis=1) == 89)


# -----------------------------------------------------------------------------
# paired bootstrap


def bootstrap_case(seed: int, methods=("base", "lora")):
    preds = make_preds(methods=methods, n_items=60)
    gold = preds["base"]["gold"].tolist()
    return paired_bootstrap(gold, preds["base"]["pred"].tolist(), preds[methods[-1]]["pred"].tolist(), YES_NO,
                            n_resamples=1000, seed=seed, confidence=0.95)


def test_bootstrap_is_deterministic_for_a_seed_and_varies_with_it():
    assert bootstrap_case(seed=1) == bootstrap_case(seed=1)
    assert bootstrap_case(seed=1) != bootstrap_case(seed=2)


def test_bootstrap_ci_contains_the_point_difference():
    for metric, result in bootstrap_case(seed=3).items():
        assert result.ci_low <= result.effect <= result.ci_high, metric
        assert 0.0 <= result.p_value <= 1.0


def test_bootstrap_of_identical_predictions_gives_zero_effect_and_p_one():
    preds = make_preds(methods=("base",))["base"]
    results = paired_bootstrap(preds["gold"].tolist(), preds["pred"].tolist(), preds["pred"].tolist(), YES_NO,
                               n_resamples=500, seed=0, confidence=0.95)
    for result in results.values():
        assert (result.effect, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(("deltas", "p"), [([-1, 0, 1, 2], 1.0), ([1, 2, 3, -1, 4], 2 * 2 / 6),
                                           ([0.1, 0.2, 0.3], 2 / 4)])
def test_bootstrap_p_value_is_twice_the_smaller_tail_plus_one(deltas, p):
    """(k + 1) / (R + 1) per tail: no resample on the far side of 0 gives 2 / (R + 1), never 0."""
    assert bootstrap_p_value(np.array(deltas, dtype=float)) == pytest.approx(p)


# -----------------------------------------------------------------------------
# Holm


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_is_capped_at_one_and_handles_empty_input():
    assert holm_adjust([0.3, 0.6, 0.9]) == pytest.approx([0.9, 1.0, 1.0])
    assert holm_adjust([]) == []


def test_a_holm_family_is_one_test_on_one_metric():
    table = pd.DataFrame({"test": ["mcnemar_exact", "paired_bootstrap", "paired_bootstrap"] * 2,
                          "metric": ["accuracy", "accuracy", "macro_f1"] * 2})
    assert holm_family_size(table) == 2
    assert holm_family_size(table.iloc[:0]) == 0


def test_the_exact_mcnemar_floor():
    assert mcnemar_exact_floor(0.05) == 6  # 2 * 0.5**5 = 0.0625 > 0.05 >= 2 * 0.5**6
    assert mcnemar_exact_floor(0.0625) == 5
    assert mcnemar_exact_floor(0.01) == 8


# -----------------------------------------------------------------------------
# all comparisons


def test_comparison_pairs_put_the_baseline_first_then_later_vs_earlier():
    assert comparison_pairs(METHODS, "base") == [
        ("prompt_tuning", "base"), ("prefix_tuning", "base"), ("lora", "base"),
        ("prefix_tuning", "prompt_tuning"), ("lora", "prompt_tuning"), ("lora", "prefix_tuning")]
    assert comparison_pairs(("lora", "base", "ia3"), "base") == [("lora", "base"), ("ia3", "base"), ("ia3", "lora")]


def test_comparison_pairs_end_with_every_method_against_each_reference():
    pairs = comparison_pairs(("base", "lora"), "base", REFERENCES)
    assert pairs == [("lora", "base"), ("base", "majority"), ("base", "tfidf_lr"), ("lora", "majority"),
                     ("lora", "tfidf_lr")]


def test_compare_methods_adds_reference_rows_and_holm_covers_them():
    preds = make_preds(methods=(*METHODS, *REFERENCES))
    references = {name: preds.pop(name) for name in REFERENCES}
    without = compare_methods(preds, METHODS, "base", YES_NO, FAST_STATS)
    table = compare_methods(preds, METHODS, "base", YES_NO, FAST_STATS, references=references)
    assert len(table) == (6 + len(METHODS) * len(REFERENCES)) * 3
    # the method-vs-method rows are unchanged but for the Holm adjustment, which now counts every comparison
    pd.testing.assert_frame_equal(table.iloc[: len(without)].drop(columns="p_holm"), without.drop(columns="p_holm"))
    for _, group in table.groupby(["test", "metric"]):
        assert group["p_holm"].tolist() == pytest.approx(holm_adjust(group["p_value"].tolist()))
    against = table[table["reference"].isin(REFERENCES)]
    assert set(zip(against["method"], against["reference"])) == {(m, r) for m in METHODS for r in REFERENCES}
    gold = preds["base"]["gold"].tolist()
    for row in against[against["test"] == "paired_bootstrap"].itertuples():  # effect: method minus reference
        method_score = classification_metrics(gold, preds[row.method]["pred"].tolist(), YES_NO)[row.metric]
        reference_score = classification_metrics(gold, references[row.reference]["pred"].tolist(), YES_NO)[row.metric]
        assert row.effect == pytest.approx(method_score - reference_score)


@pytest.mark.parametrize("labels", [YES_NO, ("yes", "no", "maybe")])
def test_compare_methods_rows_and_holm_groups(labels):
    table = compare_methods(make_preds(labels=labels), METHODS, "base", labels, FAST_STATS)
    assert list(table.columns) == STATS_COLUMNS
    assert len(table) == 6 * 3  # 6 comparisons x (McNemar, bootstrap accuracy, bootstrap macro-F1)
    for _, group in table.groupby(["test", "metric"]):
        assert group["p_holm"].tolist() == pytest.approx(holm_adjust(group["p_value"].tolist()))
    mcnemar = table[table["test"] == "mcnemar_exact"]
    assert mcnemar["effect"].tolist() == pytest.approx(((mcnemar["b"] - mcnemar["c"]) / mcnemar["n"]).tolist())
    assert mcnemar[["ci_low", "ci_high"]].isna().all().all()


def test_unmapped_predictions_count_as_wrong():
    frame = pd.DataFrame({"pmid": ["1", "2", "3"], "gold": ["yes", "no", "yes"]})
    preds = {"base": frame.assign(pred=["yes", np.nan, None]), "lora": frame.assign(pred=["yes", "no", "yes"])}
    table = compare_methods(preds, ("base", "lora"), "base", YES_NO, FAST_STATS)
    mcnemar = table[table["test"] == "mcnemar_exact"].iloc[0]
    assert (mcnemar["b"], mcnemar["c"], mcnemar["effect"]) == (2, 0, pytest.approx(2 / 3))


def test_compare_methods_pairs_items_by_pmid_not_by_row_order():
    preds = make_preds()
    shuffled = {**preds, "lora": preds["lora"].sample(frac=1.0, random_state=0)}
    pd.testing.assert_frame_equal(compare_methods(preds, METHODS, "base", YES_NO, FAST_STATS),
                                  compare_methods(shuffled, METHODS, "base", YES_NO, FAST_STATS))


# -----------------------------------------------------------------------------
# error paths: one per failure mode, each naming the file


def test_mismatched_pmids_name_the_file():
    preds = make_preds()
    preds["lora"] = preds["lora"].assign(pmid=preds["lora"]["pmid"].where(preds["lora"].index > 0, "999"))
    with pytest.raises(PeftqaError, match="reports/eval/lora/preds_test.csv.*different test items"):
        compare_methods(preds, METHODS, "base", YES_NO, FAST_STATS)


def test_mismatched_gold_labels_name_the_file():
    preds = make_preds()
    flipped = preds["prefix_tuning"]["gold"].map({"yes": "no", "no": "yes"})
    preds["prefix_tuning"] = preds["prefix_tuning"].assign(gold=flipped)
    with pytest.raises(PeftqaError, match="reports/eval/prefix_tuning/preds_test.csv: gold labels differ"):
        compare_methods(preds, METHODS, "base", YES_NO, FAST_STATS)


def test_missing_preds_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO_PARAMS, "params.yaml")
    with pytest.raises(PeftqaError, match=f"{preds_path(load_params().methods[0])}: not found"):
        main([])


def test_reference_preds_of_another_split_name_the_reference_file():
    preds = make_preds(methods=(*METHODS, "tfidf_lr"))
    reference = preds.pop("tfidf_lr")
    reference = reference.assign(pmid=reference["pmid"].where(reference.index > 0, "999"))
    with pytest.raises(PeftqaError, match="reports/references/tfidf_lr/preds_test.csv and reports/eval/base/"
                                          "preds_test.csv cover different test items"):
        compare_methods(preds, METHODS, "base", YES_NO, FAST_STATS, references={"tfidf_lr": reference})


def write_choices(names, not_defined=()) -> None:
    """choices.json as the references stage writes it: a record per reference, {"not_defined": why} for some."""
    path = Path("reports/references/choices.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({name: {"not_defined": "not defined for the encoder family"} if name in not_defined
                                else {"chosen": {}} for name in names}))


def test_missing_reference_preds_name_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO_PARAMS, "params.yaml")
    params = load_params()
    for method, frame in make_preds(methods=params.methods).items():
        preds_path(method).parent.mkdir(parents=True)
        frame.to_csv(preds_path(method), index=False)
    with pytest.raises(PeftqaError, match=r"reports/references/choices.json: not found; run `dvc repro references`"):
        main([])
    write_choices(params.references.names)
    with pytest.raises(PeftqaError, match="reports/references/majority/preds_test.csv: not found.*references.names"):
        main([])


def test_defined_references_are_those_choices_json_gives_a_row():
    choices = {"majority": {"label": "yes"}, "tfidf_lr": {"chosen": {}}, "base_calibrated": {"not_defined": "why"}}
    assert defined_references(("majority", "base_calibrated", "tfidf_lr"), choices) == ["majority", "tfidf_lr"]
    with pytest.raises(PeftqaError, match=r"choices.json lists no \['tfidf_lr'\].*stale, run `dvc repro references`"):
        defined_references(("majority", "tfidf_lr"), {"majority": {}})


# -----------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize("not_defined", [(), ("base_calibrated",)])
def test_main_writes_csv_markdown_and_summary_that_agree(tmp_path, monkeypatch, not_defined):
    """Every method against each reference row, base_calibrated included on a generative run, and left out when the
    references stage says it is not defined (an encoder run)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO_PARAMS, "params.yaml")
    params = load_params()
    rows = [name for name in params.references.names if name not in not_defined]
    assert "base_calibrated" in params.references.names
    for method, frame in make_preds(methods=(*params.methods, *rows), labels=params.prepare.labels).items():
        preds_path(method).parent.mkdir(parents=True)
        frame.to_csv(preds_path(method), index=False)  # None -> empty cell, as evaluate writes an unmapped generation
    write_choices(params.references.names, not_defined)

    main([])

    table = pd.read_csv("reports/stats/stats_eval_test.csv")
    assert list(table.columns) == STATS_COLUMNS
    pairs = comparison_pairs(params.methods, params.stats.baseline, rows)
    assert len(table) == 3 * len(pairs) and set(table["reference"]) - set(params.methods) == set(rows)
    against = set(table.loc[table["reference"] == "base_calibrated", "method"])
    assert against == (set() if not_defined else set(params.methods))  # every method against it, where defined
    markdown = Path("reports/stats/stats_eval_test.md").read_text()
    assert markdown.count("\n| ") == len(table) + 1  # header + one line per row
    summary = json.loads(Path("reports/stats/stats_summary.json").read_text())
    for key, entry in summary.items():
        rows = table[table["method"] + "_vs_" + table["reference"] == key].set_index(["test", "metric"])
        mcnemar = rows.loc[("mcnemar_exact", "accuracy")]
        assert [entry[key] for key in ("mcnemar_b", "mcnemar_c", "mcnemar_p")] == \
            [mcnemar[key] for key in ("b", "c", "p_value")]
        for name in ("accuracy", "macro_f1"):
            row = rows.loc[("paired_bootstrap", name)]
            assert [entry[f"delta_{name}{suffix}"] for suffix in ("", "_ci_low", "_ci_high", "_p")] == \
                [row["effect"], row["ci_low"], row["ci_high"], row["p_value"]]
    assert len(summary) == len(pairs)
