"""Figures shared by stages: method colours and the confusion matrix (evaluate logs it to MLflow, report shows it).

Kept apart from stages/report.py so that editing the report does not make DVC re-run every evaluate stage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display; must come before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from peftqa.evaluation.metrics import UNMAPPED  # noqa: E402
from peftqa.files import atomic_path  # noqa: E402
from peftqa.params.knobs import METHODS  # noqa: E402

DPI = 120  # sharp in a browser, small in git


def method_color(method: str) -> tuple[float, float, float]:
    """One colour per method, fixed by registry order so a method keeps its colour whatever params.methods lists."""
    palette = matplotlib.colormaps["tab10"].colors
    return palette[list(METHODS).index(method) % len(palette)]


def plot_confusion(confusion: pd.DataFrame, labels: Sequence[str], method: str, split: str = "test") -> Figure:
    """Counts with gold on y and predicted on x; the 'unmapped' column only when some generation mapped to no label."""
    matrix = (confusion.pivot(index="gold", columns="pred", values="count")
              .reindex(index=list(labels), columns=[*labels, UNMAPPED], fill_value=0).fillna(0).astype(int))
    if matrix[UNMAPPED].sum() == 0:
        matrix = matrix.drop(columns=UNMAPPED)
    counts = matrix.to_numpy()  # (gold labels, predicted labels [+ unmapped])
    fig, ax = plt.subplots(figsize=(1.3 * counts.shape[1] + 2, 1.1 * counts.shape[0] + 1.6), layout="constrained")
    cmap = LinearSegmentedColormap.from_list(method, ["white", method_color(method)])
    ax.imshow(counts, cmap=cmap, vmin=0, vmax=max(counts.max(), 1))
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=13,
                color="white" if count > counts.max() * 0.6 else "black")
    ax.set_xticks(range(counts.shape[1]), matrix.columns)
    ax.set_yticks(range(counts.shape[0]), matrix.index)
    ax.set(title=f"{method}: {split} confusion (n={counts.sum()})", xlabel="predicted", ylabel="gold")
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Render to a temporary name, then rename: a half-written PNG never sits at `path`."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    close_figure(fig)


def close_figure(fig: Figure) -> None:
    """Let pyplot forget a figure it made (it keeps every one, and warns past 20): after it is saved or logged."""
    plt.close(fig)
