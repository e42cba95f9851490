"""Run a committed recipe pilot as DVC experiments in this workspace, and render its table.

`run`: for each run of the grid (reports/smollm2-pilot/grid.yaml), `dvc exp run -S ...` of its trainings and the
references (base and base_calibrated on val), then a copy of their outputs into <grid folder>/runs/run-<i>/ (written
whole, or not at all). A run whose copy exists is skipped, so a killed pilot resumes where it stopped (DVC's run
cache restores stages that finished). The workspace must be clean; afterwards its tracked files are put back as
HEAD has them (`git checkout` of what the runs changed, then `dvc checkout`). Long: start it with nohup.
`table`: <grid folder>/table.md and table.csv from the copies.

Usage: peftqa pilot run [--grid reports/smollm2-pilot/grid.yaml] [--dry-run]
       peftqa pilot table [--grid reports/smollm2-pilot/grid.yaml]
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from peftqa.common import PeftqaError, log, project_root, replace_dir_atomic, write_csv_atomic, write_text_atomic
from peftqa.pilot import PilotGrid, copied_files, format_table, load_pilot_grid, pilot_table, run_folder

GRID_FILE = Path("reports/smollm2-pilot/grid.yaml")


def experiment_command(grid: PilotGrid, run: int, name: str) -> list[str]:
    command = ["dvc", "exp", "run", "-n", name]
    for key, value in grid.settings(run).items():
        command += ["-S", f"{key}={json.dumps(value)}"]
    return command + grid.targets()


def changed_paths(root: Path) -> list[str]:
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    return [line[3:] for line in status.splitlines()]


def copy_outputs(grid: PilotGrid, root: Path, folder: Path) -> None:
    """The run's outputs into `folder`, whole or not at all."""
    def build(staging: Path) -> None:
        for name in copied_files(grid):
            source = root / name
            if not source.exists():
                raise PeftqaError(f"{source}: the run wrote no such file; see the log of `dvc exp run` above")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staging / name)

    replace_dir_atomic(build, folder)


def run_pilot(grid: PilotGrid, grid_dir: Path, root: Path, dry_run: bool) -> None:
    changed = [] if dry_run else changed_paths(root)
    if changed:
        raise PeftqaError(f"the workspace has uncommitted changes ({', '.join(changed[:5])}); the pilot's "
                          "experiments run in it and put it back as HEAD has it: commit or stash them first")
    try:
        for run in range(grid.runs):
            folder = run_folder(grid_dir, run)
            if folder.exists():
                log.info("pilot run %d: %s exists, skipped", run + 1, folder)
                continue
            command = experiment_command(grid, run, f"pilot-{run + 1}-{time.strftime('%Y%m%d-%H%M%S')}")
            print(shlex.join(command), flush=True)
            if dry_run:
                continue
            start = time.monotonic()
            if subprocess.run(command, cwd=root).returncode != 0:
                raise PeftqaError(f"pilot run {run + 1}: `dvc exp run` failed; its copy was not written")
            copy_outputs(grid, root, folder)
            log.info("pilot run %d: %.0f s -> %s", run + 1, time.monotonic() - start, folder)
    finally:
        changed = [] if dry_run else changed_paths(root)
        if changed:
            subprocess.run(["git", "checkout", "HEAD", "--", *changed], cwd=root, check=True)
            subprocess.run(["dvc", "checkout", "--quiet"], cwd=root)


def write_table(grid: PilotGrid, grid_dir: Path) -> str:
    table = pilot_table(grid, grid_dir)
    markdown = format_table(table)
    write_csv_atomic(grid_dir / "table.csv", table)
    write_text_atomic(grid_dir / "table.md", markdown)
    return markdown


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peftqa pilot", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "table"))
    parser.add_argument("--grid", type=Path, default=GRID_FILE, help=f"the pilot grid (default {GRID_FILE})")
    parser.add_argument("--dry-run", action="store_true", help="run: print the commands, run nothing")
    args = parser.parse_args(argv)
    root = project_root()
    path = args.grid if args.grid.is_absolute() else root / args.grid
    grid = load_pilot_grid(path)
    if args.action == "run":
        run_pilot(grid, path.parent, root, args.dry_run)
        if args.dry_run:
            return
    print(write_table(grid, path.parent), end="")
