"""Reference rows that involve no model training: the majority class, and TF-IDF + logistic regression with its
setting chosen on val. Scored on the same items, in evaluate's prediction format, so stats and report treat them
like methods.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from peftqa.common import PeftqaError
from peftqa.metrics import classification_metrics
from peftqa.params import ReferencesParams

SPLIT_COLUMNS = ("pmid", "question", "context", "label")  # what stages.prepare writes
SCORED_SPLITS = ("val", "test")
PRED_COLUMNS = ["pmid", "gold", "pred", "p_yes", "latency_s"]  # the columns of evaluate's preds_<split>.csv
TFIDF_SUBLINEAR_TF = True  # 1 + log(tf): a word repeated in a long abstract does not swamp the question's words
TFIDF_MIN_DF = 2  # drop terms seen in a single train item: with 712 items they are mostly noise (and PMID-like tokens)
LR_MAX_ITER = 5000  # lbfgs iterations; enough to converge at the largest C of the grid
SCORE_TOLERANCE = 1e-12  # val scores closer than this are a tie, won by the simpler setting (earlier in tfidf_grid)


def check_split(frame: pd.DataFrame, path: Path, labels: Sequence[str]) -> pd.DataFrame:
    """The split as read, after the checks the references rely on; a bad file raises a PeftqaError naming it."""
    missing = [column for column in SPLIT_COLUMNS if column not in frame.columns]
    if missing:
        raise PeftqaError(f"{path}: missing columns {missing}; expected {list(SPLIT_COLUMNS)} as stages.prepare "
                          "writes them. Run `dvc repro prepare`.")
    if frame.empty:
        raise PeftqaError(f"{path}: no items; run `dvc repro prepare` (is prepare.limit too small?)")
    unknown = sorted(set(frame["label"].astype(str)) - set(labels))
    if unknown:
        raise PeftqaError(f"{path}: labels {unknown} are not in prepare.labels {list(labels)}; the split is stale, "
                          "run `dvc repro prepare`")
    empty = frame["question"].isna() | frame["context"].isna()
    if empty.any():
        raise PeftqaError(f"{path}: PMID {frame.loc[empty, 'pmid'].iloc[0]} has an empty question or context; "
                          "run `dvc repro prepare`, which drops such items")
    return frame


def input_texts(frame: pd.DataFrame) -> list[str]:
    """What tfidf_lr reads: the question, a space, the context (prepare joined the context paragraphs already)."""
    return (frame["question"].astype(str) + " " + frame["context"].astype(str)).tolist()


def predictions_frame(frame: pd.DataFrame, pred: Sequence[str], p_yes: Sequence[float] | float) -> pd.DataFrame:
    """Predictions in evaluate's format (PRED_COLUMNS); latency_s is NaN, as for an untimed item there."""
    return pd.DataFrame({"pmid": frame["pmid"].astype(str).values, "gold": frame["label"].astype(str).values,
                         "pred": list(pred), "p_yes": p_yes, "latency_s": np.nan}, columns=PRED_COLUMNS)


def score_predictions(preds: pd.DataFrame, labels: Sequence[str]) -> dict[str, float]:
    return classification_metrics(preds["gold"].tolist(), preds["pred"].tolist(), labels)


def majority_label(train_labels: Sequence[str], labels: Sequence[str]) -> str:
    """The most frequent train label; a tie goes to the label listed first in prepare.labels."""
    counts = pd.Series(list(train_labels)).value_counts()
    return max(labels, key=lambda label: (counts.get(label, 0), -labels.index(label)))


def predict_majority(splits: dict[str, pd.DataFrame], labels: Sequence[str]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Predictions on val and test, and the choice record. p_yes is the train share of 'yes' on every item."""
    train_labels = splits["train"]["label"].astype(str).tolist()
    label = majority_label(train_labels, list(labels))
    p_yes = train_labels.count("yes") / len(train_labels) if "yes" in labels else float("nan")
    preds = {split: predictions_frame(splits[split], [label] * len(splits[split]), p_yes) for split in SCORED_SPLITS}
    choice = {"label": label, "p_yes": p_yes,
              "train_counts": {name: train_labels.count(name) for name in labels}}
    return preds, choice


@dataclass(frozen=True)
class TfidfSetting:
    """One grid point: word n-grams (1, ngram_max), LogisticRegression's C and class weighting (none | balanced)."""
    ngram_max: int
    c: float
    class_weighting: str


def tfidf_grid(params: ReferencesParams) -> list[TfidfSetting]:
    """Every setting, simplest first (fewer n-grams, then smaller C, i.e. stronger regularisation, then 'none' before
    'balanced'), so that the first of equally scored settings is the simplest."""
    weightings = sorted(params.tfidf_class_weighting, key=("none", "balanced").index)
    return [TfidfSetting(ngram_max, c, weighting) for ngram_max in range(1, params.tfidf_ngram_max + 1)
            for c in sorted(params.tfidf_c_grid) for weighting in weightings]


def fit_tfidf_lr(texts: Sequence[str], gold: Sequence[str], setting: TfidfSetting) -> Pipeline:
    """Vectoriser and classifier fitted on `texts` alone (the train split): no val or test word enters the
    vocabulary."""
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, setting.ngram_max), sublinear_tf=TFIDF_SUBLINEAR_TF, min_df=TFIDF_MIN_DF),
        LogisticRegression(C=setting.c, class_weight=None if setting.class_weighting == "none" else "balanced",
                           max_iter=LR_MAX_ITER))
    return model.fit(list(texts), list(gold))


def predict_tfidf_lr(model: Pipeline, frame: pd.DataFrame) -> pd.DataFrame:
    """Predictions in evaluate's format; p_yes is the classifier's probability of 'yes' (NaN without that label)."""
    texts = input_texts(frame)
    classes = list(model.classes_)
    p_yes = model.predict_proba(texts)[:, classes.index("yes")] if "yes" in classes else np.nan
    return predictions_frame(frame, model.predict(texts).astype(str), p_yes)


def choose_tfidf_setting(train: pd.DataFrame, val: pd.DataFrame, params: ReferencesParams,
                         labels: Sequence[str]) -> tuple[TfidfSetting, list[dict]]:
    """The setting with the best val macro-F1 (ties: the simplest), and every grid point with its val scores."""
    train_texts, train_gold = input_texts(train), train["label"].astype(str).tolist()
    scores = []
    for setting in tfidf_grid(params):
        metrics = score_predictions(predict_tfidf_lr(fit_tfidf_lr(train_texts, train_gold, setting), val), labels)
        scores.append({**asdict(setting), "val_macro_f1": metrics["macro_f1"], "val_accuracy": metrics["accuracy"]})
    best = 0
    for i, row in enumerate(scores):
        if row["val_macro_f1"] > scores[best]["val_macro_f1"] + SCORE_TOLERANCE:
            best = i
    return tfidf_grid(params)[best], scores


def predict_tfidf_reference(splits: dict[str, pd.DataFrame], params: ReferencesParams,
                            labels: Sequence[str]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Choose on val, refit the chosen setting on train (deterministic: lbfgs), predict val and test."""
    setting, grid = choose_tfidf_setting(splits["train"], splits["val"], params, labels)
    model = fit_tfidf_lr(input_texts(splits["train"]), splits["train"]["label"].astype(str).tolist(), setting)
    preds = {split: predict_tfidf_lr(model, splits[split]) for split in SCORED_SPLITS}
    chosen = next(row for row in grid if TfidfSetting(row["ngram_max"], row["c"], row["class_weighting"]) == setting)
    choice = {"selected_on": "val macro_f1 (ties: fewer n-grams, then smaller C, then no class weighting)",
              "chosen": chosen, "grid": grid,
              "fixed": {"sublinear_tf": TFIDF_SUBLINEAR_TF, "min_df": TFIDF_MIN_DF, "solver": "lbfgs",
                        "max_iter": LR_MAX_ITER, "text": "question + ' ' + context", "fitted_on": "train"}}
    return preds, choice


def predict_references(splits: dict[str, pd.DataFrame], params: ReferencesParams,
                       labels: Sequence[str]) -> tuple[dict[str, dict[str, pd.DataFrame]], dict[str, dict]]:
    """Per reference in params.names: its val and test predictions, and its choice record."""
    predictors = {"majority": lambda: predict_majority(splits, labels),
                  "tfidf_lr": lambda: predict_tfidf_reference(splits, params, labels)}
    results = {name: predictors[name]() for name in params.names}
    return ({name: preds for name, (preds, _) in results.items()},
            {name: choice for name, (_, choice) in results.items()})
