"""models/<method>/history.csv: one row per epoch (epoch 0 = the untrained start). The training writes it with
these columns; the curves and report stages read it through read_history.
"""
from __future__ import annotations

import pandas as pd

from peftqa.errors import PeftqaError
from peftqa.paths import MODELS_DIR

METRICS = ("val_macro_f1", "train_loss", "val_loss")  # what read_history requires, and the curves stage draws


def history_columns(labels: tuple[str, ...]) -> list[str]:
    return ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1",
            *[f"val_f1_{label}" for label in labels], "seconds"]


def read_history(method: str) -> pd.DataFrame:
    """models/<method>/history.csv with the columns METRICS need; the one reader of it (stage report uses it too), so
    a missing, empty or foreign history gets the same message whichever stage meets it."""
    path = MODELS_DIR / method / "history.csv"
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise PeftqaError(f"{path} not found: train the method first (dvc repro train@{method})") from None
    except pd.errors.EmptyDataError:
        raise PeftqaError(f"{path}: empty file; retrain the method (dvc repro train@{method})") from None
    missing = [column for column in ("epoch", *METRICS) if column not in frame.columns]
    if missing:
        raise PeftqaError(f"{path}: columns {missing} are missing (it has {list(frame.columns)}); it is not a "
                          f"history written by stages/train.py: retrain the method (dvc repro train@{method})")
    return frame
