"""Copy the methods frontier's 5-fold experiment out of its workspace, and write its table and figure.

`copy --workspace DIR`: the protocols stage's outputs in DIR (reports/protocols/cv_*.csv, protocols_metrics.json,
params.yaml, and every finished training under reports/protocols/runs/cv/) into reports/methods-cv5/cv/, written
whole or not at all. An interrupted experiment copies what it finished: `restore --workspace DIR` puts those
trainings back into DIR's reports/protocols/runs/cv/, where the protocols stage reuses them.
`table`: reports/methods-cv5/frontier.csv, frontier.md and frontier.png from the copy.

Usage: peftqa frontier copy --workspace DIR
       peftqa frontier restore --workspace DIR
       peftqa frontier table
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from peftqa.catalog import UNIT
from peftqa.errors import PeftqaError, log
from peftqa.files import project_root, write_csv_atomic, write_text_atomic
from peftqa.report.palette import save_figure
from peftqa.studies.frontier import (
    FRONTIER,
    FRONTIER_DIR,
    UNITS_DIR,
    WORKSPACE_UNITS,
    finished_units,
    format_frontier,
    frontier_table,
    plot_frontier,
    read_frontier,
    reference_scores,
)


def restore_into(folder: Path, workspace: Path) -> None:
    units = finished_units(folder / UNITS_DIR)
    if not units:
        raise PeftqaError(f"{folder / UNITS_DIR}: no copied trainings to restore")
    restored = 0
    for relative, unit in units.items():
        target = workspace / WORKSPACE_UNITS / relative
        if not UNIT.exists(into=target):  # absent, or a training that was cut short: the copy replaces it
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(unit, target)
            restored += 1
    log.info("restored %d of %d finished trainings into %s", restored, len(units), workspace / WORKSPACE_UNITS)


def write_table(folder: Path) -> str:
    frontier = read_frontier(folder)
    table = frontier_table(frontier)
    markdown = format_frontier(table, frontier.params)
    write_csv_atomic(folder / "frontier.csv", table)
    write_text_atomic(folder / "frontier.md", markdown)
    title = (f"{len(table) - 1} methods on {frontier.params.model.name_or_path}, {frontier.params.prepare.folds}-fold "
             f"CV pooled over {int(table['n'].iloc[0])} items")
    save_figure(plot_frontier(table, reference_scores(frontier), frontier.params.stats.baseline, title),
                folder / "frontier.png")
    return markdown


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peftqa frontier", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("copy", "restore", "table"))
    parser.add_argument("--workspace", type=Path, help="copy, restore: the workspace the experiment runs in")
    parser.add_argument("--folder", type=Path, default=FRONTIER_DIR, help=f"default {FRONTIER_DIR}")
    args = parser.parse_args(argv)
    folder = args.folder if args.folder.is_absolute() else project_root() / args.folder
    if args.action in ("copy", "restore") and args.workspace is None:
        parser.error(f"{args.action} needs --workspace")
    if args.action == "copy":
        FRONTIER.copy_in(args.workspace.resolve(), folder)
    elif args.action == "restore":
        restore_into(folder, args.workspace.resolve())
    else:
        print(write_table(folder), end="")
