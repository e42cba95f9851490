"""Remove exactly the outputs that dvc.yaml declares, and nothing else (`make clean`).

Every stage's outs, metrics and plots (foreach stages expanded for the methods in params.yaml), read through DVC's
own index, so the list cannot drift from dvc.yaml. Not removed: dvc.lock, the DVC cache (`dvc checkout` or `dvc pull`
brings cached outputs back), .gitignore files, the venv, the MLflow store (mlflow.db, mlruns/), committed files that
no stage writes (reports/ablation/, reports/seeds3/, ...), and models/<method>/checkpoint.pt (not an output).

Usage:   peftqa clean [--dry-run]    (--dry-run: print what would be removed)
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from peftqa.errors import PeftqaError


def declared_outputs(root: str | Path = ".") -> list[Path]:
    """Every out, metric and plot of every stage in the repository at `root`, as absolute paths, sorted."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return sorted({Path(out.fs_path) for stage in repo.index.stages for out in stage.outs})
    except DvcException as err:
        raise PeftqaError(f"clean: cannot read the pipeline in {Path(root).resolve()} ({err}); run it from the "
                          "repository root, where dvc.yaml is") from None


def remove(path: Path) -> bool:
    """Remove a file, a link or a folder; False when there was nothing there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        return False
    return True


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peftqa clean", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    dry_run = parser.parse_args(args).dry_run
    root = Path.cwd()
    for path in declared_outputs(root):
        shown = os.path.relpath(path, root)
        if dry_run:
            print(shown)
        elif remove(path):
            print(f"removed {shown}")

