"""The train stage on tiny random models: MLflow logging (real sqlite store), early stopping and best-epoch
restore, zero-shot base, kill-and-resume, determinism."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hold
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from peftqa import compute
from peftqa.errors import PeftqaError
from peftqa.mlops import tracking
from peftqa.training import loop
from peftqa.training import run as training_run
from peftqa.training.checkpoint import read_checkpoint
from stages import train as train_stage

from mlflow_server import free_port, start_server, stop
from pipeline_copy import stage_env
from tiny_models import tiny_frame

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def mlflow_client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def only_run(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"expected one run named {name}, found {len(runs)}"
    return runs[0]


def test_training_run_is_logged_to_mlflow_with_params_metrics_and_artifacts(stage_dir):
    root = stage_dir(**{"train.patience": 5})
    train_stage.main(["lora"])

    history = pd.read_csv(root / "models/lora/history.csv")
    summary = json.loads((root / "models/lora/train_summary.json").read_text())
    assert list(history["epoch"]) == [0, 1, 2]  # epoch 0: the untrained start, validated
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors", "peftqa.json"} <= {
        p.name for p in (root / "models/lora/adapter").iterdir()}
    assert summary["epochs_run"] == 2 and summary["trainable_params"] > 0 and summary["adapter_bytes"] > 0

    client = mlflow_client(root)
    run = only_run(client, "lora")
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.params["peft.lora.r"] == "8" and run.data.params["peft_config.r"] == "8"
    assert run.data.params["train.epochs"] == "2" and run.data.params["family"] == "encoder"
    # model.dtype as this device resolved it (auto on CPU: fp32), and what the CPU offers for bf16
    assert run.data.params["compute"] == "fp32" and run.data.params["cpu_bf16"] == compute.cpu_bf16_support()
    assert run.data.tags["stage"] == "train@lora" and run.data.tags["method"] == "lora"
    for column in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_f1_yes", "val_f1_no", "seconds"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, column))
        rows = history.dropna(subset=[column])  # epoch 0 trains nothing: no train_loss, and MLflow gets no NaN
        assert [step for step, _ in logged] == list(rows["epoch"]), column  # one value per epoch
        assert [value for _, value in logged] == pytest.approx(list(rows[column])), column  # the same numbers
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "history.csv", "train_summary.json", "resolved_config.json"} <= artifacts
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert str(root) not in json.dumps({k: v for k, v in run.data.params.items() if k != "model.name_or_path"})
    assert run.data.params["peft_config.base_model_name_or_path"] == run.data.params["model.name_or_path"]


def test_the_run_records_source_commit_datasets_and_a_logged_model_that_holds_the_eval_metrics(stage_dir):
    """What the MLflow UI shows on the run page: Source and commit (MLflow's own tags), the splits as datasets,
    the adapter as a logged model whose metrics include evaluate's; the per-epoch curve stays history.csv's."""
    from stages import evaluate as evaluate_stage

    root = stage_dir()
    tiny_frame(8, 9000).to_csv(root / "data/processed/test.csv", index=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=root, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    train_stage.main(["lora"])
    evaluate_stage.main(["lora"])

    client = mlflow_client(root)
    run = only_run(client, "lora")
    summary = json.loads((root / "models/lora/train_summary.json").read_text())
    assert run.data.tags["mlflow.source.name"] == "stages/train.py" and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags["mlflow.source.git.commit"] == commit
    inputs = {d.dataset.name: (d.dataset, {t.key: t.value for t in d.tags}) for d in run.inputs.dataset_inputs}
    assert {name: tags["mlflow.data.context"] for name, (_, tags) in inputs.items()} == {
        "pubmedqa-pqal/train": "training", "pubmedqa-pqal/val": "validation", "pubmedqa-pqal/test": "test"}
    assert json.loads(inputs["pubmedqa-pqal/train"][0].profile)["num_rows"] == 16
    other = tiny_frame(16, 2000)  # other items: another digest
    assert inputs["pubmedqa-pqal/train"][0].digest != tracking.split_dataset(other, "train", "x").digest

    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.model_id for m in models] == [summary["mlflow_model_id"]] and models[0].source_run_id == run.info.run_id
    linked = {m.key: m for m in models[0].metrics}
    assert linked["eval_test_macro_f1"].value == pytest.approx(
        json.loads((root / "reports/eval/lora/metrics_test.json").read_text())["macro_f1"])
    assert linked["eval_test_macro_f1"].dataset_name == "pubmedqa-pqal/test"
    assert linked["best_val_macro_f1"].value == summary["best_val_macro_f1"]
    history = pd.read_csv(root / "models/lora/history.csv")
    curve = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert len(curve) == len(history)  # evaluate's val metrics are eval_val_*, not another curve point
    assert run.data.metrics["eval_val_macro_f1"] == pytest.approx(
        json.loads((root / "reports/eval/lora/metrics_val.json").read_text())["macro_f1"])


def test_early_stopping_restores_the_best_epoch(stage_dir, monkeypatch):
    """Val macro-F1 scripted as 0.4 (the start), 0.5, 0.7, 0.6, 0.6: patience 2 stops after epoch 4 and restores
    epoch 2."""
    stage_dir(**{"train.epochs": 6, "train.patience": 2})
    scripted = iter([0.4, 0.5, 0.7, 0.6, 0.6, 0.9, 0.9])
    real_validate = loop.validate
    snapshots = {}

    def scripted_validate(backbone, *args, **kwargs):
        metrics = real_validate(backbone, *args, **kwargs)
        epoch = len(snapshots)
        snapshots[epoch] = [p.detach().clone() for p in backbone.trainable_parameters()]
        return {**metrics, "val_macro_f1": next(scripted)}

    monkeypatch.setattr(loop, "validate", scripted_validate)
    train_stage.main(["lora"])
    summary = json.loads(Path("models/lora/train_summary.json").read_text())
    history = pd.read_csv("models/lora/history.csv")
    assert list(history["epoch"]) == [0, 1, 2, 3, 4]
    assert summary["best_epoch"] == 2 and summary["epochs_run"] == 4 and summary["best_val_macro_f1"] == 0.7
    assert not torch.equal(snapshots[2][0], snapshots[4][0])  # training moved on after epoch 2 ...
    head = load_file("models/lora/adapter/head.safetensors")
    head_values = sorted(head.values(), key=lambda t: t.numel())
    best_values = [t for t in snapshots[2] if t.shape in {v.shape for v in head_values}]
    assert any(torch.equal(h, b) for h in head_values for b in best_values)  # ... and the saved head is epoch 2's


def test_zero_shot_base_trains_nothing_and_records_epoch_zero(stage_dir):
    root = stage_dir("seq2seq")
    train_stage.main(["base"])
    history = pd.read_csv(root / "models/base/history.csv")
    summary = json.loads((root / "models/base/train_summary.json").read_text())
    assert list(history["epoch"]) == [0] and pd.isna(history["train_loss"][0])
    assert summary["trainable_params"] == 0 and summary["epochs_run"] == 0 and "zero-shot" in summary["note"]
    assert not (root / "models/base/adapter/adapter_model.safetensors").exists()


def test_unknown_method_is_a_usage_error(stage_dir):
    stage_dir()
    with pytest.raises(PeftqaError, match="usage"):
        train_stage.main(["lorra"])


@pytest.mark.parametrize("store", ["sqlite-under-a-file", "server-down"])
def test_unusable_mlflow_store_fails_before_training(stage_dir, monkeypatch, tmp_path, store):
    """A store that cannot be opened is reported before any model is loaded or trained."""
    stage_dir()
    if store == "sqlite-under-a-file":  # the db's folder is a file: sqlite cannot create the store
        (tmp_path / "not_a_folder").write_text("")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'not_a_folder' / 'mlflow.db'}")
    else:  # a tracking server that is down (nothing listens on port 9)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:9")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    loaded = []
    monkeypatch.setattr(training_run, "load_backbone", lambda *a, **k: loaded.append(1))
    with pytest.raises(PeftqaError, match="MLflow store") as error:
        train_stage.main(["lora"])
    assert not loaded
    assert "secret" not in str(error.value)  # the password is redacted


# -----------------------------------------------------------------------------
# kill and resume, determinism (subprocesses: the real command DVC runs)


def run_stage(root: Path, method: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.train", method], cwd=root, env=stage_env(root),
                          capture_output=True, text=True, timeout=300)


def kill_after_checkpoints(root: Path, method: str, writes: int, sig: signal.Signals = signal.SIGKILL,
                           command: list[str] | None = None) -> tuple[Path, int, str]:
    """Start the real train command in root (or `command`), hold it right after its checkpoint's `writes`th write
    (tests/hold.py: it says so and blocks there, so no speed can take it past that point) and send it `sig` there;
    returns the checkpoint's path, the exit status and stderr."""
    command = command or [sys.executable, "-m", "stages.train", method]
    log = root / "stderr.log"
    with hold.held_process(command, log, after_checkpoints=writes, cwd=root, env=stage_env(root)) as held:
        held.process.send_signal(sig)
        status = held.process.wait(timeout=120)
    text = log.read_text()
    checkpoint = root / f"models/{method}/checkpoint.pt"
    assert checkpoint.exists(), f"no checkpoint after its write {writes}:\n{text[-3000:]}"
    assert not (root / f"models/{method}/train_summary.json").exists()
    return checkpoint, status, text


def trained_outputs(root: Path, method: str) -> tuple[bytes, pd.DataFrame]:
    """What a resumed run must reproduce bit for bit: the adapter's weights files (peft's adapter_model, a native
    method's own), the head's, and the history (timings aside)."""
    history = pd.read_csv(root / f"models/{method}/history.csv")
    weights = sorted((root / f"models/{method}/adapter").glob("*.safetensors"))
    assert weights, f"no weights in models/{method}/adapter"
    return (b"".join(path.name.encode() + path.read_bytes() for path in weights),
            history[[c for c in history.columns if c != "seconds"]])


@pytest.mark.parametrize("method", ["bottleneck"])  # written here, with its own save; peft's lora: the mid-epoch test
def test_killed_training_resumes_to_the_same_result(stage_dir, tmp_path, method):
    """SIGKILL after epoch 1's checkpoint; the re-run resumes, continues the same MLflow run, and ends with
    bytes identical to an uninterrupted run (CPU is deterministic). The method is a native one, whose weights peftqa
    saves itself; the mid-epoch test below does the same for peft's LoRA."""
    root = stage_dir(n_train=96, **{"train.epochs": 2, "train.patience": 5})  # killed after epoch 1, resumes epoch 2
    checkpoint, status, _ = kill_after_checkpoints(root, method, writes=2)  # epoch 1's: epoch 0 is the start
    assert status == -signal.SIGKILL
    client = mlflow_client(root)
    assert only_run(client, method).info.status == "RUNNING"  # nothing could end it

    resumed = run_stage(root, method)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and not checkpoint.exists(), resumed.stderr[:3000]
    assert "which is gone: marked KILLED" in resumed.stderr  # the orphan, found by its process tags, then resumed
    resumed_bytes, resumed_history = trained_outputs(root, method)

    run = only_run(client, method)  # no duplicate run
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")]
    assert sorted(steps) == [0, 1, 2]  # every epoch once, the missing one appended

    # the same params, uninterrupted, in a fresh directory
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("params.yaml", "data"):
        subprocess.run(["cp", "-r", str(root / name), str(fresh / name)], check=True)
    clean = run_stage(fresh, method)
    assert clean.returncode == 0, clean.stderr
    clean_bytes, clean_history = trained_outputs(fresh, method)
    assert clean_bytes == resumed_bytes
    pd.testing.assert_frame_equal(clean_history, resumed_history)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_training_ends_its_run_killed_and_resumes_it(stage_dir, sig):
    """SIGTERM (a scheduler, `kill`) or SIGINT (Ctrl-C, `dvc queue kill`) after epoch 0's checkpoint: one `error:`
    paragraph, then death by the signal itself (a shell stops a loop of stages on it), a whole checkpoint, the MLflow
    run KILLED; the next run resumes into it. The SIGKILL test above sees RUNNING instead: a SIGKILL leaves no
    moment to end the run."""
    root = stage_dir(n_train=96, **{"train.epochs": 2, "train.patience": 5})
    checkpoint, status, stderr = kill_after_checkpoints(root, "lora", writes=1, sig=sig)
    assert status == -sig and "Traceback" not in stderr, stderr[-3000:]
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: stopped by {sig.name}.")
    assert read_checkpoint(checkpoint)["history"][0]["epoch"] == 0  # whole: its digest checks
    client = mlflow_client(root)
    assert only_run(client, "lora").info.status == "KILLED"

    resumed = run_stage(root, "lora")
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-3000:]
    run = only_run(client, "lora")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")) == [0, 1, 2]


def test_a_sigterm_without_peftqa_s_handler_leaves_the_run_running(stage_dir):
    """The control: the stage's main called without run_cli's handler, so SIGTERM's default action ends the process
    at once, and the run stays RUNNING (until end_orphans finds it)."""
    root = stage_dir(n_train=96, **{"train.epochs": 2, "train.patience": 5})
    command = [sys.executable, "-c", "from stages import train; train.main(['lora'])"]
    _, status, stderr = kill_after_checkpoints(root, "lora", writes=1, sig=signal.SIGTERM, command=command)
    assert status == -signal.SIGTERM and "error: stopped" not in stderr
    assert only_run(mlflow_client(root), "lora").info.status == "RUNNING"


def test_a_tracking_server_that_dies_mid_training_fails_it_in_seconds_and_the_rerun_logs_every_epoch_once(
        stage_dir, tmp_path):
    """A real `mlflow server` on 127.0.0.1, SIGKILLed once epoch 1 is validated: the training fails within MLflow's
    bounded retries (peftqa's HTTP_RETRIES: about 15 s; MLflow's own defaults wait about 4 minutes) with one `error:`
    paragraph, keeping its checkpoint; the server restarted, the next run resumes into the same MLflow run, and the
    store's metrics equal history.csv point for point, each epoch once."""
    root = stage_dir(n_train=96, **{"train.epochs": 2, "train.patience": 5})
    port, log_path = free_port(), tmp_path / "mlflow_server.log"
    env = {**stage_env(root), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    server = start_server(root, port, log_path)
    try:
        log = tmp_path / "train.log"  # held after epoch 1's checkpoint: the 2nd write, epoch 0 being the start
        with hold.held_process([sys.executable, "-m", "stages.train", "lora"], log, after_checkpoints=2, cwd=root,
                               env=env) as training:
            assert "epoch 1: train_loss" in log.read_text()  # validated, its metrics not sent yet
            os.killpg(server.pid, signal.SIGKILL)
            killed = time.monotonic()
            training.release()
            status = training.process.wait(timeout=240)
            waited = time.monotonic() - killed
        text = log.read_text()
        server.wait(timeout=30)
        assert status == 1 and "Traceback" not in text, text[-3000:]
        (error,) = [line for line in text.splitlines() if line.startswith("error:")]
        assert error.startswith(f"error: the MLflow tracking server http://127.0.0.1:{port} stopped answering")
        assert "models/lora/checkpoint.pt keeps the last finished epoch" in error
        assert waited < 90, f"the training waited {waited:.0f} s for the dead server"  # the bound, not a speed target
        assert (root / "models/lora/checkpoint.pt").exists() and not (root / "models/lora/history.csv").exists()

        server = start_server(root, port, log_path)
        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        assert run.info.status == "RUNNING"  # left for the rerun: the server was not there to end it
        missed = {m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")}
        # the control: the kill cost the store epochs, so without the rerun's logging of the missed ones the two
        # would disagree
        assert missed < {0, 1, 2}, missed
        resumed = subprocess.run([sys.executable, "-m", "stages.train", "lora"], cwd=root, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-3000:]
        (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        assert run.info.status == "FINISHED"
        history = pd.read_csv(root / "models/lora/history.csv")
        for column in ("val_loss", "val_macro_f1", "train_loss"):
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, column))
            expected = [(int(e), float(v)) for e, v in zip(history["epoch"], history[column]) if v == v]  # no NaN
            assert logged == expected, column
    finally:
        stop(server)


# 156 items in micro-batches of 4: 39 per epoch, 20 optimizer steps of 2 (the last of 1), a checkpoint every 2 steps
MID_EPOCH = {"train.epochs": 2, "train.patience": 5, "train.grad_accum_steps": 2, "train.checkpoint_every_steps": 2}
LENGTH_GROUPS = {"train.length_groups": True}  # its order must come back on resume as the plain shuffle's does


def train_in_process(root: Path, monkeypatch, keep_step: int = 0) -> list[torch.Tensor]:
    """train@lora in root, in this process. Returns the weights after its last epoch, from the checkpoint written
    then: the saved adapter is the best epoch's, on these tiny splits epoch 0 (the probe's head already scores val
    perfectly), so only these show the trained epochs' weights. With keep_step, the checkpoint written after that
    optimizer step inside an epoch is copied to root/mid_epoch.pt."""
    real_save, written = loop.save_checkpoint, []

    def save_and_keep(path: Path, state: dict) -> None:
        real_save(path, state)
        written.append(state["parameters"])  # clones, unlike the state's optimizer tensors
        if keep_step and state.get("position", {}).get("optimizer_steps") == keep_step:
            shutil.copy(path, root / "mid_epoch.pt")

    with monkeypatch.context() as patch:
        patch.chdir(root)
        patch.setenv("DVC_ROOT", str(root))
        patch.setattr(loop, "save_checkpoint", save_and_keep)
        train_stage.main(["lora"])
    return written[-1]


def same_weights(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("batches", [{}, LENGTH_GROUPS], ids=["shuffled", "length-groups"])
def test_training_killed_mid_epoch_resumes_at_its_next_micro_batch(stage_dir, monkeypatch, caplog, batches):
    """SIGKILL right after a checkpoint inside epoch 1; the re-run goes on at the next micro-batch of that epoch (same
    order, RNG, optimizer, scheduler, accumulation position), continues the MLflow run, and ends bit-identical to an
    uninterrupted run: adapter, history and the last epoch's weights. With the plain shuffle and with batches of
    similar length (train.length_groups)."""
    root = stage_dir(n_train=156, **MID_EPOCH, **batches)
    checkpoint, _, _ = kill_after_checkpoints(root, "lora", writes=2)  # the first write is epoch 0's, the second in 1
    position = read_checkpoint(checkpoint).get("position")
    assert position is not None and position["epoch"] == 1, "the kill came after epoch 1's end"
    assert 0 < position["micro_steps"] < 39, "the kill came after epoch 1's last micro-batch"
    assert position["micro_steps"] % 4 == 0  # a checkpoint every 2 optimizer steps of 2 micro-batches

    with caplog.at_level("INFO", logger="peftqa"):
        resumed_weights = train_in_process(root, monkeypatch)
    assert (f"in epoch 1 after micro-batch {position['micro_steps']} (optimizer step "
            f"{position['optimizer_steps']})") in caplog.text
    assert not checkpoint.exists()
    client = mlflow_client(root)
    run = only_run(client, "lora")
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")) == [0, 1, 2]

    fresh = root / "uninterrupted"  # the same params and data, trained in one go
    fresh.mkdir()
    shutil.copy(root / "params.yaml", fresh)
    shutil.copytree(root / "data", fresh / "data")
    clean_weights = train_in_process(fresh, monkeypatch)
    assert same_weights(clean_weights, resumed_weights)
    (clean_bytes, clean_history), (resumed_bytes, resumed_history) = (trained_outputs(r, "lora") for r in (fresh, root))
    assert clean_bytes == resumed_bytes
    pd.testing.assert_frame_equal(clean_history, resumed_history)


@pytest.mark.parametrize("fault", ["restart the epoch", "reshuffle"])
def test_a_mid_epoch_resume_that_loses_its_place_ends_elsewhere(stage_dir, monkeypatch, fault):
    """The negative control of the test above: a resume that discards the checkpoint's step position (the epoch
    restarts at its first micro-batch) or draws another order for the rest of the epoch ends with other weights and
    another history, which that test's comparison catches. Its checkpoint is the one an uninterrupted run writes
    after optimizer step 4 of epoch 1, put back as if that run had been killed there. With length groups, so that a
    reshuffle there must show too."""
    root = stage_dir(n_train=156, **MID_EPOCH, **LENGTH_GROUPS)
    clean_weights = train_in_process(root, monkeypatch, keep_step=4)
    _, clean_history = trained_outputs(root, "lora")
    shutil.copy(root / "mid_epoch.pt", root / "models/lora/checkpoint.pt")

    if fault == "restart the epoch":
        real_position = loop.resume_position
        monkeypatch.setattr(loop, "resume_position", lambda *args: loop.EpochPosition(real_position(*args).epoch))
    else:
        real_rows = loop.epoch_rows
        monkeypatch.setattr(loop, "epoch_rows",
                            lambda accelerator, n, seed, *rest: real_rows(accelerator, n, seed + 1000, *rest))
    faulty_weights = train_in_process(root, monkeypatch)
    _, faulty_history = trained_outputs(root, "lora")
    assert not same_weights(faulty_weights, clean_weights)
    assert not faulty_history.equals(clean_history)
