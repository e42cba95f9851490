"""The shape every committed study shares, and the one copy of a finished run into a study's folder.

A study is a folder of committed outputs that outlives the workspace that made them (reports/smollm2/, reports/cv5/,
reports/methods-cv5/, ...), and one module under peftqa/studies/ that says, in one `Study`:
- its `name`: the prefix of its docs blocks (`<!-- peftqa:begin <name>:<block> -->`);
- its `folder`, relative to the project root;
- `read(folder)`: what it reads from there, once per rendering (pipeline outputs through peftqa.catalog);
- its `blocks`: {block name: render(what was read) -> markdown}, and its `provenance`, how it was made (rendered as
  its block `provenance`);
- `copy_in(source_root, folder)`: how a finished run is copied in from the workspace that ran it (through
  `copy_run`, written whole or not at all); None where no run is copied, the folder being written by a command
  (`peftqa bench --json`, `peftqa ablation`) or being the project root itself.
`peftqa.studies.docs.STUDIES` lists them; `peftqa docs` renders every block from its study.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import yaml

from peftqa.errors import PeftqaError
from peftqa.files import replace_dir_atomic

PROVENANCE = "provenance"  # the block name of a study's provenance
WHOLE_RUN_FILES = ("params.yaml", "dvc.lock")  # beside a whole run's outputs: what made them
STUDY_RECORDS = ("README.md", "run.json", "demo.json")  # a study's own files, written by hand: a new copy keeps them


@dataclass(frozen=True)
class Study:
    """One committed study: where it lives, what it reads, what it renders and how a finished run is copied in."""
    name: str  # the docs markers' prefix
    folder: Path  # relative to the project root
    read: Callable[[Path], object]
    blocks: Mapping[str, Callable[[object], str]]  # besides `provenance`
    provenance: Callable[[object], str] | None  # how it was made; None where each block says it (the benches)
    copy_in: Callable[[Path, Path], None] | None  # (source_root, folder); None: no run is copied in

    def __post_init__(self) -> None:
        if PROVENANCE in self.blocks:
            raise ValueError(f"study {self.name}: its provenance is the field `provenance`, not a block")

    def renderers(self) -> dict[str, Callable[[object], str]]:
        """Every block it renders, by name: its blocks and its provenance."""
        return {**({PROVENANCE: self.provenance} if self.provenance else {}), **self.blocks}


def copy_run(files: Mapping[str | Path, Path], folder: Path, keep: Sequence[str] = (),
             then: Callable[[Path], None] | None = None) -> None:
    """A finished run's `files` ({path in the folder: its source}, a file or a folder copied whole) into `folder`,
    written whole or not at all; `keep`: the folder's own files carried over (its README); `then(staging)`: what the
    copy adds that is no file of the run. A missing source is an error naming it, and leaves the folder as it was."""
    def build(staging: Path) -> None:
        for name in keep:
            if (folder / name).exists():
                shutil.copy2(folder / name, staging / name)
        for relative, source in files.items():
            if not source.exists():
                raise PeftqaError(f"{source}: the run wrote no such file; {folder} was not written (see the run's "
                                  "log)")
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        if then is not None:
            then(staging)

    replace_dir_atomic(build, folder)


def whole_run_files(source_root: Path) -> list[str]:
    """A whole pipeline run's files as git sees them in its workspace: every output its dvc.lock records that git
    tracks or would track (`git ls-files --cached --others --exclude-standard`; the DVC-cached adapters are
    ignored), and its params.yaml and dvc.lock."""
    lock = yaml.safe_load((source_root / "dvc.lock").read_text(encoding="utf-8"))
    outs = sorted({out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])})
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *outs],
                            cwd=source_root, check=True, capture_output=True, text=True).stdout
    return [*WHOLE_RUN_FILES, *sorted(name for name in set(listed.split("\0")) if (source_root / name).is_file())]


def copy_whole_run(source_root: Path, folder: Path) -> None:
    """A whole pipeline run (the SmolLM2 studies) into `folder`, at the paths its workspace has them; the study's
    README and run records stay."""
    copy_run({name: source_root / name for name in whole_run_files(source_root)}, folder, keep=STUDY_RECORDS)
