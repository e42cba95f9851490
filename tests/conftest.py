"""Shared fixtures: params.yaml as a dict with overrides, a throwaway git + DVC copy of the repo, and a tmp dir where
the real train and evaluate stages have run on a tiny model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.params import _Loader  # the project's YAML loader: yes/no stay strings (they are labels)

from tiny_models import tiny_frame

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_YAML = REPO_ROOT / "params.yaml"
# what `dvc repro` needs from the repo (tests/ and data are not copied)
REPO_FILES = ("dvc.yaml", "params.yaml", "stages", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore",
              "pyproject.toml")


@pytest.fixture
def params_data():
    """Factory: the repo's params.yaml as a fresh dict, with {"dotted.key": value} overrides applied."""

    def make(overrides: dict[str, object] | None = None) -> dict:
        data = yaml.load(PARAMS_YAML.read_text(encoding="utf-8"), Loader=_Loader)
        for dotted, value in (overrides or {}).items():
            *parents, leaf = dotted.split(".")
            node = data
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = value
        return data

    return make


@pytest.fixture
def write_params(params_data):
    """Factory: write params.yaml (with overrides) into a folder and return its path."""

    def write(folder: Path, overrides: dict[str, object] | None = None) -> Path:
        path = Path(folder) / "params.yaml"
        path.write_text(yaml.safe_dump(params_data(overrides), sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    """Environment for `dvc` / `python -m stages.*` subprocesses: this interpreter's bin first, a git identity."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(GIT_AUTHOR_NAME="peftqa tests", GIT_AUTHOR_EMAIL="tests@peftqa.invalid",
               GIT_COMMITTER_NAME="peftqa tests", GIT_COMMITTER_EMAIL="tests@peftqa.invalid",
               DVC_NO_ANALYTICS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("DVC_ROOT", None)
    return env


@pytest.fixture
def repo_copy(tmp_path, pipeline_env) -> Path:
    """A fresh git repo in tmp_path/repo holding the pipeline files, with one commit (so `dvc exp` works too).
    Run dvc there with `env=pipeline_env`; PUBMEDQA_JSON passes through from the test's environment."""
    root = tmp_path / "repo"
    for name in REPO_FILES:
        source, target = REPO_ROOT / name, root / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git = ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "pipeline copy"]):
        subprocess.run(git + args, cwd=root, env=pipeline_env, check=True, capture_output=True)
    return root


@pytest.fixture
def stage_dir(tmp_path, monkeypatch, write_params, tiny_model_paths):
    """For the train stage and those after it: a working dir shaped like the repo, with params.yaml,
    data/processed/{train,val}.csv and an MLflow store in tmp."""

    def make(family: str = "encoder", n_train: int = 16, **overrides) -> Path:
        (tmp_path / "data/processed").mkdir(parents=True, exist_ok=True)
        tiny_frame(n_train, 1000).to_csv(tmp_path / "data/processed/train.csv", index=False)
        tiny_frame(8, 5000).to_csv(tmp_path / "data/processed/val.csv", index=False)
        write_params(tmp_path, {"model.name_or_path": str(tiny_model_paths[family]), "model.max_length": 64,
                                "train.epochs": 2, "train.batch_size": 4, "train.device": "cpu",
                                "mlflow.experiment": "tests", **overrides})
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("DVC_ROOT", str(tmp_path))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return tmp_path

    return make


@pytest.fixture(scope="session")
def tiny_model_paths(tmp_path_factory) -> dict[str, Path]:
    """A tiny random encoder (BERT) and seq2seq (T5) model, saved once per test session."""
    from tiny_models import make_tiny_model
    root = tmp_path_factory.mktemp("tiny_model_paths")
    return {family: make_tiny_model(family, root / family) for family in ("encoder", "seq2seq")}


@pytest.fixture
def trained(tmp_path, monkeypatch, write_params, tiny_model_paths):
    """Factory: a repo-shaped tmp dir where the real train and evaluate stages have run for `method` (1 epoch,
    8 items, tiny model, MLflow in tmp). Returns the dir; predictions are in reports/eval/<method>/."""

    def make(method: str, family: str = "encoder") -> Path:
        from stages import evaluate as evaluate_stage  # torch: only for the tests that train
        from stages import train as train_stage

        data = tmp_path / "data/processed"
        data.mkdir(parents=True, exist_ok=True)
        for split, offset in (("train", 1000), ("val", 5000), ("test", 9000)):
            tiny_frame(8, offset).to_csv(data / f"{split}.csv", index=False)
        write_params(tmp_path, {"model.name_or_path": str(tiny_model_paths[family]), "model.max_length": 64,
                                "train.epochs": 1, "train.batch_size": 4, "train.device": "cpu",
                                "evaluate.batch_size": 3, "evaluate.latency_items": 2, "mlflow.experiment": "tests"})
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("DVC_ROOT", str(tmp_path))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        train_stage.main([method])
        evaluate_stage.main([method])
        return tmp_path

    return make


@pytest.hookimpl(trylast=True)  # after `-m "not slow"` has deselected what it deselects
def pytest_collection_modifyitems(config, items):
    """The fresh-virtualenv test installs a served model's requirements: start downloading their wheels now, in
    the background, so the download overlaps the other tests (see tests/wheelhouse.py)."""
    if any("fresh_virtualenv" in item.nodeid for item in items):
        from wheelhouse import start_download

        start_download()

