"""Queue a committed sweep grid as DVC experiments: one `dvc exp run --queue` per grid point.

The grid file maps a table name (the method it tunes) to its swept params.yaml keys and their values; every
combination of one table's values is a point. A point equal to params.yaml (the baseline commit) is not queued:
the baseline row of `dvc exp show` already holds it. Not a dvc.yaml stage: its outputs are experiments.

Inputs:  reports/ablation/grid.yaml (or --grid PATH), params.yaml.
Outputs: queued experiments named <table>-<value>-<value>... (`dvc queue status` lists them; `dvc queue start -j 2`
         runs them). --dry-run prints the commands instead.
Usage:   peftqa sweep [--grid reports/ablation/grid.yaml] [--only TABLE ...] [--dry-run] [--debug]
"""
from __future__ import annotations

import argparse
import itertools
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from peftqa.errors import PeftqaError, log
from peftqa.files import project_root
from peftqa.studies.experiments import flatten_params

GRID_FILE = Path("reports/ablation/grid.yaml")


def lookup_dotted(params: dict, key: str) -> object:
    """params["peft"]["lora"]["lr"] for "peft.lora.lr" (a leaf key of flatten_params); a PeftqaError naming the key
    when it is not there."""
    flat = flatten_params(params)
    if key not in flat:
        raise PeftqaError(f"params.yaml has no key {key} (the grid sweeps it)")
    return flat[key]


def load_grid(path: Path) -> dict[str, dict[str, list]]:
    """{table: {dotted key: [values]}}, each key a params.yaml key and each list non-empty."""
    try:
        grid = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftqaError(f"{path}: no sweep grid here; commit one before running the sweep") from None
    if not isinstance(grid, dict) or not grid:
        raise PeftqaError(f"{path}: expected a mapping of table names to {{params key: [values]}}")
    for table, axes in grid.items():
        if not isinstance(axes, dict) or not axes:
            raise PeftqaError(f"{path}: table '{table}': expected {{params key: [values]}}, got {axes!r}")
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise PeftqaError(f"{path}: table '{table}', key '{key}': expected a non-empty list of values")
    return grid


def grid_points(axes: dict[str, list]) -> list[dict[str, object]]:
    """Every combination of the axes' values, in the file's order (the first axis varies slowest)."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def format_value(value: object) -> str:
    """A value as `dvc exp run -S` parses it back (YAML): booleans lower-case, floats in short form."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def experiment_name(table: str, point: dict[str, object]) -> str:
    """e.g. prompt_tuning-lr3e-02-text; a valid git ref name (letters, digits, '-', '_', '.')."""
    parts = [table.replace("_", "-")]
    for key, value in point.items():
        leaf = key.rsplit(".", 1)[-1]
        text = f"{value:.0e}" if isinstance(value, float) else format_value(value)
        parts.append(f"{leaf}{text}" if isinstance(value, (int, float)) and not isinstance(value, bool)
                     else (leaf if value is True else f"no-{leaf}" if value is False else text))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts).replace("_", "-"))


def queue_commands(grid: dict[str, dict[str, list]], params: dict, only: list[str] | None = None) -> list[list[str]]:
    """The `dvc exp run --queue` command of every grid point that differs from params.yaml."""
    unknown = sorted(set(only or []) - set(grid))
    if unknown:
        raise PeftqaError(f"--only {unknown}: not a table of the grid; its tables are {list(grid)}")
    commands = []
    for table, axes in grid.items():
        if only and table not in only:
            continue
        for key in axes:
            lookup_dotted(params, key)  # fails, naming the key, when params.yaml has no such key
        for point in grid_points(axes):
            if all(lookup_dotted(params, key) == value for key, value in point.items()):
                log.info("sweep: %s %s is params.yaml itself (the baseline row), not queued", table, point)
                continue
            command = ["dvc", "exp", "run", "--queue", "-n", experiment_name(table, point)]
            for key, value in point.items():
                command += ["-S", f"{key}={format_value(value)}"]
            commands.append(command)
    return commands


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="peftqa sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=GRID_FILE, help="the committed grid (relative to the repo root)")
    parser.add_argument("--only", nargs="+", help="queue only these tables of the grid")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, queue nothing")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    root = project_root()
    grid = load_grid(args.grid if args.grid.is_absolute() else root / args.grid)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    commands = queue_commands(grid, params, args.only)
    for command in commands:
        print(shlex.join(command))
        if not args.dry_run:
            result = subprocess.run(command, cwd=root, capture_output=True, text=True)
            if result.returncode != 0:
                raise PeftqaError(f"`{shlex.join(command)}` failed (exit {result.returncode}): "
                                  f"{result.stderr.strip()[-1500:]}")
    log.info("sweep: %d experiments %s; run them with `dvc queue start -j 2`, follow with `dvc queue status`",
             len(commands), "listed" if args.dry_run else "queued")

