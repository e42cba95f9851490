"""The catalog of the pipeline's outputs: every file a dvc.yaml stage writes is named once here, with its path, its
format, its columns where they are fixed, its reader and its writer. Stages, the report, `peftqa docs` and the studies
ask it for a file by its name (PREDS, TRAIN_SUMMARY, ...) and never spell a file name or a format themselves, so moving
a file changes one line (Kedro's Data Catalog).

Paths are relative to a root: the project root, where every stage runs (as dvc.yaml's commands do), or a study's copy
of a run laid out like it (reports/smollm2/). `into` names a folder that stands for the output's dvc.yaml out
folder (or its own folder): a temporary folder that replace_dir_atomic swaps into place whole, or a protocol unit's
work folder, which holds what train@<method> writes into models/<method>/.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from peftqa.errors import PeftqaError
from peftqa.files import replace_dir_atomic, write_csv_atomic, write_json_atomic, write_text_atomic

SPLITS = ("train", "val", "test")  # what stage prepare writes
SCORED_SPLITS = ("val", "test")  # what evaluate, few_shot and references score
SPLIT_COLUMNS = ["pmid", "question", "context", "label"]
# a prediction per item, as evaluate@<method>, few_shot and references write it: p_yes is the verbalizer's probability
# of "yes" (NaN without that label or under model.scoring: generate), latency_s the item scored alone in seconds (NaN
# where nothing is timed); an empty pred is a generation that maps to no label
PRED_COLUMNS = ["pmid", "gold", "pred", "p_yes", "latency_s"]
PRED_STRINGS = ("pmid", "gold", "pred")  # read as strings: identifiers and labels ("0123" keeps its 0)
UNIT_PRED_COLUMNS = ["pmid", "gold", "pred", "p_yes"]  # a protocol unit's test predictions: no latency pass
CV_PRED_COLUMNS = ["method", "fold", *UNIT_PRED_COLUMNS]
STATS_COLUMNS = ["method", "reference", "test", "metric", "n", "effect", "ci_low", "ci_high", "p_value", "p_holm",
                 "b", "c"]
SEED_COLUMNS = ["method", "seed", "n", "accuracy", "macro_f1", "best_epoch", "best_val_macro_f1", "train_seconds",
                "mlflow_run_id"]
SEEDS_SUMMARY_COLUMNS = ["method", "n_seeds", "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std",
                         "delta_macro_f1_mean", "delta_macro_f1_std"]
FOLD_COLUMNS = ["method", "fold", "n", "accuracy", "macro_f1"]
HISTORY_METRICS = ("val_macro_f1", "train_loss", "val_loss")  # what every history has, and the curves stage draws


class _Named(dict):
    """Fields for a message: one not given reads <field>."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


class MissingOutput(PeftqaError, FileNotFoundError):
    """An output that is not there: one paragraph naming the file and the command that makes it. It is a
    FileNotFoundError too, so a reader that knows better why the file is needed can say so instead."""


@dataclass(frozen=True)
class Output:
    """One kind of output: `folder`/`file` relative to the root, each {field} filled in by path()'s keywords.

    `whole` is the folder its stage writes whole (replace_dir_atomic), if any: `into` stands for it. dvc.yaml names
    that folder, or the file itself, as an out (or metric, or plot). `make` is the command that writes it. `columns`
    (csv) are its columns where they are fixed, in order (the writer checks); `required` those its readers rely on
    (the reader checks; a file made by another version of the pipeline may lack them). `strings` are the columns read
    as strings."""
    folder: str
    file: str
    format: str  # csv | json | md | npz | png | folder
    make: str
    whole: str = ""
    columns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    strings: tuple[str, ...] = ()

    @property
    def pattern(self) -> str:
        return f"{self.folder}/{self.file}"

    @property
    def within(self) -> str:
        """Its pattern within the folder that `into` stands for: the folder written whole, else its own."""
        return self.pattern[len(self.whole) + 1:] if self.whole else self.file

    def path(self, root: str | Path = ".", into: str | Path | None = None, **fields: object) -> Path:
        """Where it is under `root`, or in the folder `into` (see `within`)."""
        if into is not None:
            return Path(into) / self.within.format(**fields)
        return Path(root) / self.pattern.format(**fields)

    def folder_path(self, root: str | Path = ".", **fields: object) -> Path:
        return Path(root) / self.folder.format(**fields)

    def exists(self, root: str | Path = ".", into: str | Path | None = None, **fields: object) -> bool:
        return self.path(root, into, **fields).exists()

    def read(self, root: str | Path = ".", into: str | Path | None = None, **fields: object) -> object:
        """The file as its format reads: a DataFrame (csv), an object (json) or text (md). A missing file raises
        MissingOutput, an empty csv a PeftqaError; either names the file and `make`."""
        path = self.path(root, into, **fields)
        make = self.make.format_map(_Named(fields))
        try:
            if self.format == "csv":
                return self.checked(pd.read_csv(path, dtype=dict.fromkeys(self.strings, str) or None), path, make)
            if self.format == "json":
                return json.loads(path.read_text(encoding="utf-8"))
            if self.format == "md":
                return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MissingOutput(f"{path} not found; run `{make}` first") from None
        except pd.errors.EmptyDataError:
            raise PeftqaError(f"{path}: empty file; run `{make}`") from None
        raise TypeError(f"{self.pattern}: a {self.format} output has no reader here")

    def checked(self, frame: pd.DataFrame, path: Path, make: str) -> pd.DataFrame:
        missing = [column for column in self.required if column not in frame.columns]
        if missing:
            raise PeftqaError(f"{path}: columns {missing} are missing (it has {list(frame.columns)}); it was not "
                              f"written by this version of the pipeline: run `{make}`")
        return frame

    def write(self, value: object, root: str | Path = ".", into: str | Path | None = None,
              **fields: object) -> Path:
        """Write `value` atomically: a DataFrame (csv, its columns checked), a JSON-able object, text (md), or a
        function that fills a folder (folder: swapped into place whole). Returns the path."""
        path = self.path(root, into, **fields)
        if self.format == "csv":
            if self.columns and tuple(value.columns) != self.columns:
                raise ValueError(f"{self.pattern}: columns {list(value.columns)}, expected {list(self.columns)}")
            write_csv_atomic(path, value)
        elif self.format == "json":
            write_json_atomic(path, value)
        elif self.format == "md":
            write_text_atomic(path, value)
        elif self.format == "folder":
            replace_dir_atomic(value, path)
        else:
            raise TypeError(f"{self.pattern}: a {self.format} output is written by its own code, at path()")
        return path

    def regex(self, choices: Mapping[str, str] | None = None, of: str = "pattern") -> str:
        """The pattern (or `of` = "file") as a regular expression: each {field} any name without a slash, or the
        alternatives `choices` gives it."""
        parts = re.split(r"\{(\w+)\}", getattr(self, of))
        return "".join(re.escape(part) if i % 2 == 0 else (choices or {}).get(part, r"[^/]+")
                       for i, part in enumerate(parts))


def preds(folder: str, make: str, whole: str = "") -> Output:
    return Output(folder, "preds_{split}.csv", "csv", make, whole, tuple(PRED_COLUMNS), strings=PRED_STRINGS)


def metrics(folder: str, make: str, whole: str = "") -> Output:
    return Output(folder, "metrics_{split}.json", "json", make, whole)


def csv(folder: str, file: str, make: str, whole: str = "", columns: list[str] | tuple[str, ...] = (),
        **kw: object) -> Output:
    return Output(folder, file, "csv", make, whole, tuple(columns), **kw)


def js(folder: str, file: str, make: str, whole: str = "") -> Output:
    return Output(folder, file, "json", make, whole)


# -----------------------------------------------------------------------------
# stage fetch and stage prepare: data/

RAW_JSON = js("data/raw", "ori_pqal.json", "dvc repro fetch", "data/raw")  # PubMedQA's PQA-L, as downloaded
GROUND_TRUTH_JSON = js("data/raw", "test_ground_truth.json", "dvc repro fetch", "data/raw")  # protocol: official
SPLIT = csv("data/processed", "{split}.csv", "dvc repro prepare", columns=SPLIT_COLUMNS,
            strings=("pmid", "label"))
FOLDS = csv("data/processed", "folds.csv", "dvc repro prepare", columns=("pmid", "label", "fold"),
            strings=("pmid", "label"))  # header only when prepare.folds is 0
SPLIT_STATS = csv("data/processed", "split_stats.csv", "dvc repro prepare", required=("split", "n"))
PREPARE_METRICS = js("data/processed", "prepare_metrics.json", "dvc repro prepare")  # DVC metrics

# stage embed: the frozen encoder's features (no .npz for a family without a probe; features.json says why)
FEATURES = Output("data/features", "{split}.npz", "npz", "dvc repro embed", "data/features")
FEATURES_META = js("data/features", "features.json", "dvc repro embed", "data/features")

# -----------------------------------------------------------------------------
# stage train@<method>: models/<method>/ (a protocol unit writes the same files into its own folder)

ADAPTER = Output("models/{method}", "adapter", "folder", "dvc repro train@{method}")
RESOLVED_CONFIG = js("models/{method}", "resolved_config.json", "dvc repro train@{method}")
# one row per epoch, epoch 0 = the untrained start (its columns: training.history.history_columns)
HISTORY = csv("models/{method}", "history.csv", "dvc repro train@{method}", required=("epoch", *HISTORY_METRICS))
TRAIN_SUMMARY = js("models/{method}", "train_summary.json", "dvc repro train@{method}")  # DVC metrics

# stage evaluate@<method>: reports/eval/<method>/
PREDS = preds("reports/eval/{method}", "dvc repro evaluate@{method}")
METRICS = metrics("reports/eval/{method}", "dvc repro evaluate@{method}")  # DVC metrics
CONFUSION = csv("reports/eval/{method}", "cm_{split}.csv", "dvc repro evaluate@{method}",
                columns=("gold", "pred", "count"))

# stage curves: one file per metric of HISTORY_METRICS, one column per method
CURVE = js("reports/curves", "{metric}.json", "dvc repro curves", "reports/curves")

# stage few_shot: reports/few_shot/, written whole
FEW_SHOT_PREDS = preds("reports/few_shot", "dvc repro few_shot", "reports/few_shot")
FEW_SHOT_METRICS = metrics("reports/few_shot", "dvc repro few_shot", "reports/few_shot")
FEW_SHOT_DRAW = csv("reports/few_shot", "preds_val_draw{draw}.csv", "dvc repro few_shot", "reports/few_shot",
                    PRED_COLUMNS, strings=PRED_STRINGS)  # every draw's val predictions
FEW_SHOT_CHOICES = js("reports/few_shot", "choices.json", "dvc repro few_shot", "reports/few_shot")

# stage references: reports/references/, written whole, and its DVC metrics
REFERENCE_PREDS = preds("reports/references/{reference}", "dvc repro references", "reports/references")
REFERENCE_METRICS = metrics("reports/references/{reference}", "dvc repro references", "reports/references")
REFERENCE_CHOICES = js("reports/references", "choices.json", "dvc repro references", "reports/references")
REFERENCES_SUMMARY = js("reports", "references_metrics.json", "dvc repro references")

# stage stats: reports/stats/
STATS = csv("reports/stats", "stats_eval_test.csv", "dvc repro stats", columns=STATS_COLUMNS)
STATS_MD = Output("reports/stats", "stats_eval_test.md", "md", "dvc repro stats")
STATS_SUMMARY = js("reports/stats", "stats_summary.json", "dvc repro stats")  # DVC metrics

# stage protocols: reports/protocols/ (persisted: finished units are reused) and its DVC metrics
PROTOCOLS = "reports/protocols"
SEEDS_TEST = csv(PROTOCOLS, "seeds_test.csv", "dvc repro protocols", "", SEED_COLUMNS)
SEEDS_SUMMARY = csv(PROTOCOLS, "seeds_summary.csv", "dvc repro protocols", "", SEEDS_SUMMARY_COLUMNS)
CV_PREDS = csv(PROTOCOLS, "cv_preds.csv", "dvc repro protocols", "", CV_PRED_COLUMNS)
CV_FOLDS = csv(PROTOCOLS, "cv_folds.csv", "dvc repro protocols", "", FOLD_COLUMNS)  # fold "pooled": all
CV_STATS = csv(PROTOCOLS, "cv_stats.csv", "dvc repro protocols", "", STATS_COLUMNS)
PARENT_RUNS = js(PROTOCOLS, "parent_runs.json", "dvc repro protocols")  # {protocol: MLflow run id}
UNIT_DIR = PROTOCOLS + "/runs/{protocol}/{method}/{unit}"  # one training: a seed_<s> or fold_<k> unit
UNIT = js(UNIT_DIR, "unit.json", "dvc repro protocols")  # {stamp, summary}: written last, marks it done
UNIT_PREDS = csv(UNIT_DIR, "preds_test.csv", "dvc repro protocols", "", UNIT_PRED_COLUMNS, strings=PRED_STRINGS)
PROTOCOLS_METRICS = js("reports", "protocols_metrics.json", "dvc repro protocols")

# stage report
FIGURE = Output("reports/figures", "{figure}", "png", "dvc repro report")  # names: report.figures
REPORT = Output("reports", "report.md", "md", "dvc repro report")
SUBMISSION = js("reports/submission", "{method}.json", "dvc repro report")  # PMID -> label

CATALOG: dict[str, Output] = {name: value for name, value in globals().items() if isinstance(value, Output)}


# -----------------------------------------------------------------------------
# the readers and the frame that more than one stage shares


def read_split(split: str, limit: int = 0, root: str | Path = ".") -> pd.DataFrame:
    """A prepared split (pmid, question, context, label; pmids and labels stay strings), its first `limit` rows
    when limit > 0 (train.limit_train, evaluate.limit_items: demo slices that never change the split itself)."""
    frame = SPLIT.read(root, split=split)
    return frame.iloc[:limit] if limit else frame


def predictions_frame(frame: pd.DataFrame, pred: list, p_yes: object = np.nan,
                      latency_s: object = np.nan) -> pd.DataFrame:
    """Predictions of the split `frame`'s items in PRED_COLUMNS: its pmids and gold labels, `pred` per item,
    p_yes and latency_s each per item or one value for all (NaN: not scored so, not timed)."""
    return pd.DataFrame({"pmid": frame["pmid"].astype(str).values, "gold": frame["label"].astype(str).values,
                         "pred": list(pred),
                         "p_yes": p_yes, "latency_s": latency_s}, columns=PRED_COLUMNS)
