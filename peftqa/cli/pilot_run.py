"""Run a committed recipe pilot as DVC experiments in this workspace, and render its table.

`run`: the grid's phases in order (peftqa.studies.pilot): the context runs, then the lr runs at the chosen context, then
the variants at the chosen rates. Each run is one `dvc exp run -S ...` of its trainings, then a copy of their outputs
into <grid folder>/runs/<run>/ (written whole, or not at all); the first lr run's copy also holds base's zero-shot val
predictions, scored here (val alone: the pilot scores no test item). A run whose copy exists is skipped, so a killed
pilot resumes where it stopped (DVC's run cache restores stages that finished). The workspace must be clean; afterwards
its tracked files are put back as HEAD has them (`git checkout` of what the runs changed, then
`dvc checkout`). Long: start it with nohup.
`table`: <grid folder>/table.md and table.csv from the copies (and context.csv, variants.csv, choices.json).
`command`: the full study's `dvc exp run`, from the grid's profile, the pilot's choices and its `full_run`.

Usage: peftqa pilot run [--grid reports/smollm2-official-pilot/grid.yaml] [--dry-run]
       peftqa pilot table [--grid ...]
       peftqa pilot command [--grid ...] [--name smollm2-official]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import time
from pathlib import Path

from peftqa.errors import PeftqaError, log
from peftqa.files import project_root, write_csv_atomic, write_json_atomic, write_text_atomic
from peftqa.params import load_params
from peftqa.studies.pilot import (
    BASELINE,
    CHOICES_JSON,
    PilotGrid,
    chosen_context,
    chosen_rates,
    context_folder,
    context_rows,
    copied_files,
    full_run_settings,
    load_pilot_grid,
    pilot_markdown,
    pilot_table,
    run_folder,
    variant_folder,
    variant_rows,
)
from peftqa.studies.shape import copy_run

GRID_FILE = Path("reports/smollm2-official-pilot/grid.yaml")


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One `dvc exp run` of the pilot and the folder its copy goes to."""
    label: str  # e.g. "context 2", "lr 1", "variant 1"
    folder: Path
    settings: dict[str, object]
    targets: list[str]
    methods: list[str]  # whose training outputs are copied
    score_base: bool  # also score base on val (in this process) into the copy: the reference rows' source


def experiment_command(run: PlannedRun, name: str) -> list[str]:
    command = ["dvc", "exp", "run", "-n", name]
    for key, value in run.settings.items():
        command += ["-S", f"{key}={json.dumps(value)}"]
    return command + run.targets


def context_runs(grid: PilotGrid, grid_dir: Path) -> list[PlannedRun]:
    if grid.context is None:
        return []
    method = grid.context.method
    return [PlannedRun(f"context {i + 1}", context_folder(grid_dir, i), grid.context_settings(i), [f"train@{method}"],
                       [method], score_base=False) for i in range(len(grid.context.options))]


def lr_runs(grid: PilotGrid, grid_dir: Path) -> list[PlannedRun]:
    """Needs the context phase's copies: every lr run uses the context chosen there."""
    context = chosen_context(grid, grid_dir)
    return [PlannedRun(f"lr {run + 1}", run_folder(grid_dir, run), grid.settings(run, context), grid.targets(),
                       [*grid.lr, BASELINE], score_base=run == 0) for run in range(grid.runs)]


def variant_runs(grid: PilotGrid, grid_dir: Path) -> list[PlannedRun]:
    """Needs the lr phase's copies: each variant trains at its method's chosen rate."""
    if not grid.variants:
        return []
    choices = {**chosen_context(grid, grid_dir),
               **{f"peft.{method}.lr": rate for method, rate in chosen_rates(grid, grid_dir).items()}}
    return [PlannedRun(f"variant {i + 1}", variant_folder(grid_dir, i), grid.variant_settings(i, choices),
                       [f"train@{method}"], [method], score_base=False)
            for i, (method, _, _) in enumerate(grid.variant_runs())]


PHASES = (context_runs, lr_runs, variant_runs)  # in order: each reads the choices of the ones before


def changed_paths(root: Path) -> list[str]:
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    return [line[3:] for line in status.splitlines()]


def score_base_on_val(root: Path, staging: Path) -> None:
    """evaluate@base's val predictions and metrics, from the workspace's params and train@base's output, written
    into the copy: val alone, so the pilot scores no test item (evaluate@base would score both splits)."""
    from peftqa.catalog import ADAPTER, METRICS, PREDS, read_split
    from peftqa.compute import use_bf16
    from peftqa.evaluation.predictions import scored_split
    from peftqa.methods.attach import load_backbone

    params = load_params(root / "params.yaml")
    frame = read_split("val", params.evaluate.limit_items, root)
    backbone = load_backbone(params.model, BASELINE, params.peft, params.prepare.labels, seed=params.train.seed,
                             device=params.train.device, adapter_dir=ADAPTER.path(root, method=BASELINE))
    pred_frame, metrics, _ = scored_split(backbone, frame, params, use_bf16(params.model.dtype, backbone.device))
    PREDS.write(pred_frame, staging, method=BASELINE, split="val")
    METRICS.write(metrics, staging, method=BASELINE, split="val")


def copy_outputs(run: PlannedRun, root: Path) -> None:
    """The run's outputs into its folder, whole or not at all, with its settings (and base's val scores)."""
    def then(staging: Path) -> None:
        (staging / "settings.json").write_text(json.dumps(run.settings, indent=2) + "\n", encoding="utf-8")
        if run.score_base:
            score_base_on_val(root, staging)

    copy_run({name: root / name for name in copied_files(run.methods)}, run.folder, then=then)


def check_settings(run: PlannedRun, root: Path) -> None:
    """The run's settings applied to params.yaml must load, before minutes go into `dvc exp run`."""
    try:
        load_params(root / "params.yaml", [f"{key}={json.dumps(value)}" for key, value in run.settings.items()])
    except PeftqaError as error:
        raise PeftqaError(f"pilot {run.label}: its settings do not make valid params: {error}") from None


def run_phase(runs: list[PlannedRun], root: Path, dry_run: bool) -> None:
    for run in runs:
        if run.folder.exists():
            log.info("pilot %s: %s exists, skipped", run.label, run.folder)
            continue
        check_settings(run, root)
        command = experiment_command(run, f"pilot-{run.label.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}")
        print(shlex.join(command), flush=True)
        if dry_run:
            continue
        start = time.monotonic()
        if subprocess.run(command, cwd=root).returncode != 0:
            raise PeftqaError(f"pilot {run.label}: `dvc exp run` failed; its copy was not written")
        copy_outputs(run, root)
        log.info("pilot %s: %.0f s -> %s", run.label, time.monotonic() - start, run.folder)


def run_pilot(grid: PilotGrid, grid_dir: Path, root: Path, dry_run: bool) -> None:
    changed = [] if dry_run else changed_paths(root)
    if changed:
        raise PeftqaError(f"the workspace has uncommitted changes ({', '.join(changed[:5])}); the pilot's "
                          "experiments run in it and put it back as HEAD has it: commit or stash them first")
    try:
        for phase in PHASES:
            try:
                runs = phase(grid, grid_dir)
            except PeftqaError:
                if not dry_run:
                    raise
                print(f"# {phase.__name__}: after the phase before it (its choices decide the settings)")
                return
            run_phase(runs, root, dry_run)
    finally:
        changed = [] if dry_run else changed_paths(root)
        if changed:
            subprocess.run(["git", "checkout", "HEAD", "--", *changed], cwd=root, check=True)
            subprocess.run(["dvc", "checkout", "--quiet"], cwd=root)


def write_table(grid: PilotGrid, grid_dir: Path) -> str:
    """table.md (pilot_markdown) and table.csv (the lr phase and the reference rows); with phases, context.csv and
    variants.csv too, and choices.json: the full run's settings, which the study's params must equal."""
    write_csv_atomic(grid_dir / "table.csv", pilot_table(grid, grid_dir))
    if grid.context is not None:
        write_csv_atomic(grid_dir / "context.csv", context_rows(grid, grid_dir))
    if grid.variants:
        write_csv_atomic(grid_dir / "variants.csv", variant_rows(grid, grid_dir))
    if grid.context is not None or grid.variants or grid.full_run:
        write_json_atomic(grid_dir / CHOICES_JSON, {"full_run": full_run_settings(grid, grid_dir)})
    markdown = pilot_markdown(grid, grid_dir)
    write_text_atomic(grid_dir / "table.md", markdown)
    return markdown


def full_run_command(grid: PilotGrid, grid_dir: Path, name: str) -> str:
    """The full study's `dvc exp run`: the profile, the pilot's choices and `full_run`, every stage."""
    settings = full_run_settings(grid, grid_dir)
    return shlex.join(["dvc", "exp", "run", "-n", name,
                       *[part for key, value in settings.items() for part in ("-S", f"{key}={json.dumps(value)}")]])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peftqa pilot", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "table", "command"),
                        help="command: print the full study's `dvc exp run` from the pilot's choices")
    parser.add_argument("--grid", type=Path, default=GRID_FILE, help=f"the pilot grid (default {GRID_FILE})")
    parser.add_argument("--dry-run", action="store_true", help="run: print the commands, run nothing")
    parser.add_argument("--name", default="study", help="command: the experiment's name (default study)")
    args = parser.parse_args(argv)
    root = project_root()
    path = args.grid if args.grid.is_absolute() else root / args.grid
    grid = load_pilot_grid(path)
    if args.action == "command":
        print(full_run_command(grid, path.parent, args.name))
        return
    if args.action == "run":
        run_pilot(grid, path.parent, root, args.dry_run)
        if args.dry_run:
            return
    print(write_table(grid, path.parent), end="")
