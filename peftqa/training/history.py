"""models/<method>/history.csv: one row per epoch (epoch 0 = the untrained start). The training writes it with
these columns; the curves and report stages read it through read_history.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from peftqa.catalog import HISTORY


def history_columns(labels: tuple[str, ...]) -> list[str]:
    return ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1",
            *[f"val_f1_{label}" for label in labels], "seconds"]


def read_history(method: str, root: str | Path = ".") -> pd.DataFrame:
    """models/<method>/history.csv with the columns the catalog's HISTORY requires; the one reader of it (stage report
    uses it too), so a missing, empty or foreign history gets the same message whichever stage meets it."""
    return HISTORY.read(root, method=method)
