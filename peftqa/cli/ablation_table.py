"""Ablation tables: val and test metrics per DVC experiment of a sweep, the best val row marked.

The sweep is over one param or a grid of several. Reads `dvc exp show --json`, takes each experiment's value of the
swept param and the metrics evaluate@<method> wrote (reports/eval/<method>/metrics_{val,test}.json, declared under
`metrics:` in dvc.yaml), and marks the row with the best val metric: the study's selection rule (LoRA rank chosen by
val macro-F1); test is reported, never used to choose. A row whose other params differ from the majority of rows is
flagged in `other_changes`, because its difference from the others is then not due to the swept param alone; a row
that changes only other methods' peft.<method> sections is left out (it belongs to another method's sweep, and this
method's metrics there are the baseline's). Not a dvc.yaml stage: its input is the experiments themselves.
peftqa.studies.experiments parses the experiments and peftqa.studies.ablation builds the table, its markdown and its
figure; this module runs `dvc exp show` and writes the files.

Inputs:  `dvc exp show --json`, run in the repo root (or --json-file PATH, a saved dump of it).
Outputs: reports/ablation/<name>.csv, reports/ablation/<name>.md (also printed), reports/ablation/<name>.png; <name>
         is the param (one --param), the params joined by '+' (several), or the table name (--grid).
Usage:   peftqa ablation --param peft.lora.r [--param ...] [--method lora] [--metric macro_f1]
                         [--select-on val] [--out reports/ablation] [--json-file PATH] [--rev REV] [--debug]
         peftqa ablation --grid reports/ablation/grid.yaml [...]   # one table per table of the grid
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from peftqa.cli.sweep import load_grid
from peftqa.errors import PeftqaError, log
from peftqa.files import project_root, write_csv_atomic, write_text_atomic
from peftqa.params import METHODS
from peftqa.report.palette import save_figure
from peftqa.studies.ablation import build_ablation, format_markdown, plot_ablation
from peftqa.studies.experiments import parse_exp_show

ABLATION_DIR = Path("reports/ablation")


def method_for_param(param: str, method: str | None) -> str:
    """The method whose metrics the sweep is read from: peft.<method>.* names it, any other param needs --method."""
    parts = param.split(".")
    if parts[0] == "peft" and len(parts) >= 3:
        if parts[1] not in METHODS:
            raise PeftqaError(f"{param}: '{parts[1]}' is not a PEFT method; known methods are {list(METHODS)}")
        if method is not None and method != parts[1]:
            raise PeftqaError(f"--method {method} contradicts --param {param}, which only changes {parts[1]}; "
                              f"drop --method or use --method {parts[1]}")
        return parts[1]
    if method is None:
        raise PeftqaError(f"{param} is not under peft.<method>, so it is not clear which method's metrics to read; "
                          f"add --method (one of {list(METHODS)}), e.g. --method lora")
    if method not in METHODS:
        raise PeftqaError(f"--method {method} is unknown; known methods are {list(METHODS)}")
    return method



def read_exp_show(json_file: Path | None, root: Path, rev: str | None = None) -> list:
    """The parsed output of `dvc exp show --json` run in `root` (experiments of `rev`, default HEAD), or of a saved
    dump when `json_file` is given."""
    if json_file is not None:
        try:
            text = json_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PeftqaError(f"--json-file {json_file}: not found") from None
        source = str(json_file)
    else:
        try:
            command = ["dvc", "exp", "show", "--json"] + (["--rev", rev] if rev else [])
            result = subprocess.run(command, cwd=root, capture_output=True, text=True)
        except FileNotFoundError:
            raise PeftqaError("`dvc` is not on PATH; activate the project's virtual environment") from None
        if result.returncode != 0:
            raise PeftqaError(f"`dvc exp show --json` failed in {root} (exit {result.returncode}): "
                              f"{result.stderr.strip()[-1500:]}")
        text, source = result.stdout, "`dvc exp show --json`"
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PeftqaError(f"{source}: not JSON ({err}); it should be the output of `dvc exp show --json`") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="peftqa ablation", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--param", action="append", help="a swept params.yaml key, dotted (e.g. peft.lora.r); "
                                                       "repeat it for a grid of several")
    what.add_argument("--grid", type=Path, help="a sweep grid (reports/ablation/grid.yaml): one table per entry")
    parser.add_argument("--method", choices=METHODS, help="whose metrics to read; implied by peft.<method>.* params")
    parser.add_argument("--metric", default="macro_f1", help="the metrics_*.json key to select on and plot")
    parser.add_argument("--select-on", choices=("val", "test"), default="val", help="split whose metric picks the row")
    parser.add_argument("--out", type=Path, default=ABLATION_DIR, help="output folder (relative to the repo root)")
    parser.add_argument("--json-file", type=Path, help="read a saved `dvc exp show --json` dump instead of running it")
    parser.add_argument("--rev", help="read the experiments of this baseline commit (default: HEAD's)")
    return parser.parse_args(argv)


def tables_to_build(args: argparse.Namespace, root: Path) -> list[tuple[str, list[str], str]]:
    """(output name, swept params, method) per table: one from --param, or one per entry of --grid."""
    if args.param:
        method = {method_for_param(param, args.method) for param in args.param}
        if len(method) > 1:
            raise PeftqaError(f"--param {args.param} belong to different methods {sorted(method)}; sweep one at a time")
        return [("+".join(args.param), list(args.param), method.pop())]
    grid = load_grid(args.grid if args.grid.is_absolute() else root / args.grid)
    tables = []
    for name, axes in grid.items():
        methods = {method_for_param(param, args.method or (name if name in METHODS else None)) for param in axes}
        if len(methods) > 1:
            raise PeftqaError(f"{args.grid}: table '{name}' sweeps params of different methods {sorted(methods)}")
        tables.append((name, list(axes), methods.pop()))
    return tables


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    root = project_root()
    tables = tables_to_build(args, root)
    records, errored = parse_exp_show(read_exp_show(args.json_file, root, args.rev))
    if args.rev:  # the workspace is no experiment of that commit
        records = [record for record in records if record.kind != "workspace"]
    out = args.out if args.out.is_absolute() else root / args.out
    for name, params, method in tables:
        table, skipped = build_ablation(records, params, method, metric=args.metric, select_on=args.select_on)
        skipped = errored + skipped
        if skipped:
            log.warning("ablation %s: %d experiments skipped (see the .md)", name, len(skipped))
        markdown = format_markdown(table, params, args.metric, args.select_on, skipped)
        write_csv_atomic(out / f"{name}.csv", table)
        write_text_atomic(out / f"{name}.md", f"# Ablation of {', '.join(params)} ({method})\n\n{markdown}")
        save_figure(plot_ablation(table, params, args.metric, method), out / f"{name}.png")
        print(f"## {name}\n\n{markdown}" if len(tables) > 1 else markdown, end="\n" if len(tables) > 1 else "")
        log.info("ablation: %d rows, %d skipped -> %s/%s.{csv,md,png}", len(table), len(skipped), out, name)

