"""Tests for stages.references: tiny in-memory splits, one error-path test per failure mode, one run of main."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peftqa.common import ParamsError, PeftqaError
from peftqa.metrics import classification_metrics
from peftqa.params import ReferencesParams, parse_params
from peftqa.references import (
    PRED_COLUMNS,
    TfidfSetting,
    check_split,
    choose_tfidf_setting,
    fit_tfidf_lr,
    input_texts,
    majority_label,
    predict_majority,
    predict_references,
    predict_tfidf_lr,
    score_predictions,
    tfidf_grid,
)
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
# outputs in evaluate's format


@pytest.mark.parametrize("name", ["majority", "tfidf_lr"])
def test_predictions_have_evaluates_columns(name):
    from peftqa.evaluation import predictions_frame as evaluate_predictions_frame  # imports torch: only here

    splits = make_splits()
    preds, _ = predict_references(splits, ReferencesParams(names=(name,)), LABELS)
    evaluate_columns = list(evaluate_predictions_frame(splits["test"], ["yes"] * 6, None, LABELS, []).columns)
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


def test_main_writes_preds_metrics_and_choices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO_PARAMS, "params.yaml")
    for split, frame in make_splits().items():
        Path("data/processed").mkdir(parents=True, exist_ok=True)
        frame.to_csv(f"data/processed/{split}.csv", index=False)
    stale = Path("reports/references/old_reference")
    stale.mkdir(parents=True)

    references.main([])

    assert not stale.exists()  # the folder is replaced whole
    choices = json.loads(Path("reports/references/choices.json").read_text())
    assert set(choices) == {"majority", "tfidf_lr"}
    summary = json.loads(Path("reports/references_metrics.json").read_text())
    for name in ("majority", "tfidf_lr"):
        for split in ("val", "test"):
            preds = pd.read_csv(f"reports/references/{name}/preds_{split}.csv", dtype={"pmid": str})
            assert list(preds.columns) == PRED_COLUMNS
            metrics = json.loads(Path(f"reports/references/{name}/metrics_{split}.json").read_text())
            expected = classification_metrics(preds["gold"].tolist(), preds["pred"].tolist(), LABELS)
            assert metrics == pytest.approx(expected) and list(metrics) == list(expected)
            assert summary[name][split] == {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
