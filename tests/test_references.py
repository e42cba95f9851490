"""Tests for stages.references: tiny in-memory splits, one error-path test per failure mode, one run of main."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pytest

from peftqa.catalog import PRED_COLUMNS
from peftqa.errors import ParamsError, PeftqaError
from peftqa.evaluation.metrics import classification_metrics
from peftqa.evaluation.references import (
    TfidfSetting,
    base_calibrated_undefined,
    check_split,
    choose_offset,
    choose_tfidf_setting,
    fit_tfidf_lr,
    input_texts,
    majority_label,
    margins_from_p_yes,
    offset_candidates,
    predict_base_calibrated,
    predict_majority,
    predict_references,
    predict_tfidf_lr,
    score_predictions,
    tfidf_grid,
)
from peftqa.params import ReferencesParams, parse_params
from stages import references

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
LABELS = ("yes", "no")


def make_split(labels: list[str], words: list[str] | None = None, start: int = 0) -> pd.DataFrame:
    """A PubMedQA-shaped split; item i's context carries words[i] (default: 'improved' for yes, 'unchanged' for no)."""
    words = words or ["improved" if label == "yes" else "unchanged" for label in labels]
    return pd.DataFrame({"pmid": [str(20_000_000 + start + i) for i in range(len(labels))],
                         "question": ["does the treatment work?"] * len(labels),
                         "context": [f"patients were followed and outcomes {word} after therapy" for word in words],
                         "label": labels})


def make_splits() -> dict[str, pd.DataFrame]:
    """Train is 2:1 yes; the keyword gives the label away on train and val."""
    return {"train": make_split(["yes"] * 8 + ["no"] * 4),
            "val": make_split(["yes", "no"] * 3, start=100),
            "test": make_split(["yes"] * 4 + ["no"] * 2, start=200)}


def base_preds(frame: pd.DataFrame, p_yes: Sequence[float]) -> pd.DataFrame:
    """evaluate@base's preds_<split>.csv for `frame`: the zero-shot base's p_yes and its argmax prediction."""
    p_yes = np.asarray(p_yes, dtype=float)
    return pd.DataFrame({"pmid": frame["pmid"].values, "gold": frame["label"].values,
                         "pred": np.where(p_yes >= 0.5, "yes", "no"), "p_yes": p_yes, "latency_s": 0.01})


def zero_shot_case(seed: int = 0) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Splits of 30 val and 30 test items and a zero-shot base that says 'no' too often: its margin is the label's
    signal (+-1, noisy) minus 2.5, so a positive offset helps on val. Test's labels are mostly 'no', so a chooser that
    also looked at test would pick another offset."""
    rng = np.random.default_rng(seed)
    gold = {"val": ["yes"] * 20 + ["no"] * 10, "test": ["yes"] * 8 + ["no"] * 22}
    splits = {"train": make_split(["yes"] * 8 + ["no"] * 4),
              **{split: make_split(labels, start=100 * (i + 1)) for i, (split, labels) in enumerate(gold.items())}}
    preds = {}
    for split, labels in gold.items():
        margin = np.where(np.array(labels) == "yes", 1.0, -1.0) + rng.normal(0, 1.2, len(labels)) - 2.5
        preds[split] = base_preds(splits[split], 1 / (1 + np.exp(-margin)))
    return splits, preds


# -----------------------------------------------------------------------------
# majority


def test_majority_picks_the_train_majority_not_the_test_one():
    splits = make_splits()
    splits["test"] = make_split(["no"] * 5 + ["yes"], start=200)  # test's majority is 'no'
    preds, choice = predict_majority(splits, LABELS)
    assert choice["label"] == "yes" and choice["train_counts"] == {"yes": 8, "no": 4}
    for split in ("val", "test"):
        assert set(preds[split]["pred"]) == {"yes"}
        assert preds[split]["p_yes"].tolist() == pytest.approx([8 / 12] * len(splits[split]))


def test_majority_tie_goes_to_the_label_listed_first():
    assert majority_label(["no", "yes"], ["yes", "no"]) == "yes"
    assert majority_label(["no", "yes"], ["no", "yes"]) == "no"
    assert majority_label(["maybe", "maybe", "no"], ["yes", "no", "maybe"]) == "maybe"


# -----------------------------------------------------------------------------
# tfidf_lr


def test_tfidf_grid_is_ordered_simplest_first():
    grid = tfidf_grid(ReferencesParams(tfidf_c_grid=(10.0, 0.1), tfidf_ngram_max=2,
                                       tfidf_class_weighting=("balanced", "none")))
    assert grid == [TfidfSetting(n, c, w) for n in (1, 2) for c in (0.1, 10.0) for w in ("none", "balanced")]


def test_tfidf_lr_chooses_on_val_even_where_test_prefers_another_setting():
    """Strongly regularised, unweighted LR answers the train majority 'yes' everywhere; balanced weighting follows the
    keyword. Val needs the keyword; on this test set (all 'yes', keywords misleading) always-'yes' would score
    higher. The choice must follow val."""
    splits = make_splits()
    splits["test"] = make_split(["yes"] * 6, words=["unchanged"] * 3 + ["improved"] * 3, start=200)
    params = ReferencesParams(names=("tfidf_lr",), tfidf_c_grid=(0.01,), tfidf_ngram_max=1)
    setting, grid = choose_tfidf_setting(splits["train"], splits["val"], params, LABELS)
    assert setting == TfidfSetting(1, 0.01, "balanced")

    train_texts, train_gold = input_texts(splits["train"]), splits["train"]["label"].tolist()
    test_f1 = {s.class_weighting: score_predictions(
        predict_tfidf_lr(fit_tfidf_lr(train_texts, train_gold, s), splits["test"]), LABELS)["macro_f1"]
        for s in tfidf_grid(params)}
    assert test_f1["none"] > test_f1["balanced"]  # the construction holds: test would have chosen 'none'
    assert [row["class_weighting"] for row in grid] == ["none", "balanced"]
    assert grid[1]["val_macro_f1"] == 1.0 and grid[0]["val_macro_f1"] < 0.5


def test_tfidf_lr_ties_go_to_the_simplest_setting():
    """Every unweighted, strongly regularised setting answers 'yes' everywhere: equal val scores."""
    splits = make_splits()
    params = ReferencesParams(tfidf_c_grid=(0.01, 0.001), tfidf_ngram_max=2, tfidf_class_weighting=("none",))
    setting, grid = choose_tfidf_setting(splits["train"], splits["val"], params, LABELS)
    assert len({row["val_macro_f1"] for row in grid}) == 1
    assert setting == TfidfSetting(1, 0.001, "none")


def test_tfidf_lr_vocabulary_comes_from_train_alone():
    splits = make_splits()
    model = fit_tfidf_lr(input_texts(splits["train"]), splits["train"]["label"].tolist(),
                         TfidfSetting(1, 1.0, "none"))
    vocabulary = set(model[0].vocabulary_)
    assert {"improved", "unchanged"} <= vocabulary and "worsened" not in vocabulary


def test_tfidf_lr_p_yes_agrees_with_its_prediction():
    splits = make_splits()
    preds, choices = predict_references(splits, ReferencesParams(names=("tfidf_lr",)), LABELS)
    test = preds["tfidf_lr"]["test"]
    assert (test["pred"] == np.where(test["p_yes"] >= 0.5, "yes", "no")).all()
    assert choices["tfidf_lr"]["chosen"]["val_macro_f1"] == max(row["val_macro_f1"] for row in
                                                                 choices["tfidf_lr"]["grid"])
    assert len(choices["tfidf_lr"]["grid"]) == len(tfidf_grid(ReferencesParams()))


# -----------------------------------------------------------------------------
# base_calibrated


def calibrated_delta(splits: dict[str, pd.DataFrame], base: dict[str, pd.DataFrame]) -> float:
    return predict_base_calibrated(splits, base, LABELS)[1]["delta"]


def leaky_delta(splits: dict[str, pd.DataFrame], base: dict[str, pd.DataFrame]) -> float:
    """The mistake the tests below must catch: an offset chosen on val and test together."""
    margins = margins_from_p_yes(np.concatenate([base["val"]["p_yes"], base["test"]["p_yes"]]))
    return choose_offset(margins, [*splits["val"]["label"], *splits["test"]["label"]], LABELS)["delta"]


def deltas_under_test_edits(chooser: Callable[[dict, dict], float], seed: int = 0) -> list[float]:
    """δ as `chooser` picks it from the zero-shot case, then with test's p_yes permuted, mirrored (1 - p_yes) and
    replaced by noise."""
    splits, base = zero_shot_case(seed)
    rng = np.random.default_rng(seed + 1)
    test = base["test"]
    edits = [test, test.assign(p_yes=rng.permutation(test["p_yes"].to_numpy())), test.assign(p_yes=1 - test["p_yes"]),
             test.assign(p_yes=rng.uniform(0.01, 0.99, len(test)))]
    return [chooser(splits, {**base, "test": edited}) for edited in edits]


SEEDS = (0, 1, 2)  # zero-shot cases the val-only check runs on, and its negative control with it


@pytest.mark.parametrize("seed", SEEDS)
def test_base_calibrated_offset_is_chosen_on_val_alone(seed):
    """Permuting, mirroring or replacing test's scores leaves δ as it was; moving val's scores moves it."""
    deltas = deltas_under_test_edits(calibrated_delta, seed)
    assert len(set(deltas)) == 1 and deltas[0] > 0  # base says 'no' too often: the offset leans to 'yes'
    splits, base = zero_shot_case(seed)
    shifted = base["val"].assign(p_yes=1 / (1 + np.exp(-(margins_from_p_yes(base["val"]["p_yes"]) + 2.0))))
    assert calibrated_delta(splits, {**base, "val": shifted}) != deltas[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_val_only_check_catches_a_chooser_that_looks_at_test(seed):
    """Negative control of the test above: on the same cases, an offset chosen on val + test moves when test's
    scores move, and differs from the val-only one."""
    leaky = deltas_under_test_edits(leaky_delta, seed)
    assert len(set(leaky)) > 1
    assert leaky[0] != deltas_under_test_edits(calibrated_delta, seed)[0]


def test_base_calibrated_applies_one_offset_to_the_margin():
    splits, base = zero_shot_case()
    preds, choice = predict_base_calibrated(splits, base, LABELS)
    for split in ("val", "test"):
        margin = margins_from_p_yes(base[split]["p_yes"])
        shifted = margin + choice["delta"]
        assert preds[split]["pred"].tolist() == np.where(shifted > 0, "yes", "no").tolist()
        assert preds[split]["p_yes"].to_numpy() == pytest.approx(1 / (1 + np.exp(-shifted)))
    val = score_predictions(preds["val"], LABELS)["macro_f1"]
    assert choice["val_macro_f1"] == val >= choice["val_macro_f1_at_zero"]
    at_zero = classification_metrics(splits["val"]["label"].tolist(), base["val"]["pred"].tolist(), LABELS)
    assert choice["val_macro_f1_at_zero"] == pytest.approx(at_zero["macro_f1"])  # δ = 0 is the base as it is
    assert choice["val_macro_f1"] > choice["val_macro_f1_at_zero"]


def test_offset_ties_go_to_the_smallest_absolute_offset():
    """Val margins -3, -1, 1, 3 with gold no, no, yes, yes: every threshold in (-1, 1) is perfect, δ = 0 among them;
    candidates run 0, then by |δ| (and the smaller δ first), and cover all-yes and all-no."""
    margins = np.array([-3.0, -1.0, 1.0, 3.0])
    assert offset_candidates(margins).tolist() == [0.0, -2.0, 2.0, -4.0, 4.0]
    assert choose_offset(margins, ["no", "no", "yes", "yes"], LABELS)["delta"] == 0.0
    assert choose_offset(margins + 5, ["no", "no", "yes", "yes"], LABELS)["delta"] == -5.0  # the nearest perfect one
    # margins -1, 1 with gold yes, no: δ = 0 gets both wrong; all-no (δ = -2) and all-yes (δ = 2) tie at 1/3
    tied = choose_offset(np.array([-1.0, 1.0]), ["yes", "no"], LABELS)
    assert (tied["delta"], tied["macro_f1"], tied["macro_f1_at_zero"]) == (-2.0, pytest.approx(1 / 3), 0.0)


def test_margins_survive_saturated_probabilities():
    margins = margins_from_p_yes([0.0, 0.5, 1.0, 0.75])
    assert np.isfinite(margins).all() and margins[1] == 0.0 and margins[3] == pytest.approx(np.log(3))
    assert margins[0] == pytest.approx(-margins[2], rel=1e-5)  # 1 - 1e-12 is not exact in floating point


@pytest.mark.parametrize(("methods", "labels", "scoring", "family", "why"), [
    (("base", "lora"), ("yes", "no"), "verbalizer", None, None),
    (("base", "lora"), ("yes", "no"), "verbalizer", "causal", None),
    (("base", "lora"), ("no", "yes"), "verbalizer", "seq2seq", None),
    (("base", "lora"), ("yes", "no"), "verbalizer", "encoder", "not defined for the encoder family: its base is a "
                                                               "trained probe, not a zero-shot model"),
    (("base", "lora"), ("yes", "no", "maybe"), "verbalizer", "causal", "not defined for prepare.labels "
                                                                      "['yes', 'no', 'maybe']: it needs exactly"),
    (("lora",), ("yes", "no"), "verbalizer", None, "not defined: base is not in methods"),
    (("base",), ("yes", "no"), "generate", "causal", "not defined under model.scoring: generate"),
    (("base",), ("yes", "no"), "generate", "encoder", "not defined for the encoder family"),  # scoring: LMs only
])
def test_base_calibrated_is_defined_only_for_a_zero_shot_yes_no_base(methods, labels, scoring, family, why):
    found = base_calibrated_undefined(methods, labels, scoring, family)
    assert found == why if why is None else found.startswith(why)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda f: f.iloc[1:], r"reports/eval/base/preds_val.csv scores other items.*dvc repro evaluate@base"),
    (lambda f: f.assign(gold="no"), r"reports/eval/base/preds_val.csv: gold labels differ"),
    (lambda f: f.assign(p_yes=[np.nan, *f["p_yes"][1:]]), r"preds_val.csv: 1 of 30 items have no p_yes"),
])
def test_stale_base_predictions_name_the_file(edit, message):
    splits, base = zero_shot_case()
    with pytest.raises(PeftqaError, match=message):
        predict_base_calibrated(splits, {**base, "val": edit(base["val"])}, LABELS)


# -----------------------------------------------------------------------------
# outputs in evaluate's format


@pytest.mark.parametrize("name", ["majority", "tfidf_lr", "base_calibrated"])
def test_predictions_have_evaluates_columns(name):
    from peftqa.evaluation.predictions import scored_predictions  # imports torch: only here

    splits = make_splits()
    base = {split: base_preds(splits[split], np.linspace(0.1, 0.9, len(splits[split]))) for split in ("val", "test")}
    preds, _ = predict_references(splits, ReferencesParams(names=(name,)), LABELS, base)
    evaluate_columns = list(scored_predictions(splits["test"], ["yes"] * 6, None, LABELS, []).columns)
    for split in ("val", "test"):
        frame = preds[name][split]
        assert list(frame.columns) == PRED_COLUMNS == evaluate_columns
        assert frame["pmid"].tolist() == splits[split]["pmid"].tolist()
        assert frame["gold"].tolist() == splits[split]["label"].tolist()
        assert frame["latency_s"].isna().all() and frame["p_yes"].between(0, 1).all()


# -----------------------------------------------------------------------------
# error paths: each names the file


@pytest.mark.parametrize(("edit", "message"), [
    (lambda f: f.drop(columns=["label"]), r"data/processed/val.csv: missing columns \['label'\]"),
    (lambda f: f.iloc[:0], r"data/processed/val.csv: no items"),
    (lambda f: f.assign(label="maybe"), r"data/processed/val.csv: labels \['maybe'\] are not in prepare.labels"),
    (lambda f: f.assign(context=None), r"data/processed/val.csv: PMID 20000100 has an empty question or context"),
])
def test_bad_split_names_the_file(edit, message):
    with pytest.raises(PeftqaError, match=message):
        check_split(edit(make_split(["yes", "no"], start=100)), Path("data/processed/val.csv"), LABELS)


def test_missing_split_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO_PARAMS, "params.yaml")
    with pytest.raises(PeftqaError, match=r"data/processed/train.csv not found; run `dvc repro prepare`"):
        references.main([])


@pytest.mark.parametrize(("section", "key"), [({"names": ["majority", "bert"]}, "references.names"),
                                              ({"names": []}, "references.names"),
                                              ({"tfidf_c_grid": [1.0, 0.0]}, "references.tfidf_c_grid"),
                                              ({"tfidf_ngram_max": 0}, "references.tfidf_ngram_max"),
                                              ({"tfidf_class_weighting": ["inverse"]},
                                               "references.tfidf_class_weighting")])
def test_bad_references_params_name_the_key(params_data, section, key):
    with pytest.raises(ParamsError, match=f"'{key}'"):
        parse_params(params_data({f"references.{k}": v for k, v in section.items()}))


# -----------------------------------------------------------------------------
# the stage


FEW_SHOT_UNDEFINED = {"not_defined": "not defined for the encoder family: it reads no examples in a prompt"}


def write_stage_inputs(splits: dict[str, pd.DataFrame], family: str,
                       base: dict[str, pd.DataFrame] | None = None, few_shot: dict | None = None) -> None:
    """The splits, train@base's summary (its family), stage few_shot's choices.json (and its predictions, under
    "preds") and, when given, evaluate@base's predictions, in the cwd."""
    few_shot = dict(few_shot or FEW_SHOT_UNDEFINED)
    Path("reports/few_shot").mkdir(parents=True, exist_ok=True)
    for split, frame in few_shot.pop("preds", {}).items():
        frame.to_csv(f"reports/few_shot/preds_{split}.csv", index=False)
    Path("reports/few_shot/choices.json").write_text(json.dumps(few_shot))
    Path("data/processed").mkdir(parents=True, exist_ok=True)
    for split, frame in splits.items():
        frame.to_csv(f"data/processed/{split}.csv", index=False)
    Path("models/base").mkdir(parents=True, exist_ok=True)
    Path("models/base/train_summary.json").write_text(json.dumps({"method": "base", "family": family}))
    for split, frame in (base or {}).items():
        Path("reports/eval/base").mkdir(parents=True, exist_ok=True)
        frame.to_csv(f"reports/eval/base/preds_{split}.csv", index=False)


def check_written(names: Sequence[str], labels: Sequence[str] = LABELS) -> tuple[dict, dict]:
    """Every written reference's preds and metrics agree; returns choices.json and references_metrics.json."""
    choices = json.loads(Path("reports/references/choices.json").read_text())
    summary = json.loads(Path("reports/references_metrics.json").read_text())
    assert sorted(p.name for p in Path("reports/references").iterdir() if p.is_dir()) == sorted(names)
    assert set(summary) == set(names)
    for name in names:
        for split in ("val", "test"):
            preds = pd.read_csv(f"reports/references/{name}/preds_{split}.csv", dtype={"pmid": str})
            assert list(preds.columns) == PRED_COLUMNS
            metrics = json.loads(Path(f"reports/references/{name}/metrics_{split}.json").read_text())
            expected = classification_metrics(preds["gold"].tolist(), preds["pred"].tolist(), labels)
            assert metrics == pytest.approx(expected) and list(metrics) == list(expected)
            assert summary[name][split] == {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    return choices, summary


@pytest.mark.parametrize(("family", "labels", "why"), [
    ("encoder", LABELS, "not defined for the encoder family: its base is a trained probe, not a zero-shot model"),
    ("causal", ("yes", "no", "maybe"), "not defined for prepare.labels ['yes', 'no', 'maybe']: it needs exactly the "
                                       "two labels yes and no (its margin is log p(yes) - log p(no))"),
])
def test_main_writes_preds_metrics_and_choices(tmp_path, monkeypatch, write_params, family, labels, why):
    """The default encoder profile (base is a trained probe) and a three-label run: base_calibrated gets no row,
    and choices.json says why."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"prepare.labels": list(labels)})
    write_stage_inputs(make_splits(), family=family)  # no base preds: they are not read
    stale = Path("reports/references/old_reference")
    stale.mkdir(parents=True)

    references.main([])

    assert not stale.exists()  # the folder is replaced whole
    choices, _ = check_written(["majority", "tfidf_lr"], labels)
    assert list(choices) == ["majority", "tfidf_lr", "base_calibrated", "few_shot"]
    assert choices["base_calibrated"] == {"not_defined": why}
    assert choices["few_shot"] == FEW_SHOT_UNDEFINED


def test_main_takes_few_shot_from_its_stage(tmp_path, monkeypatch, write_params):
    """The row is stage few_shot's predictions, in the split's order, scored like the others; its choice record is
    the stage's. Without the stage's output the error names the file and the fix."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"references.names": ["majority", "few_shot"]})
    splits = make_splits()
    preds = {split: pd.DataFrame({"pmid": frame["pmid"], "gold": frame["label"], "pred": "yes", "p_yes": 0.7,
                                  "latency_s": float("nan")}).iloc[::-1] for split, frame in splits.items()
             if split != "train"}
    write_stage_inputs(splits, family="causal", few_shot={"chosen": 2, "draws": [], "preds": preds})

    references.main([])

    choices, summary = check_written(["majority", "few_shot"])
    assert choices["few_shot"] == {"chosen": 2, "draws": []}
    written = pd.read_csv("reports/references/few_shot/preds_test.csv", dtype={"pmid": str})
    assert written["pmid"].tolist() == splits["test"]["pmid"].astype(str).tolist()
    Path("reports/few_shot/choices.json").unlink()
    with pytest.raises(PeftqaError, match=r"reports/few_shot/choices.json not found: run `dvc repro few_shot`"):
        references.main([])


def test_main_calibrates_a_generative_base_and_records_its_offset(tmp_path, monkeypatch, write_params):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"references.names": ["majority", "base_calibrated"]})
    splits, base = zero_shot_case()
    write_stage_inputs(splits, family="causal", base=base)

    references.main([])

    choices, summary = check_written(["majority", "base_calibrated"])
    delta = predict_base_calibrated(splits, base, LABELS)[1]["delta"]
    assert choices["base_calibrated"]["delta"] == summary["base_calibrated"]["delta"] == delta
    assert choices["base_calibrated"]["val_macro_f1"] == summary["base_calibrated"]["val"]["macro_f1"]


def test_main_without_base_predictions_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO_PARAMS, "params.yaml")
    write_stage_inputs(make_splits(), family="seq2seq")
    with pytest.raises(PeftqaError, match=r"reports/eval/base/preds_val.csv not found.*`dvc repro evaluate@base`"):
        references.main([])
