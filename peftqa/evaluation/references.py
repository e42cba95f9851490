"""Reference rows that involve no model training: the majority class, TF-IDF + logistic regression with its
setting chosen on val, base_calibrated: the zero-shot base's scores with one offset chosen on val, and few_shot: the
zero-shot base with solved train examples in its prompt (scored by stage few_shot, peftqa.evaluation.few_shot). Scored
on the same items, in evaluate's prediction format, so stats and report treat them like methods."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from peftqa.catalog import (
    FEW_SHOT_PREDS,
    PREDS,
    SCORED_SPLITS,
    SPLIT,
    SPLIT_COLUMNS,
    TRAIN_SUMMARY,
    predictions_frame,
)
from peftqa.errors import PeftqaError
from peftqa.evaluation.metrics import classification_metrics
from peftqa.params import BASE_CALIBRATED, FEW_SHOT, ReferencesParams
from peftqa.params.traits import traits

TFIDF_SUBLINEAR_TF = True  # 1 + log(tf): a word repeated in a long abstract does not swamp the question's words
TFIDF_MIN_DF = 2  # drop terms seen in a single train item: with 712 items they are mostly noise (and PMID-like tokens)
LR_MAX_ITER = 5000  # lbfgs iterations; enough to converge at the largest C of the grid
SCORE_TOLERANCE = 1e-12  # val scores closer than this are a tie, won by the simpler setting (earlier in tfidf_grid)
P_YES_CLIP = 1e-12  # p_yes is clipped to [this, 1 - this] before its logit: evaluate's float32 p_yes is exactly 1
                   # past a margin of about 17; such items keep a finite margin, tied as they are in the file
OUTER_MARGIN = 1.0  # base_calibrated's all-yes and all-no candidates: the threshold this far beyond the extreme margins


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


# -----------------------------------------------------------------------------
# base_calibrated: the zero-shot base, its margin moved by one offset chosen on val


def base_calibrated_undefined(methods: Sequence[str], labels: Sequence[str], scoring: str,
                              family: str | None = None) -> str | None:
    """Why base_calibrated is not defined for this run (the sentence the report prints), or None when it is. Without
    `family` (train@base's, in its train_summary.json) only params are checked: the stage reads base's files once
    they allow the row. `scoring` (model.scoring) matters to the generative families alone."""
    if sorted(labels) != ["no", "yes"]:
        return (f"not defined for prepare.labels {list(labels)}: it needs exactly the two labels yes and no (its "
                "margin is log p(yes) - log p(no))")
    if "base" not in methods:
        return "not defined: base is not in methods, so there is no zero-shot prediction to calibrate"
    if family is None:
        return None
    if traits(family, f"{TRAIN_SUMMARY.path(method='base')} (run `dvc repro train@base`)").has_probe:
        return f"not defined for the {family} family: its base is a trained probe, not a zero-shot model"
    if scoring == "generate":
        return "not defined under model.scoring: generate: the zero-shot base writes no p_yes to calibrate"
    return None


def margins_from_p_yes(p_yes: Sequence[float]) -> np.ndarray:
    """log p(yes) - log p(no) of the two-label verbalizer, whose label probabilities sum to 1: logit(p_yes)."""
    p = np.clip(np.asarray(p_yes, dtype=float), P_YES_CLIP, 1 - P_YES_CLIP)
    return np.log(p) - np.log1p(-p)


def offset_candidates(margins: np.ndarray) -> np.ndarray:
    """Every offset δ worth trying, in tie-break order (smallest |δ| first, then the smaller δ): 0, and -t for each
    threshold t at a midpoint between sorted distinct margins, below them all (all yes) and above them all (all no).
    Any other δ predicts the items exactly as one of these."""
    distinct = np.unique(margins)
    thresholds = np.concatenate([[distinct[0] - OUTER_MARGIN], (distinct[:-1] + distinct[1:]) / 2,
                                 [distinct[-1] + OUTER_MARGIN]])
    deltas = np.unique(np.concatenate([[0.0], -thresholds]))
    return deltas[np.lexsort((deltas, np.abs(deltas)))]


def predict_with_offset(margins: np.ndarray, delta: float) -> list[str]:
    return np.where(margins + delta > 0, "yes", "no").tolist()


def choose_offset(margins: np.ndarray, gold: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """The δ with the best macro-F1 of `gold` (ties: the earliest in offset_candidates' order, so δ = 0, the zero-shot
    model as it is, wins any tie it is in), its macro-F1, and the macro-F1 at δ = 0."""
    candidates = offset_candidates(margins)
    scores = [classification_metrics(gold, predict_with_offset(margins, delta), labels)["macro_f1"]
              for delta in candidates]
    best = 0
    for i, score in enumerate(scores):
        if score > scores[best] + SCORE_TOLERANCE:
            best = i
    return {"delta": float(candidates[best]), "macro_f1": scores[best], "macro_f1_at_zero": scores[0],
            "candidates": len(candidates)}


def aligned_rows(preds: pd.DataFrame, frame: pd.DataFrame, path: str, split: str, fix: str) -> pd.DataFrame:
    """A stage's predictions (evaluate's columns) in the split's item order; predictions of other items or gold
    labels are stale, and the error names `path` and the command that mends it (`fix`)."""
    by_pmid = preds.assign(pmid=preds["pmid"].astype(str)).drop_duplicates("pmid").set_index("pmid")
    pmids = frame["pmid"].astype(str)
    if len(preds) != len(frame) or set(by_pmid.index) != set(pmids):
        raise PeftqaError(f"{path} scores other items than {SPLIT.path(split=split)} ({len(preds)} rows, the split "
                          f"{len(frame)} items); it is stale: run `{fix}`")
    rows = by_pmid.loc[pmids]
    if (rows["gold"].astype(str).values != frame["label"].astype(str).values).any():
        raise PeftqaError(f"{path}: gold labels differ from {SPLIT.path(split=split)}; run `{fix}`")
    return rows


def aligned_p_yes(base: pd.DataFrame, frame: pd.DataFrame, split: str) -> np.ndarray:
    """evaluate@base's p_yes in the split's item order; predictions of other items or gold labels are stale."""
    path = str(PREDS.path(method="base", split=split))
    p_yes = aligned_rows(base, frame, path, split, "dvc repro evaluate@base")["p_yes"].to_numpy(dtype=float)
    if np.isnan(p_yes).any():
        raise PeftqaError(f"{path}: {int(np.isnan(p_yes).sum())} of {len(p_yes)} items have no p_yes, which "
                          "base_calibrated needs (model.scoring: verbalizer writes it for every item); it is stale, "
                          "run `dvc repro evaluate@base`")
    return p_yes


def predict_base_calibrated(splits: dict[str, pd.DataFrame], base_preds: dict[str, pd.DataFrame],
                            labels: Sequence[str]) -> tuple[dict[str, pd.DataFrame], dict]:
    """δ chosen on val alone (choose_offset), then applied to val and test: yes where margin + δ > 0, p_yes =
    sigmoid(margin + δ). Test's scores are read only after δ is fixed."""
    val = splits["val"]
    val_margins = margins_from_p_yes(aligned_p_yes(base_preds["val"], val, "val"))
    offset = choose_offset(val_margins, val["label"].astype(str).tolist(), labels)
    preds = {}
    for split in SCORED_SPLITS:
        margins = margins_from_p_yes(aligned_p_yes(base_preds[split], splits[split], split))
        preds[split] = predictions_frame(splits[split], predict_with_offset(margins, offset["delta"]),
                                         1 / (1 + np.exp(-(margins + offset["delta"]))))
    choice = {"delta": offset["delta"], "val_macro_f1": offset["macro_f1"],
              "val_macro_f1_at_zero": offset["macro_f1_at_zero"], "candidates": offset["candidates"],
              "selected_on": "val macro_f1 over the offsets 0, and the midpoints between sorted distinct val margins "
                             "and one below and one above them all (ties: the smallest |delta|, then the smaller)",
              "margin": f"logit(p_yes) = log p(yes) - log p(no) of {PREDS.path(method='base', split='<split>')}",
              "rule": "yes where margin + delta > 0; p_yes = sigmoid(margin + delta)"}
    return preds, choice


# -----------------------------------------------------------------------------
# few_shot: stage few_shot's predictions (the zero-shot base with solved examples in its prompt)


def predict_few_shot(splits: dict[str, pd.DataFrame], few_shot: dict[str, pd.DataFrame], choice: dict
                     ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Stage few_shot's val and test predictions (its draw chosen on val there), in the splits' order, and its
    choice record as it wrote it."""
    preds = {}
    for split in SCORED_SPLITS:
        rows = aligned_rows(few_shot[split], splits[split], str(FEW_SHOT_PREDS.path(split=split)), split,
                            "dvc repro few_shot")
        preds[split] = predictions_frame(splits[split], rows["pred"].astype(str).tolist(),
                                         rows["p_yes"].to_numpy(dtype=float))
    return preds, choice


# -----------------------------------------------------------------------------
# every reference


def predict_references(splits: dict[str, pd.DataFrame], params: ReferencesParams, labels: Sequence[str],
                       base_preds: dict[str, pd.DataFrame] | None = None,
                       few_shot: tuple[dict[str, pd.DataFrame], dict] | None = None
                       ) -> tuple[dict[str, dict[str, pd.DataFrame]], dict[str, dict]]:
    """Per reference in params.names: its val and test predictions, and its choice record. base_calibrated needs
    evaluate@base's val and test predictions (`base_preds`), few_shot stage few_shot's predictions and choice record
    (`few_shot`); without them each is left out (its caller says why)."""
    predictors = {"majority": lambda: predict_majority(splits, labels),
                  "tfidf_lr": lambda: predict_tfidf_reference(splits, params, labels),
                  BASE_CALIBRATED: lambda: predict_base_calibrated(splits, base_preds, labels),
                  FEW_SHOT: lambda: predict_few_shot(splits, *few_shot)}
    given = {BASE_CALIBRATED: base_preds is not None, FEW_SHOT: few_shot is not None}
    results = {name: predictors[name]() for name in params.names if given.get(name, True)}
    return ({name: preds for name, (preds, _) in results.items()},
            {name: choice for name, (_, choice) in results.items()})
