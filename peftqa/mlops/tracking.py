"""MLflow plumbing: one absolute sqlite store per project, race-safe experiment creation, run tags, and the whole
life of a training's run: opened (or resumed) by mlflow_run, its epochs, outputs and evaluation logged here.

The store is sqlite:///<DVC_ROOT>/mlflow.db with artifacts in <DVC_ROOT>/mlruns, always absolute: `dvc exp run
--temp/--queue` runs stages in copies under .dvc (its temp folder), where a relative URI would silently write to a
copy that is thrown away. MLFLOW_TRACKING_URI overrides the store (and is redacted whenever it is printed).

A run ends FINISHED, FAILED or KILLED; one whose process died without a word is marked KILLED by end_orphans. Every
write is shielded from stop signals (peftqa.stops.shielded). HTTP_RETRIES bounds MLflow's retries against a server.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag, SourceType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

from peftqa.catalog import ADAPTER, HISTORY, RESOLVED_CONFIG, TRAIN_SUMMARY
from peftqa.errors import PeftqaError, complaint
from peftqa.files import project_root
from peftqa.mlops import environment
from peftqa.mlops.processes import process_alive, process_start, this_boot
from peftqa.stops import shielded

if TYPE_CHECKING:  # annotations only: tracking stays free of torch and matplotlib
    from matplotlib.figure import Figure

    from peftqa.training.probe import Probe

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow 3's limit on a param value
METRIC_PREFIX = "eval_"  # MLflow keys of the evaluated metrics: eval_val_macro_f1, eval_test_accuracy, ...
WRITE_PROBE_TAG = "peftqa.write_probe"  # the experiment tag connect() writes: a store that takes no write fails there
# a run's process (host, pid, "<boot id> <pid namespace> <start time>"): RUNNING with it gone, an orphan (end_orphans)
HOST_TAG, PID_TAG, PROCESS_TAG = "peftqa.host", "peftqa.pid", "peftqa.process"
ORPHAN_TAG = "peftqa.marked_killed"  # on a run end_orphans ended: by which process, and why
# MLflow's HTTP retries unless the environment sets them: 0 + 2 + 4 + 8 s (+ jitter), about 15 s a request to a gone
# server, not MLflow's 4 minutes (7 retries, factor 2). The timeout stays MLflow's 120 s a try: big uploads must pass
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}


class ServerLost(PeftqaError):
    """The tracking server stopped answering during a run: the run is left as it is, to be resumed."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root() -> str:
    return (project_root() / "mlruns").as_uri()


def redact(uri: str) -> str:
    """Hide the password in scheme://user:password@host URIs before a URI is logged or printed."""
    return re.sub(r"(//[^/:@]+):[^/@]+@", r"\1:***@", uri)


def make_client() -> MlflowClient:
    for key, value in HTTP_RETRIES.items():  # read by MLflow at each request; a user's own setting wins
        os.environ.setdefault(key, value)
    return MlflowClient(tracking_uri=tracking_uri())


def server_lost(err: BaseException) -> bool:
    """Whether `err` is how MLflow's client fails once its retries against a tracking server are spent: the server is
    down or unreachable (not a refusal the server answered with); or ServerLost, which says so."""
    return isinstance(err, ServerLost) or isinstance(err, MlflowException) and str(err).startswith(
        "API request to") and any(text in str(err) for text in ("Max retries exceeded", "Connection", "timed out"))


def end_status(err: BaseException) -> str:
    """The MLflow status of a run that `err` ended: KILLED for SIGTERM or Ctrl-C, else FAILED."""
    return "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"


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
    must fail now, in one paragraph, not after a GPU hour has been spent. Reads alone do not show a read-only
    store or one another process is writing, so the check ends with a write (an experiment tag): sqlite waits
    up to MLflow's busy timeout (20 s) for a lock."""
    uri = tracking_uri()
    try:
        client = make_client()
        experiment_id = get_or_create_experiment(client, experiment)
        found = client.get_experiment(experiment_id)
        if found.lifecycle_stage == "active":
            client.set_experiment_tag(experiment_id, WRITE_PROBE_TAG, "ok")
    except Exception as err:  # sqlalchemy, HTTP and MLflow errors alike: the store is not usable
        reason = (redact(str(err)).strip().splitlines() or [""])[0][:300]  # the first line: SQL and links follow
        raise PeftqaError(f"the MLflow store {redact(uri)} is not usable ({type(err).__name__}: {reason}). "
                          "Fix it before training: check that the folder of mlflow.db is writable and no other "
                          "process holds a lock on it, or that the tracking server is up, or set MLFLOW_TRACKING_URI "
                          "to a store that works.") from None
    if found.lifecycle_stage != "active":  # runs cannot be created in a deleted experiment
        raise PeftqaError(f"the MLflow experiment '{experiment}' (id {experiment_id}) in {redact(uri)} is deleted; "
                          f"restore it (`mlflow experiments restore --experiment-id {experiment_id}` against that "
                          "store) or set mlflow.experiment in params.yaml to another name")
    if found.artifact_location.startswith("file:"):
        check_artifact_folder(Path(url2pathname(urlparse(found.artifact_location).path)))
    try:
        end_orphans(client, experiment_id)
    except Exception as err:  # noqa: BLE001 - housekeeping: the store works, so the command goes on
        log.warning("could not look for orphaned runs in %s (%s)", redact(uri), complaint(err))
    return client, experiment_id


def process_tags() -> dict[str, str]:
    """The tags that tie a run to this process: end_orphans reads them."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            PROCESS_TAG: " ".join([*this_boot(), process_start(os.getpid()) or ""])}


@shielded()
def end_orphans(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED each RUNNING run of the experiment that a process on this machine started and that is gone (SIGKILL,
    the OOM killer, a reboot, a killed queue worker); their ids. A run whose process lives (another worker's) is left
    alone, and so is one from another machine, whose processes this one cannot see."""
    host = socket.gethostname()
    running = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                 f"tags.`{HOST_TAG}` = '{host}'", max_results=1000)
    ended = []
    for run in running:
        pid, identity = run.data.tags.get(PID_TAG, ""), run.data.tags.get(PROCESS_TAG, "")
        if pid.isdigit() and not process_alive(int(pid), identity):
            client.set_tag(run.info.run_id, ORPHAN_TAG, f"by process {os.getpid()} on {host}: process {pid} is gone")
            client.set_terminated(run.info.run_id, status="KILLED")
            log.warning("MLflow run %s (%s) was left RUNNING by process %s on %s, which is gone: marked KILLED",
                        run.info.run_id, run.info.run_name, pid, host)
            ended.append(run.info.run_id)
    return ended


def check_run(client: MlflowClient, run_id: str, source: str) -> None:
    """The run that `source` names must be in the store: logging to a missing one fails only after the work is done."""
    try:
        client.get_run(run_id)
    except MlflowException:
        raise PeftqaError(f"{source}: its MLflow run {run_id} is not in the store {redact(tracking_uri())}; retrain "
                          "(`dvc repro`) or set MLFLOW_TRACKING_URI to the store the training logged to") from None


def check_artifact_folder(folder: Path) -> None:
    """Create the folder if needed, then a file in it. A real write, not os.access: os.access says yes to a
    regular file named mlruns, under which no run folder can be made, and for root it ignores the mode bits."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        why = "a file is in the way" if folder.is_file() else err.strerror or str(err)
        raise PeftqaError(f"the MLflow artifact folder {folder} is not a writable folder ({why}), so adapters could "
                          "not be logged; make it a folder you can write to (check its permissions and mount), or "
                          "delete mlflow.db and mlruns/ to start a fresh store") from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root(),
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def run_tags(stage: str, model: str, family: str, method: str, source: str) -> dict[str, str]:
    """A run's tags: MLflow's own source tags (the run page's Source and commit) and peftqa's (filterable in the UI).
    `source` is the stage's module file, e.g. stages/train.py; env.* name the installed lock
    (peftqa/mlops/environment.py)."""
    commit = git_commit()
    return {
        MLFLOW_SOURCE_NAME: source,
        MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL),
        **({MLFLOW_GIT_COMMIT: commit} if commit != "unknown" else {}),  # outside a git checkout: no commit to name
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "stage": stage,
        "model": model,
        "family": family,
        "method": method,
        **environment.environment_tags(),  # the lock the environment was installed from (make install)
        **process_tags(),  # which process runs it: a run it leaves RUNNING when killed is found by end_orphans
    }


@shielded()
def log_params(client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
    """Log a flat dict of params in batches (MLflow takes at most 100 per call)."""
    items = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in sorted(params.items())]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100], synchronous=True)


@shielded()
def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int,
                model_id: str | None = None, dataset: Dataset | None = None) -> None:
    """Metrics at `step`, NaN skipped. With `model_id` they are also the logged model's metrics (its page and
    search_logged_models show them); with `dataset`, they name the split they were measured on."""
    link = {"model_id": model_id,
            **({"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset else {})}
    values = [Metric(key, float(value), timestamp_ms, step, **link) for key, value in metrics.items() if value == value]
    client.log_batch(run_id, metrics=values, synchronous=True)


def split_dataset(frame: pd.DataFrame, split: str, source: str) -> Dataset:
    """A split as an MLflow dataset: named pubmedqa-pqal/<split>, its digest the md5 of its items (pmid, label) in
    order, its source the file (or fold) it came from, its profile the size and label counts."""
    items = frame[["pmid", "label"]].astype(str).to_csv(index=False).encode()
    schema = {"mlflow_colspec": [{"type": "string", "name": column, "required": True} for column in frame.columns]}
    profile = {"num_rows": len(frame), **{f"label_{k}": int(v) for k, v in frame["label"].value_counts().items()}}
    return Dataset(name=f"pubmedqa-pqal/{split}", digest=hashlib.md5(items).hexdigest(), source_type="local",
                   source=json.dumps({"uri": source}), schema=json.dumps(schema), profile=json.dumps(profile))


@shielded()
def log_datasets(client: MlflowClient, run_id: str, datasets: dict[str, Dataset]) -> None:
    """{context: dataset} as the run's inputs (the runs table's Dataset column); context: training, validation, test."""
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])
                               for context, dataset in datasets.items()])


def child_tags(parent_run_id: str | None) -> dict[str, str]:
    return {MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {}


@shielded()
def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)


@shielded()
def log_folder(client: MlflowClient, run_id: str, folder: Path, artifact_path: str) -> None:
    client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)


def log_metrics_row(client, run_id: str, row: dict) -> None:
    """One history row into MLflow, at step=epoch, so MLflow and history.csv hold the same numbers."""
    log_metrics(client, run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"],
                timestamp_ms=int(time.time() * 1000))


@contextlib.contextmanager
def mlflow_run(client, experiment_id: str, resume: dict | None, *, run_name: str, tags: dict[str, str],
               config: dict, datasets: dict[str, Dataset], checkpoint: Path | None = None) -> Iterator[str]:
    """The training's MLflow run, its whole life. A new run gets the config as params and the splits as datasets;
    resuming, the checkpoint's run is reopened (now this process's) and its epochs that never reached MLflow are
    logged. The run ends FINISHED when the block completes, KILLED on SIGTERM or Ctrl-C, FAILED when it raises; a
    SIGKILL leaves it RUNNING, until end_orphans marks it KILLED. Either way the next run resumes it from `checkpoint`.
    A tracking server that stops answering mid-run is one PeftqaError: the run stays RUNNING, to be resumed."""
    with shielded():  # a stop signal waits for the run to be opened
        if resume is None:
            run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            log_params(client, run_id, config)
            log_datasets(client, run_id, datasets)
        else:
            run_id = resume["run_id"]
            set_tags(client, run_id, process_tags())  # first: RUNNING with the dead process's tags is an orphan
            client.update_run(run_id, status="RUNNING")
            if ORPHAN_TAG in client.get_run(run_id).data.tags:  # end_orphans' mark: the run is alive again
                client.delete_tag(run_id, ORPHAN_TAG)
            logged = {m.step for m in client.get_metric_history(run_id, "val_macro_f1")}
            for row in resume["history"]:  # epochs checkpointed but killed before they reached MLflow
                if row["epoch"] not in logged:
                    log_metrics_row(client, run_id, row)
    try:
        yield run_id
    except BaseException as err:
        end_run_after(client, run_id, err)
        if server_lost(err):
            kept = (f"{checkpoint} keeps the last finished epoch, and the next `dvc repro` resumes from it into the "
                    "same run, logging the epochs the server missed" if checkpoint is not None and checkpoint.exists()
                    else "the next `dvc repro` trains again (train.checkpoint_every_epoch is off, or no epoch ended)")
            raise ServerLost(f"the MLflow tracking server {redact(tracking_uri())} stopped answering during the "
                             f"training of run {run_id} ({redact(complaint(err))}), after MLflow's retries "
                             f"({os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES')}, see MLFLOW_HTTP_REQUEST_*). "
                             f"Nothing is lost: {kept}. Start the server again (or set MLFLOW_TRACKING_URI to one "
                             "that answers), then run `dvc repro`.") from None
        raise
    with shielded():
        client.set_terminated(run_id, status="FINISHED")


@shielded()
def end_run_after(client: MlflowClient, run_id: str, err: BaseException) -> None:
    """End a run that `err` is ending (KILLED or FAILED, end_status) as well as the store allows: with the tracking
    server gone, not at all (it would wait out the retries again; the run is resumed later); when the store fails
    too (its disk is full), with a warning. The caller re-raises `err`: that is the error the user sees."""
    if server_lost(err):
        return
    status = end_status(err)
    try:
        client.set_terminated(run_id, status=status)
    except Exception as problem:  # noqa: BLE001 - the caller re-raises the error that matters
        log.warning("could not mark MLflow run %s %s (%s); the next command that connects marks it KILLED", run_id,
                    status, complaint(problem))


@shielded()
def log_outputs(client, run_id: str, out_dir: Path, summary: dict, probe: Probe | None, dataset: Dataset) -> None:
    """The best epoch's figures (linked to the logged model and the val split), the probe's grid, the files."""
    log_metrics(client, run_id, {key: summary[key] for key in (
        "best_epoch", "best_val_macro_f1", "trainable_params", "adapter_bytes", "train_seconds")},
        step=summary["best_epoch"], timestamp_ms=int(time.time() * 1000), model_id=summary["mlflow_model_id"],
        dataset=dataset)
    if probe is not None:  # val macro-F1 per C tried, in grid order (step = position in peft.base.c_grid, sorted)
        for step, row in enumerate(probe.grid):
            log_metrics(client, run_id, {"probe_c": row["c"], "probe_val_macro_f1": row["val_macro_f1"]},
                        step=step, timestamp_ms=int(time.time() * 1000))
    log_folder(client, run_id, ADAPTER.path(into=out_dir), ADAPTER.file)
    for output in (HISTORY, TRAIN_SUMMARY, RESOLVED_CONFIG):
        client.log_artifact(run_id, str(output.path(into=out_dir)))


@shielded()
def log_evaluation(client: MlflowClient, summary: dict, metrics_by_split: dict[str, dict],
                   datasets: dict[str, Dataset], figures: dict[str, Figure]) -> None:
    """Val/test metrics and the confusion-matrix figures go into the same MLflow run as the training, as
    eval_<split>_<metric>: apart from the per-epoch curves (val_macro_f1, ...), which stay equal to history.csv.
    They are linked to the run's logged model and to the split they were measured on; test joins the run's inputs."""
    run_id = summary["mlflow_run_id"]
    log_datasets(client, run_id, {"test": datasets["test"]})
    for split, metrics in metrics_by_split.items():
        log_metrics(client, run_id, {f"{METRIC_PREFIX}{split}_{key}": value for key, value in metrics.items()},
                    step=summary["best_epoch"], timestamp_ms=int(time.time() * 1000),
                    model_id=summary.get("mlflow_model_id"), dataset=datasets[split])
    for name, figure in figures.items():
        client.log_figure(run_id, figure, f"eval/{name}")
