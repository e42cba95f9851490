"""`make ui`: the MLflow server over a store the real train stage wrote shows every method's run, with its params,
one metric value per epoch and its adapter artifacts, through the REST API and in the web UI (headless Chromium):
the runs table names the datasets, and a run's page shows its source, dataset and logged model.

Set PEFTQA_UI_SCREENSHOT=reports/mlflow_ui_runs.png to keep the screenshot of the runs table.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from stages import train as train_stage

from tiny_models import make_tiny_model, tiny_frame

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ["base", "lora"]
EPOCHS = 2
EXPERIMENT = "peftqa-ui-test"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]
HEALTH_TIMEOUT_S = 90  # the server imports MLflow and migrates nothing (the store is current); slow on a busy CPU


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base_url: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """GET (or POST with a JSON body) one MLflow REST endpoint; the decoded JSON answer."""
    url = f"{base_url}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for_health(base_url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited with status {server.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server at {base_url} not healthy after {timeout_s} s")


def stop(server: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its own process group), politely first."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


def chromium(*args: str, profile: Path, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout_s)


# -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch, write_params) -> Path:
    """A repo-shaped tmp dir where the real train stage ran METHODS for EPOCHS epochs on a tiny BERT, logging to
    its own sqlite store (tmp/mlflow.db, artifacts in tmp/mlruns), as `make run` does in the repo."""
    model = make_tiny_model("encoder", tmp_path / "tiny-bert")
    data = tmp_path / "data/processed"
    data.mkdir(parents=True)
    tiny_frame(8, 1000).to_csv(data / "train.csv", index=False)
    tiny_frame(4, 5000).to_csv(data / "val.csv", index=False)
    write_params(tmp_path, {"model.name_or_path": str(model), "model.max_length": 64, "train.epochs": EPOCHS,
                            "train.patience": EPOCHS + 1, "train.batch_size": 4, "train.device": "cpu",
                            "mlflow.experiment": EXPERIMENT})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for method in METHODS:
        train_stage.main([method])
    return tmp_path


@pytest.fixture
def server(store) -> str:
    """`mlflow server` with the flags of `make ui`, on a free port, against the store; its base URL."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = (store / "mlflow_server.log").open("w")
    process = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                                "--default-artifact-root", str(store / "mlruns"), "--host", "127.0.0.1",
                                "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base_url, process, HEALTH_TIMEOUT_S)
        yield base_url
    except AssertionError:
        print((store / "mlflow_server.log").read_text()[-3000:])
        raise
    finally:
        stop(process)
        log.close()


def test_make_ui_serves_the_project_store_on_the_chosen_port():
    dry_run = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "ui", "UI_PORT=5123"], capture_output=True,
                             text=True, timeout=60)
    assert dry_run.returncode == 0, dry_run.stderr
    command = " ".join(dry_run.stdout.replace("\\\n", " ").split())
    assert (f"mlflow server --backend-store-uri sqlite:///{REPO_ROOT / 'mlflow.db'} --default-artifact-root "
            f"{REPO_ROOT / 'mlruns'} --host 127.0.0.1 --port 5123") in command
    assert "http://127.0.0.1:5123" in command


def test_the_mlflow_server_shows_every_run_with_params_history_and_adapter(server, store, tmp_path):
    experiment = api(server, "experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    runs = api(server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    by_name = {run["info"]["run_name"]: run for run in runs}
    assert sorted(by_name) == sorted(METHODS)

    for method, run in by_name.items():
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["method"] == method and params["train.epochs"] == str(EPOCHS), method
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["stage"] == f"train@{method}", method
        for metric in ("train_loss", "val_loss", "val_macro_f1"):
            history = api(server, "metrics/get-history", run_id=run_id, metric_key=metric)["metrics"]
            # the probe is solved once (epoch 0); a tuned method validates its start (epoch 0, no train_loss) too
            first = 1 if metric == "train_loss" else 0
            expected_steps = [0] if method == "base" else list(range(first, EPOCHS + 1))
            assert sorted(m["step"] for m in history) == expected_steps, (method, metric)
        top = {f["path"] for f in api(server, "artifacts/list", run_id=run_id)["files"]}
        assert {"adapter", "history.csv", "train_summary.json", "resolved_config.json"} <= top, method
        adapter = {f["path"] for f in api(server, "artifacts/list", run_id=run_id, path="adapter")["files"]}
        expected = {"adapter/peftqa.json", "adapter/head.safetensors"}
        if method != "base":  # the linear probe saves only the head; an adapter method saves peft's files too
            expected |= {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
        assert expected <= adapter, (method, adapter)

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package chromium): the web UI check did not run")
    page = f"{server}/#/experiments/{experiment['experiment_id']}/runs"
    dom = chromium("--dump-dom", page, profile=tmp_path / "chromium-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for method in METHODS:
        assert f">{method}<" in dom.stdout, f"run {method!r} not in the runs table of {page}"
    assert "pubmedqa-pqal/train" in dom.stdout, f"the runs table of {page} names no dataset"
    # a run's page: its Source (MLflow's source tags), its datasets and its logged model
    lora = by_name["lora"]["info"]["run_id"]
    run_page = f"{server}/#/experiments/{experiment['experiment_id']}/runs/{lora}"
    run_dom = chromium("--dump-dom", run_page, profile=tmp_path / "chromium-run")
    assert run_dom.returncode == 0, run_dom.stderr[-2000:]
    model_id = json.loads((store / "models/lora/train_summary.json").read_text())["mlflow_model_id"]
    for shown in ("train.py", "pubmedqa-pqal/train", "Logged models (1)", model_id):
        assert shown in run_dom.stdout, f"{shown!r} not on the run page {run_page}"
    screenshot = Path(os.environ.get("PEFTQA_UI_SCREENSHOT") or tmp_path / "mlflow_ui_runs.png").resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1400,900", page, profile=tmp_path / "chromium-shot")
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    print(f"screenshot of the runs table: {screenshot}")
