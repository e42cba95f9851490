"""Parallel `dvc exp` workers share one MLflow store: three queued experiments, two at a time (`dvc queue start -j 2`,
so the third waits for a free worker),
each log their runs into <repo>/mlflow.db (not into their throwaway copy under .dvc), tagged with their
experiment name, with no sqlite 'database is locked' failure.

Real DVC, real celery queue, real sqlite store; a tiny random BERT and a 60-record PubMedQA-shaped file keep it short.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tiny_models import make_tiny_model, write_synthetic_pubmedqa

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]  # about 3 to 5 min on 2 busy cores

RANKS = [4, 16, 32]  # peft.lora.r per queued experiment (params.yaml's 8 is the committed baseline)
QUEUE_TIMEOUT_S = 480  # bounded wait for the three experiments
TINY_PARAMS = {"prepare.limit": 0, "train.epochs": 1, "train.batch_size": 8, "model.max_length": 64,
               "stats.n_bootstrap": 200, "evaluate.latency_items": 2, "methods": ["base", "lora"]}


def run(root: Path, env: dict, *command: str, timeout: float = 600) -> str:
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def queue_states(root: Path, env: dict) -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed} from `dvc queue status`."""
    states = {}
    for line in run(root, env, "dvc", "queue", "status").splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in ("Queued", "Running", "Success", "Failed"):
            states[words[1]] = words[-1]
    return states


def wait_for_queue(root: Path, env: dict, names: list[str], timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        states = queue_states(root, env)
        if all(states.get(name) in ("Success", "Failed") for name in names) or time.monotonic() > deadline:
            return states
        time.sleep(5)


def test_queued_experiments_run_two_at_a_time_into_one_mlflow_store(repo_copy, pipeline_env, write_params, tmp_path):
    env = dict(pipeline_env, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    synthetic = write_synthetic_pubmedqa(tmp_path, n=60)
    env.update(synthetic["env"])
    model = make_tiny_model("encoder", tmp_path / "tiny-bert")
    write_params(repo_copy, {**TINY_PARAMS, **synthetic["params"], "model.name_or_path": str(model)})
    git = ["git", "-c", "commit.gpgsign=false"]

    # the baseline: one full run, committed, so the experiments start from a cached pipeline
    run(repo_copy, env, "dvc", "repro")
    run(repo_copy, env, *git, "add", "-A")
    run(repo_copy, env, *git, "commit", "-q", "-m", "baseline run")

    names = [f"lora-r{r}" for r in RANKS]
    for name, rank in zip(names, RANKS):
        run(repo_copy, env, "dvc", "exp", "run", "--queue", "--name", name, "-S", f"peft.lora.r={rank}")
    started = time.monotonic()
    try:
        run(repo_copy, env, "dvc", "queue", "start", "-j", "2")
        states = wait_for_queue(repo_copy, env, names, QUEUE_TIMEOUT_S)
        logs = {name: run(repo_copy, env, "dvc", "queue", "logs", name) for name in names}
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo_copy, env=env, capture_output=True, timeout=120)
    print(f"{len(names)} experiments, 2 workers: {time.monotonic() - started:.0f} s")

    for name in names:
        assert "database is locked" not in logs[name], f"{name}: sqlite lock failure:\n{logs[name][-3000:]}"
        assert states.get(name) == "Success", f"{name}: {states.get(name)}\n{logs[name][-3000:]}"

    client = MlflowClient(tracking_uri=f"sqlite:///{repo_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("peftqa")
    assert Path(experiment.artifact_location.removeprefix("file://")) == repo_copy / "mlruns"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    by_exp: dict[str, list] = {}
    for r in runs:
        by_exp.setdefault(r.data.tags.get("dvc_exp_name", ""), []).append(r)
    assert sorted(r.info.run_name for r in by_exp.pop("")) == ["base", "lora"]  # the baseline `dvc repro`
    assert sorted(by_exp) == sorted(names)  # train@base is unchanged, so each experiment retrains lora alone
    for name, rank in zip(names, RANKS):
        (lora,) = by_exp[name]
        assert lora.info.run_name == "lora" and lora.info.status == "FINISHED", name
        assert lora.data.params["peft.lora.r"] == str(rank), name
        assert "eval_test_accuracy" in lora.data.metrics, name  # evaluate@lora logged into the same run
        artifacts = {a.path for a in client.list_artifacts(lora.info.run_id, "adapter")}
        assert "adapter/adapter_config.json" in artifacts, name
    assert not list((repo_copy / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # no store left in a workspace copy
