"""`make ui`'s MLflow server for the tests: started on a free port against a store, asked through its REST API, and
looked at in headless Chromium (Debian's package)."""
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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


def start_server(root: Path, port: int, log_path: Path) -> subprocess.Popen:
    """`mlflow server` with the flags of `make ui` on 127.0.0.1:port, over root/mlflow.db and root/mlruns, in its own
    process group (stop or killpg end it and its workers), appending to log_path; returns once it is healthy."""
    mlflow = Path(sys.executable).with_name("mlflow")
    with log_path.open("a") as log:
        process = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                    "--default-artifact-root", str(root / "mlruns"), "--host", "127.0.0.1",
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, HEALTH_TIMEOUT_S)
    except AssertionError:
        print(log_path.read_text()[-3000:])
        stop(process)
        raise
    return process


@contextmanager
def mlflow_server(root: Path, log_dir: Path) -> Iterator[str]:
    """`mlflow server` with the flags of `make ui`, on a free port, over root/mlflow.db and root/mlruns; its URL.
    Its log goes to log_dir (not into root: a file there would travel with a queued experiment)."""
    port = free_port()
    process = start_server(root, port, log_dir / "mlflow_server.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def chromium(*args: str, profile: Path, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout_s)
