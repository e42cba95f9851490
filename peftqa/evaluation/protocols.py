"""The repeated-seed and k-fold cross-validation protocols: which units (method x seed or fold) to run, each
trained and scored like the main run, its MLflow run a child of its protocol's parent run, finished units reused.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from peftqa.catalog import (
    CV_PRED_COLUMNS,
    FOLD_COLUMNS,
    FOLDS,
    SEEDS_SUMMARY_COLUMNS,
    SPLIT,
    UNIT,
    UNIT_PRED_COLUMNS,
    UNIT_PREDS,
)
from peftqa.errors import PeftqaError
from peftqa.evaluation.metrics import classification_metrics
from peftqa.evaluation.predictions import scored_split
from peftqa.evaluation.references import predict_references
from peftqa.evaluation.scoring import use_bf16
from peftqa.methods.attach import load_backbone
from peftqa.mlops import tracking
from peftqa.params import Params, flatten
from peftqa.stops import shielded
from peftqa.training.run import train_method

log = logging.getLogger(__name__)

SOURCE = "stages/protocols.py"


@dataclass(frozen=True)
class Unit:
    """One training of the plan: a method under one seed (protocol seeds) or on one fold (protocol cv)."""
    protocol: str  # seeds | cv
    method: str
    index: int     # the train seed, or the held-out fold

    @property
    def name(self) -> str:
        return f"{'seed' if self.protocol == 'seeds' else 'fold'}_{self.index}"


def unit_dir(unit: Unit) -> Path:
    """The unit's folder under reports/protocols/runs/: what it trained, its predictions and unit.json."""
    return UNIT.path(protocol=unit.protocol, method=unit.method, unit=unit.name).parent


def plan(params: Params) -> list[Unit]:
    """Every training both protocols need, seeds first; empty when both are off (the default)."""
    units = [Unit("seeds", method, seed) for seed in params.seeds for method in params.methods]
    units += [Unit("cv", method, fold) for fold in range(params.prepare.folds) for method in params.methods]
    return units


def fold_frames(pool: pd.DataFrame, folds: pd.DataFrame, fold: int, val_fraction: float, seed: int
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, val, test) for one fold: test is the fold, val a stratified share of the other folds."""
    fold_of = folds.set_index("pmid")["fold"]
    missing = sorted(set(pool["pmid"]) ^ set(fold_of.index))
    if missing:
        raise PeftqaError(f"{FOLDS.path()} and the splits in {FOLDS.folder_path()} cover different items (e.g. PMID "
                          f"{missing[0]}); they come from different prepare runs: re-run `dvc repro prepare`")
    in_fold = pool["pmid"].map(fold_of).to_numpy() == fold
    rest = pool.loc[~in_fold]
    train, val = train_test_split(rest, test_size=val_fraction, random_state=seed, stratify=rest["label"])
    return train.reset_index(drop=True), val.reset_index(drop=True), pool.loc[in_fold].reset_index(drop=True)


def unit_params(params: Params, unit: Unit) -> Params:
    """A seeds unit trains with its own seed; a cv unit with train.seed, like the main run."""
    if unit.protocol != "seeds":
        return params
    return dataclasses.replace(params, train=dataclasses.replace(params.train, seed=unit.index))


def unit_stamp(params: Params, unit: Unit, data_hashes: dict[str, str]) -> dict[str, object]:
    """What a finished unit's result depends on; a stored result is reused only if its stamp is equal."""
    return {"unit": dataclasses.asdict(unit), "data": data_hashes, **flatten(params.model, "model."),
            **flatten(params.train, "train."), **flatten(getattr(params.peft, unit.method), f"peft.{unit.method}."),
            "prepare.labels": ",".join(params.prepare.labels), "prepare.val_fraction": params.prepare.val_fraction,
            "prepare.seed": params.prepare.seed, "evaluate.batch_size": params.evaluate.batch_size}


def predict_items(params: Params, method: str, adapter_dir: Path, items: pd.DataFrame
                  ) -> tuple[pd.DataFrame, dict[str, float]]:
    """pmid, gold, pred, p_yes for `items`, batched as evaluate batches (no latency pass: the main evaluate stage
    measures that), and their classification metrics."""
    backbone = load_backbone(params.model, method, params.peft, params.prepare.labels, seed=params.train.seed,
                             device=params.train.device, adapter_dir=adapter_dir)
    preds, metrics, _ = scored_split(backbone, items, params, use_bf16(params.model.dtype, backbone.device))
    return preds[UNIT_PRED_COLUMNS], metrics


class ParentRuns:
    """One MLflow parent run per protocol of this invocation, opened when its first unit trains: the seed and fold
    runs nest under it in the UI. A protocol whose units are all reused keeps the parent that holds them."""

    def __init__(self, params: Params, previous: dict[str, str]):
        self.params, self.previous, self.opened = params, previous, {}

    @shielded()  # a stop signal waits: see peftqa.stops.shielded
    def get(self, protocol: str) -> str:
        if protocol not in self.opened:
            client, experiment_id = tracking.connect(self.params.mlflow.experiment)
            name = (f"seeds {','.join(map(str, self.params.seeds))}" if protocol == "seeds"
                    else f"cv {self.params.prepare.folds}-fold")
            tags = tracking.run_tags("protocols", self.params.model.name_or_path, "", ",".join(self.params.methods),
                                     SOURCE)
            self.opened[protocol] = client.create_run(experiment_id, run_name=name,
                                                      tags={**tags, "protocol": protocol}).info.run_id
            tracking.log_params(client, self.opened[protocol], {"protocol": protocol, "seeds": list(self.params.seeds),
                                                                "prepare.folds": self.params.prepare.folds,
                                                                "methods": list(self.params.methods)})
        return self.opened[protocol]

    def ids(self, protocols: set[str]) -> dict[str, str]:
        """{protocol: parent run id} for the protocols in the plan: this invocation's, else the stored one."""
        return {p: self.opened.get(p) or self.previous[p] for p in sorted(protocols)
                if p in self.opened or p in self.previous}

    @shielded()
    def close(self, status: str, metrics: dict[str, object] | None = None) -> None:
        client = tracking.make_client()
        for protocol, run_id in self.opened.items():
            if metrics and protocol in metrics:  # e.g. seeds.lora.macro_f1_mean, cv.base.accuracy
                flat = {f"{method}.{key}": value for method, values in metrics[protocol].items()
                        for key, value in values.items() if isinstance(value, (int, float))}
                tracking.log_metrics(client, run_id, flat, step=0, timestamp_ms=int(time.time() * 1000))
            client.set_terminated(run_id, status=status)

    def fail(self, err: BaseException) -> None:
        """End the parents as the error `err` ends the stage, as a training's run is ended (tracking.end_run_after)."""
        client = tracking.make_client()
        for run_id in self.opened.values():
            tracking.end_run_after(client, run_id, err)


def unit_sources(unit: Unit) -> dict[str, str] | None:
    """Where a unit's train and val items come from, for its MLflow datasets; None for a seeds unit, which trains on
    the main split: train_method's default sources."""
    if unit.protocol == "seeds":
        return None
    return {split: f"{FOLDS.path()} (all but fold {unit.index}: {split})" for split in ("train", "val")}


def run_unit(params: Params, unit: Unit, train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame,
             work: Path, stamp: dict, parents: ParentRuns) -> tuple[pd.DataFrame, dict]:
    """The unit's test predictions and summary, reusing a finished run with the same stamp."""
    if UNIT.exists(into=work) and UNIT_PREDS.exists(into=work):
        stored = UNIT.read(into=work)
        if stored.get("stamp") == json.loads(json.dumps(stamp)):
            log.info("%s: reusing the finished run in %s", unit, work)
            return UNIT_PREDS.read(into=work), stored["summary"]
        shutil.rmtree(work)  # made by other params or data: start over
    summary = train_method(params, unit.method, train, val, work, run_name=f"{unit.method} {unit.name}",
                           extra_tags={"protocol": unit.protocol, "protocol_unit": unit.name},
                           parent_run_id=parents.get(unit.protocol), sources=unit_sources(unit))
    preds, metrics = predict_items(params, unit.method, work / "adapter", test)
    test_source = (str(SPLIT.path(split="test")) if unit.protocol == "seeds" else f"{FOLDS.path()} (fold {unit.index})")
    test_set = tracking.split_dataset(test, "test", test_source)
    tracking.log_evaluation(tracking.make_client(), summary,
                            {"test": {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}},
                            {"test": test_set}, figures={})
    summary = {**summary, "n_test": len(preds), "test_accuracy": metrics["accuracy"],
               "test_macro_f1": metrics["macro_f1"]}
    UNIT_PREDS.write(preds, into=work)
    UNIT.write({"stamp": stamp, "summary": summary}, into=work)  # written last: marks the unit finished
    shutil.rmtree(work / "adapter")  # logged to MLflow with the run; keeps reports/ small
    return preds, summary


def seeds_summary(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Mean and sample std (ddof=1) per method over seeds, and the paired per-seed gain over the baseline."""
    columns = SEEDS_SUMMARY_COLUMNS
    if runs.empty:
        return pd.DataFrame(columns=columns)
    reference = runs.loc[runs["method"] == baseline].set_index("seed")["macro_f1"]
    runs = runs.assign(delta_macro_f1=runs["macro_f1"] - runs["seed"].map(reference))
    grouped = runs.groupby("method", sort=False)
    table = pd.DataFrame({
        "n_seeds": grouped.size(),
        "accuracy_mean": grouped["accuracy"].mean(), "accuracy_std": grouped["accuracy"].std(ddof=1),
        "macro_f1_mean": grouped["macro_f1"].mean(), "macro_f1_std": grouped["macro_f1"].std(ddof=1),
        "delta_macro_f1_mean": grouped["delta_macro_f1"].mean(),
        "delta_macro_f1_std": grouped["delta_macro_f1"].std(ddof=1),
    }).reset_index()
    return table[columns]


def cv_fold_metrics(preds: pd.DataFrame, labels: tuple[str, ...]) -> pd.DataFrame:
    """Accuracy and macro-F1 per (method, fold), then per method over the pooled predictions (fold 'pooled')."""
    rows = []
    for method, of_method in preds.groupby("method", sort=False):
        groups = [(str(fold), frame) for fold, frame in of_method.groupby("fold")] + [("pooled", of_method)]
        for fold, frame in groups:
            m = classification_metrics(frame["gold"].tolist(),
                                       [p if isinstance(p, str) else None for p in frame["pred"]], labels)
            rows.append({"method": method, "fold": fold, "n": len(frame), "accuracy": m["accuracy"],
                         "macro_f1": m["macro_f1"]})
    return pd.DataFrame(rows, columns=FOLD_COLUMNS)


def metrics_json(seeds: pd.DataFrame, folds: pd.DataFrame) -> dict[str, object]:
    """The DVC metrics file: per method, seeds mean/std and the pooled CV numbers (absent protocols are omitted)."""
    out: dict[str, object] = {}
    for row in seeds.to_dict("records"):
        out.setdefault("seeds", {})[row["method"]] = {k: row[k] for k in
                                                       ("n_seeds", "macro_f1_mean", "macro_f1_std", "accuracy_mean",
                                                        "accuracy_std")}
    for row in folds.loc[folds["fold"] == "pooled"].to_dict("records"):
        fold_f1 = folds.loc[(folds["method"] == row["method"]) & (folds["fold"] != "pooled"), "macro_f1"]
        out.setdefault("cv", {})[row["method"]] = {"n": row["n"], "pooled_accuracy": row["accuracy"],
                                                   "pooled_macro_f1": row["macro_f1"],
                                                   "fold_macro_f1_std": float(fold_f1.std(ddof=1))}
    return out


def run_units(params: Params, units: list[Unit], splits: dict[str, pd.DataFrame], hashes: dict[str, str],
              parents: ParentRuns) -> tuple[list[dict], list[pd.DataFrame]]:
    """Train (or reuse) every unit: the seed rows, and the pooled-CV prediction frames (references included)."""
    seed_rows, cv_preds, fold_references = [], [], set()
    for i, unit in enumerate(units, 1):
        log.info("protocols: training %d of %d: %s %s %s", i, len(units), unit.protocol, unit.method, unit.name)
        if unit.protocol == "seeds":
            train, val, test = splits["train"], splits["val"], splits["test"]
        else:
            pool = pd.concat(splits.values(), ignore_index=True)
            train, val, test = fold_frames(pool, FOLDS.read(), unit.index,
                                           params.prepare.val_fraction, params.prepare.seed)
        if params.train.limit_train:
            train = train.iloc[: params.train.limit_train]
        p = unit_params(params, unit)
        work = unit_dir(unit)
        preds, summary = run_unit(p, unit, train, val, test, work, unit_stamp(p, unit, hashes), parents)
        if unit.protocol == "seeds":
            seed_rows.append({"method": unit.method, "seed": unit.index, "n": summary["n_test"],
                              "accuracy": summary["test_accuracy"], "macro_f1": summary["test_macro_f1"],
                              **{k: summary[k] for k in ("best_epoch", "best_val_macro_f1", "train_seconds",
                                                         "mlflow_run_id")}})
        else:
            cv_preds.append(preds.assign(method=unit.method, fold=unit.index)[CV_PRED_COLUMNS])
            if unit.index not in fold_references:  # references.per_fold, fitted on this fold's train and val
                fold_references.add(unit.index)
                refs, _ = predict_references({"train": train, "val": val, "test": test}, params.references,
                                             params.prepare.labels)
                cv_preds += [frames["test"].assign(method=name, fold=unit.index)[CV_PRED_COLUMNS]
                             for name, frames in refs.items()]
    return seed_rows, cv_preds
