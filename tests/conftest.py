"""Shared fixtures: params.yaml as a dict with overrides, a throwaway git + DVC copy of the repo, and a tmp dir where
the real train and evaluate stages have run on a tiny model."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_copy import make_repo_copy, params_dict, pipeline_environment, write_params_file
from tiny_models import tiny_frame


@pytest.fixture
def params_data():
    """Factory: params_dict as a fixture."""
    return params_dict


@pytest.fixture
def write_params():
    """Factory: write params.yaml (with overrides) into a folder and return its path."""
    return write_params_file


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    return pipeline_environment()


@pytest.fixture
def repo_copy(tmp_path, pipeline_env) -> Path:
    """A fresh git repo in tmp_path/repo holding the pipeline files, with one commit (so `dvc exp` works too).
    Run dvc there with `env=pipeline_env`; PUBMEDQA_JSON passes through from the test's environment."""
    return make_repo_copy(tmp_path / "repo", pipeline_env)


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


# the longest modules first: `make test` (--dist loadscope --no-loadscope-reorder) hands whole modules to the two
# workers in this order, so the pipeline slice (about 400 s, one module) starts at once and the rest fills the other
# worker around it
LONGEST_FIRST = ("test_pipeline.py", "test_learning.py", "test_smollm2.py", "test_train.py", "test_hostile.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: file order otherwise kept


# the MLflow UI test must run, never pass by being skipped: the summary says how it ended, in every run of the suite
UI_TEST = "test_pipeline.py::test_the_mlflow_server_shows_every_run_with_params_history_and_adapter"
UI_OUTCOMES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under xdist this runs in the controller too, with the workers' reports."""
    if report.nodeid.endswith(UI_TEST) and (report.when == "call" or report.outcome != "passed"):
        UI_OUTCOMES.append(f"{report.outcome} ({report.when}, {report.duration:.0f} s)")


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(f"MLflow UI test in headless Chromium: {', '.join(UI_OUTCOMES) or 'not run'}")
