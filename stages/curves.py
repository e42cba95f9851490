"""Stage curves: every method's per-epoch history in one file per metric, for dvc.yaml's top-level plots.

DVC 3 overlays series in one chart only when its plot definition names them: a folder as the plot gives one chart per
file, and a glob is not expanded. So each file here has one column per method, and dvc.yaml's top-level plots name
the columns with `${methods}`: the charts follow `dvc exp run -S methods=[...]` without listing a method anywhere.

Inputs:  models/<m>/history.csv for every method m in params `methods` (stage train@<m>: one row per epoch, with
         epoch, train_loss, val_loss, val_macro_f1 among its columns).
Outputs: reports/curves/<metric>.json for metric in val_macro_f1, train_loss, val_loss: a list of rows, one per epoch
         any method reached, {"epoch": e, "<m>": value, ...} with every method in every row (DVC reads a list
         as data points only when each row has the first row's keys): null where a method has no value (`base`,
         solved, stops at epoch 0; epoch 0 has no train loss for a tuned method), which Vega leaves out of the
         line instead of drawing it at 0.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from peftqa.catalog import CURVE, HISTORY_METRICS
from peftqa.files import replace_dir_atomic
from peftqa.params import load_params
from peftqa.training.history import read_history

log = logging.getLogger("peftqa.curves")


def curve_rows(histories: dict[str, pd.DataFrame], metric: str) -> list[dict]:
    """One row per epoch (ascending) with each method's value of `metric`, None (JSON null) where it has none."""
    epochs = sorted({int(epoch) for frame in histories.values() for epoch in frame["epoch"]})
    rows = {epoch: {"epoch": epoch, **dict.fromkeys(histories)} for epoch in epochs}
    for method, frame in histories.items():
        for epoch, value in zip(frame["epoch"], frame[metric]):
            if not pd.isna(value):
                rows[int(epoch)][method] = float(value)
    return [rows[epoch] for epoch in epochs]


def main(args: list[str]) -> None:
    methods = load_params().methods
    histories = {method: read_history(method) for method in methods}

    def write(folder: Path) -> None:
        for metric in HISTORY_METRICS:
            CURVE.write(curve_rows(histories, metric), into=folder, metric=metric)

    replace_dir_atomic(write, CURVE.folder_path())  # a method dropped from params leaves no stale column behind
    log.info("wrote %s for %s", ", ".join(str(CURVE.path(metric=m)) for m in HISTORY_METRICS), ", ".join(methods))


if __name__ == "__main__":
    from peftqa.stops import run_cli

    run_cli(main)
