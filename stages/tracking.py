"""MLflow plumbing: one absolute sqlite store per project, race-safe experiment creation, run tags.

The store is sqlite:///<DVC_ROOT>/mlflow.db with artifacts in <DVC_ROOT>/mlruns, always absolute: `dvc exp run
--temp/--queue` runs stages in .dvc/tmp/exps/..., where a relative URI would silently write to a copy that is
thrown away. MLFLOW_TRACKING_URI overrides the store (and is redacted whenever it is printed).
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from stages.common import PeftqaError, project_root

MAX_PARAM_CHARS = 6000  # MLflow 3's limit on a param value


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root() -> str:
    return (project_root() / "mlruns").as_uri()


def redact(uri: str) -> str:
    """Hide the password in scheme://user:password@host URIs before a URI is logged or printed."""
    return re.sub(r"(//[^/:@]+):[^/@]+@", r"\1:***@", uri)


def make_client() -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri())


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id; creating it is safe when parallel `dvc exp` workers race to do so."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        location = artifact_root() if tracking_uri().startswith("sqlite:") else None
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another worker created it between our lookup and our create
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def connect(experiment: str) -> tuple[MlflowClient, str]:
    """Client and experiment id, checked before any training starts: a store that is down, locked or read-only
    must fail now, in one sentence, not after a GPU hour has been spent."""
    uri = tracking_uri()
    try:
        client = make_client()
        experiment_id = get_or_create_experiment(client, experiment)
    except Exception as err:  # sqlalchemy, HTTP and MLflow errors alike: the store is not usable
        raise PeftqaError(f"the MLflow store {redact(uri)} is not usable ({type(err).__name__}: {redact(str(err))[:300]}). "
                          "Fix it before training: check that the folder of mlflow.db is writable and no other "
                          "process holds a lock on it, or that the tracking server is up, or set MLFLOW_TRACKING_URI "
                          "to a store that works.") from None
    location = client.get_experiment(experiment_id).artifact_location
    if location.startswith("file:"):
        folder = Path(urlparse(location).path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # reported just below
        if not os.access(folder, os.W_OK):
            raise PeftqaError(f"the MLflow artifact folder {folder} is not writable, so adapters could not be logged; "
                              "fix its permissions (or delete mlflow.db and mlruns/ to start a fresh store)")
    return client, experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root(), timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def run_tags(stage: str, model: str, family: str, method: str) -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "stage": stage,
        "model": model,
        "family": family,
        "method": method,
    }


def log_params(client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
    """Log a flat dict of params in batches (MLflow takes at most 100 per call)."""
    items = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in sorted(params.items())]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100], synchronous=True)


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int) -> None:
    values = [Metric(key, float(value), timestamp_ms, step) for key, value in metrics.items() if value == value]  # skip NaN
    client.log_batch(run_id, metrics=values, synchronous=True)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)


def log_folder(client: MlflowClient, run_id: str, folder: Path, artifact_path: str) -> None:
    client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)
