"""The repository's pipeline files in a throwaway copy: params.yaml with overrides, the environment `dvc` and the
stages run in, and a fresh git repo holding the files `dvc repro` needs. conftest.py's fixtures wrap these; the
pipeline tests (tests/test_pipeline.py) use them for a slice shared by a whole module."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from peftqa.params import YamlLoader  # the project's YAML loader: yes/no stay strings (they are labels)

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_YAML = REPO_ROOT / "params.yaml"
# what `dvc repro` needs from the repo (tests/ and data are not copied)
REPO_FILES = ("dvc.yaml", "params.yaml", "stages", "peftqa", "requirements", ".dvc/config", ".dvc/.gitignore",
              ".dvcignore", ".gitignore", "pyproject.toml")


def params_dict(overrides: dict[str, object] | None = None, source: Path = PARAMS_YAML) -> dict:
    """The repo's params.yaml (or `source`) as a fresh dict, with {"dotted.key": value} overrides applied."""
    data = yaml.load(source.read_text(encoding="utf-8"), Loader=YamlLoader)
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = data
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return data


def write_params_file(folder: Path, overrides: dict[str, object] | None = None) -> Path:
    """Write params.yaml (with overrides) into a folder and return its path."""
    path = Path(folder) / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict(overrides), sort_keys=False), encoding="utf-8")
    return path


def update_params_file(folder: Path, overrides: dict[str, object]) -> None:
    """Apply {"dotted.key": value} overrides to the params.yaml already in a folder."""
    path = Path(folder) / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict(overrides, path), sort_keys=False), encoding="utf-8")


def stage_env(root: Path) -> dict[str, str]:
    """Environment for a stage run by hand (`python -m stages.train`) in a repo-shaped folder: its own sqlite store."""
    env = {**os.environ, "DVC_ROOT": str(root), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def pipeline_environment() -> dict[str, str]:
    """Environment for `dvc` / `python -m stages.*` subprocesses: this interpreter's bin first, a git identity."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(GIT_AUTHOR_NAME="peftqa tests", GIT_AUTHOR_EMAIL="tests@peftqa.invalid",
               GIT_COMMITTER_NAME="peftqa tests", GIT_COMMITTER_EMAIL="tests@peftqa.invalid",
               DVC_NO_ANALYTICS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("DVC_ROOT", None)
    return env


def make_repo_copy(root: Path, env: dict[str, str]) -> Path:
    """A fresh git repo at `root` holding the pipeline files, with one commit (so `dvc exp` works too)."""
    for name in REPO_FILES:
        source, target = REPO_ROOT / name, root / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git = ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "pipeline copy"]):
        subprocess.run(git + args, cwd=root, env=env, check=True, capture_output=True)
    return root
