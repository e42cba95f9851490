"""The faults a long experiment meets (issue 27), each on real files: a truncated or corrupted artifact on disk.

An adapter's weights, the encoder's head and a features file are refused by the stage that reads them, in one
paragraph naming the file and how to get it back, with nothing else overwritten; a corrupted checkpoint makes the
training start afresh, saying so. Each has a control: with peftqa's checks bypassed (`errors.reading` and the sha256
check of peftqa.json made no-ops), the library's own exception reaches the user, or, for a byte flipped inside the
weights, which no library checks, the damaged adapter is used without a word.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from peftqa import errors, files, stops
from peftqa.data import features
from peftqa.errors import PeftqaError
from peftqa.families import encoder as encoder_family
from peftqa.families import load as families_load
from peftqa.training import checkpoint

from pipeline_copy import stage_env, update_params_file

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_header_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF  # safetensors: the 8-byte header length; a zip (an .npz): its local header's signature
    path.write_bytes(bytes(data))


def flip_middle_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the data: a zip's CRC sees it (safetensors' and torch's data have none)
    path.write_bytes(bytes(data))


def flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # safetensors: the sign and exponent of the last weight (little-endian), so the answers change
    path.write_bytes(bytes(data))


def bypass_the_check(monkeypatch) -> None:
    """The control: the read without peftqa's wrapper and without the sha256 check, as it was before."""
    no_op = lambda path, fix: contextlib.nullcontext()  # noqa: E731
    for module in (families_load, encoder_family, features):
        monkeypatch.setattr(module, "reading", no_op)
    monkeypatch.setattr(families_load, "check_digests", lambda folder, digests, method: None)


@pytest.mark.parametrize(("method", "damaged", "damage"), [
    ("lora", "adapter_model.safetensors", truncate), ("lora", "adapter_model.safetensors", flip_header_byte),
    ("lora", "adapter_model.safetensors", flip_last_byte), ("lora", "head.safetensors", truncate),
    ("lora", "head.safetensors", flip_last_byte), ("bottleneck", "bottleneck.safetensors", truncate),
    ("bottleneck", "bottleneck.safetensors", flip_last_byte),
])
def test_a_damaged_adapter_is_refused_naming_the_file_and_the_fix(trained, monkeypatch, method, damaged, damage):
    from stages import evaluate as evaluate_stage

    root = trained(method)
    preds = root / f"reports/eval/{method}/preds_test.csv"
    before, p_yes = preds.read_bytes(), pd.read_csv(preds)["p_yes"]
    damage(root / f"models/{method}/adapter/{damaged}")
    with pytest.raises(PeftqaError) as error:
        evaluate_stage.main([method])
    message = str(error.value)
    assert f"models/{method}/adapter/{damaged}: cannot be read, it is truncated or corrupted" in message
    assert f"dvc checkout models/{method}/adapter" in message and f"dvc repro -f train@{method}" in message
    assert "\n" not in message and preds.read_bytes() == before  # one paragraph; the last predictions kept
    bypass_the_check(monkeypatch)
    if damage is flip_last_byte:  # no library notices: the damaged weights are scored as if they were the trained
        evaluate_stage.main([method])
        assert not pd.read_csv(preds)["p_yes"].equals(p_yes)  # other answers, without a word
        return
    with pytest.raises(Exception) as raw:
        evaluate_stage.main([method])
    assert not isinstance(raw.value, PeftqaError)  # the library's own error, with its traceback


@pytest.mark.parametrize("damage", [truncate, flip_header_byte, flip_middle_byte])
def test_a_damaged_features_file_is_refused_naming_it_and_the_fix(tmp_path, monkeypatch, damage):
    frame = pd.DataFrame({"pmid": ["1", "2"], "label": ["yes", "no"]})
    features.save_features(tmp_path / "train.npz", frame, np.ones((2, 4), dtype=np.float32))
    assert features.load_features("train", tmp_path)[2].shape == (2, 4)
    damage(tmp_path / "train.npz")
    with pytest.raises(PeftqaError, match=rf"{tmp_path / 'train.npz'}: cannot be read, it is truncated or corrupted "
                                          r"\(BadZipFile: .*\); restore it with `dvc checkout .*` \(or rebuild it: "
                                          r"`dvc repro -f embed`\)"):
        features.load_features("train", tmp_path)
    bypass_the_check(monkeypatch)
    with pytest.raises(Exception) as raw:
        features.load_features("train", tmp_path)
    assert not isinstance(raw.value, PeftqaError)


@pytest.mark.parametrize("damage", [lambda path: truncate(path, 0.5), lambda path: truncate(path, 0.0),
                                    flip_header_byte, flip_middle_byte], ids=["half", "empty", "header", "data"])
def test_a_damaged_checkpoint_is_ignored_and_training_starts_afresh(tmp_path, caplog, monkeypatch, damage):
    path = tmp_path / "checkpoint.pt"
    state = {"config": {"a": 1}, "parameters": [torch.ones(64, 64)], "history": [{"epoch": 1}]}
    checkpoint.save_checkpoint(path, state)
    assert checkpoint.load_checkpoint(path, {"a": 1})["history"] == [{"epoch": 1}]  # the control: intact, it resumes
    damage(path)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        assert checkpoint.load_checkpoint(path, {"a": 1}) is None
    assert f"ignoring {path}: it cannot be read, it is truncated or corrupted" in caplog.text
    assert "training starts afresh" in caplog.text


def test_a_checkpoint_s_flipped_data_byte_loads_silently_without_its_sha256():
    """The control of the "data" case above: torch's own format takes a byte flipped inside a tensor's data."""
    buffer = io.BytesIO()
    torch.save({"parameters": [torch.ones(64, 64)]}, buffer)
    data = bytearray(buffer.getvalue())
    offset = data.find(torch.ones(64, 64).numpy().tobytes()[:64])
    data[offset + 100] ^= 0xFF
    loaded = torch.load(io.BytesIO(bytes(data)), weights_only=False)["parameters"][0]
    assert not torch.equal(loaded, torch.ones(64, 64))


def test_only_a_corrupt_file_s_errors_are_rewritten():
    """A read that fails for another reason (a missing file, a permission, a bug) keeps its own error."""
    for other in (FileNotFoundError("x"), PermissionError(13, "denied"), KeyError("features"), ValueError("shape")):
        assert not errors.unreadable(other), other
        with pytest.raises(type(other)):
            with errors.reading("x.npz", "fix"):
                raise other


# -----------------------------------------------------------------------------
# a full disk: a real small filesystem (tmpfs), filled to the last byte


@contextlib.contextmanager
def mounted_tmpfs(folder: Path):
    """A 4 MiB tmpfs mounted on `folder` (made if need be): a real filesystem that runs out. Mounting one needs root,
    as CI has; elsewhere the test is skipped."""
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk") as disk:
        yield disk


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses another byte; its path (delete it to free the disk)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: closing it has nothing left to write
        for block in (4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)
    assert shutil.disk_usage(disk).free == 0
    return filler


def tiny_lora(tiny_model_paths):
    from peftqa.methods.attach import load_backbone
    from peftqa.params import load_params

    params = load_params()
    return load_backbone(params.model, "lora", params.peft, params.prepare.labels, seed=0, device="cpu")


def writers(tiny_model_paths) -> dict[str, Callable[[Path, int], None]]:
    """Each kind of output peftqa writes, as (path, version) -> write: JSON, CSV, a figure, a checkpoint, and the
    adapter folder (a real peft LoRA's save_pretrained, the encoder's head and peftqa.json, into a temporary folder)."""
    import matplotlib.pyplot as plt

    from peftqa.report.palette import save_figure

    def figure(path: Path, version: int) -> None:
        fig, ax = plt.subplots(figsize=(8, 8))
        ax.imshow(np.random.default_rng(version).random((400, 400)))
        save_figure(fig, path)
        plt.close(fig)

    backbone = tiny_lora(tiny_model_paths)
    return {
        "summary.json": lambda path, version: files.write_json_atomic(path, {"v": version, "pad": "x" * 200_000}),
        "history.csv": lambda path, version: files.write_csv_atomic(path, pd.DataFrame({"v": [version] * 40_000})),
        "figure.png": figure,
        "checkpoint.pt": lambda path, version: checkpoint.save_checkpoint(path, {"v": version,
                                                                                "w": torch.full((60_000,), version)}),
        "adapter": lambda path, version: files.replace_dir_atomic(backbone.save, path),
        # a folder whose first refused write is one of its files' own atomic writes (embed's, the pilot's)
        "features": lambda path, version: files.replace_dir_atomic(
            lambda tmp: files.write_json_atomic(tmp / "features.json", {"v": version, "pad": "x" * 100_000}), path),
    }


def snapshot(disk: Path) -> dict[str, bytes]:
    return {str(p.relative_to(disk)): p.read_bytes() for p in sorted(disk.rglob("*")) if p.is_file()
            and p.name != "filler"}


@pytest.mark.parametrize("output", ["summary.json", "history.csv", "figure.png", "checkpoint.pt", "adapter",
                                    "features"])
def test_a_full_disk_keeps_the_previous_output_and_names_the_file(small_disk, stage_dir, tiny_model_paths, output):
    stage_dir()  # params.yaml for the tiny LoRA
    write = writers(tiny_model_paths)[output]
    path = small_disk / output
    write(path, 1)
    before = snapshot(small_disk)
    filler = fill(small_disk)
    with pytest.raises(PeftqaError) as error:
        write(path, 2)
    message = str(error.value)
    assert message.startswith(f"{path}: the disk is full, so it could not be written (") and "\n" not in message
    assert "No space left on device" in message or "os error 28" in message
    assert ".tmp" not in message and message.count("the disk is full") == 1  # the output's name, not a temporary's
    assert snapshot(small_disk) == before  # the previous output, whole; no temporary left beside it
    assert sorted(p.name for p in small_disk.iterdir()) == sorted([output, "filler"])
    filler.unlink()  # space again: the same write goes through
    write(path, 2)
    assert path.exists() and not any(p.name.startswith(".") for p in small_disk.iterdir())


def test_a_file_written_in_place_on_a_full_disk_is_lost(small_disk):
    """The control: without atomic_path (the write straight onto the path, as peft's save_pretrained and torch.save
    do), the disk's refusal leaves a truncated file where the previous one was."""
    path = small_disk / "summary.json"
    files.write_json_atomic(path, {"v": 1})
    before = path.read_bytes()
    fill(small_disk)
    with pytest.raises(OSError):
        with open(path, "w") as f:
            json.dump({"v": 2, "pad": "x" * 200_000}, f)
    assert path.read_bytes() != before


def test_the_train_stage_on_a_full_disk_fails_in_one_paragraph_keeping_its_outputs(stage_dir, tmp_path):
    """The real stage, its models/ folder on a small disk: trained once, then run again on the full disk. One `error:`
    paragraph names the file and says the disk is full; every earlier output is as it was; the MLflow run is FAILED."""
    root = stage_dir(**{"train.epochs": 1})
    with mounted_tmpfs(root / "models") as models:
        first = subprocess.run([sys.executable, "-m", "stages.train", "lora"], cwd=root, env=stage_env(root),
                               capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        before = snapshot(models)
        fill(models)
        update_params_file(root, {"train.epochs": 2})
        second = subprocess.run([sys.executable, "-m", "stages.train", "lora"], cwd=root, env=stage_env(root),
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        (error,) = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        # the first write of the second run: epoch 0's checkpoint
        assert error.startswith("error: models/lora/checkpoint.pt: the disk is full, so it could not be written")
        assert snapshot(models) == before
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id], order_by=["start_time"])
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]


# -----------------------------------------------------------------------------
# an orphan run: its process died without a word (SIGKILL, the OOM killer, a killed queue worker)


def test_a_running_run_whose_process_is_gone_is_marked_killed_and_a_live_one_is_not(tmp_path, monkeypatch):
    """end_orphans, on real runs in a real store: a run whose process has exited, one whose pid now belongs to another
    process (a pid reused: same pid, other start time) and one from before a reboot (another boot id) are marked
    KILLED with the tag that says so; the run of a live process (this one), one from another pid namespace (a
    container's) and one from another host are left RUNNING. The control: with the liveness check bypassed, the live
    process's run is marked too."""
    from peftqa.mlops import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, experiment_id = tracking.connect("tests")
    exited = subprocess.Popen(["true"])
    exited.wait()
    own = tracking.process_tags()
    boot, namespace, start = own[tracking.PROCESS_TAG].split(" ")
    cases = {"exited": {**own, tracking.PID_TAG: str(exited.pid)},
             "reused": {**own, tracking.PROCESS_TAG: f"{boot} {namespace} {int(start) + 1}"},
             "rebooted": {**own, tracking.PROCESS_TAG: f"another-boot {namespace} {start}"},
             "live": own, "other namespace": {**own, tracking.PROCESS_TAG: f"{boot} pid:[1] {start}"},
             "other host": {**own, tracking.HOST_TAG: "another-machine", tracking.PID_TAG: "1"}}
    runs = {name: client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            for name, tags in cases.items()}

    gone = ["exited", "reused", "rebooted"]
    assert sorted(tracking.end_orphans(client, experiment_id)) == sorted(runs[name] for name in gone)
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {**dict.fromkeys(gone, "KILLED"), **dict.fromkeys(["live", "other namespace", "other host"],
                                                                       "RUNNING")}
    marked = {name for name, run_id in runs.items() if tracking.ORPHAN_TAG in client.get_run(run_id).data.tags}
    assert marked == set(gone)
    assert tracking.end_orphans(client, experiment_id) == []  # a second sweep finds nothing more

    monkeypatch.setattr(tracking, "process_alive", lambda pid, identity: False)
    assert sorted(tracking.end_orphans(client, experiment_id)) == sorted([runs["live"], runs["other namespace"]])


def test_a_checkpoint_without_its_sha256_line_is_ignored_and_training_starts_afresh(tmp_path, caplog):
    """A checkpoint of an older peftqa (torch.save's bytes alone) is not trusted: its bytes cannot be checked."""
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": {"a": 1}, "history": [{"epoch": 1}]}, path)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        assert checkpoint.load_checkpoint(path, {"a": 1}) is None
    assert "does not start with the peftqa-checkpoint line" in caplog.text


def test_only_the_faults_are_taken_for_faults(tmp_path):
    """The negative controls of the classifiers the handlers above rely on: a permission error is no full disk, an
    answer from a live server is no lost server, an error is no interrupt, and run_cli lets any other error through."""
    from mlflow.exceptions import MlflowException

    from peftqa.mlops import tracking

    assert errors.disk_full(OSError(28, "No space left on device")) and not errors.disk_full(PermissionError(13, "x"))
    assert errors.disk_full(MlflowException("(sqlite3.OperationalError) database or disk is full"))
    lost = MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/get failed with exception "
                           "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url")
    assert tracking.server_lost(lost) and not tracking.server_lost(MlflowException("Run 'x' not found"))
    assert tracking.end_status(KeyboardInterrupt()) == tracking.end_status(stops.Interrupted(15)) == "KILLED"
    assert tracking.end_status(ValueError()) == "FAILED"

    def main(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    with pytest.raises(PermissionError):
        stops.run_cli(main, [])


def test_a_stop_signal_waits_for_a_shielded_store_write_and_is_raised_after_it(monkeypatch):
    """SIGTERM inside stops.shielded() (every MLflow write) is held until the block ends, so a sqlite transaction is
    never cut (a cut one kept this process's own lock on the store, and the run could not be ended KILLED: seen once in
    a fresh clone's run). The control: outside the block, the same signal is raised at once."""
    import os
    import signal

    previous = stops.handle_stops()
    try:
        reached = []
        with pytest.raises(stops.Interrupted) as stopped:
            with stops.shielded():
                os.kill(os.getpid(), signal.SIGTERM)
                reached.append("the write went on to its end")
        assert reached and stopped.value.signum == signal.SIGTERM
        stops.handle_stops()  # the handler is one-shot: put it back for the control
        with pytest.raises(stops.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("not reached")
        assert reached == ["the write went on to its end"]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
