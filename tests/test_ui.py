"""`make ui` serves the project's own store (mlflow.db, artifacts in mlruns/) on the port asked for. What the server
shows, through its REST API and in headless Chromium, is tested on the pipeline slice's store in
tests/test_pipeline.py (test_the_mlflow_server_shows_every_run_with_params_history_and_adapter)."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_make_ui_serves_the_project_store_on_the_chosen_port():
    dry_run = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "ui", "UI_PORT=5123"], capture_output=True,
                             text=True, timeout=60)
    assert dry_run.returncode == 0, dry_run.stderr
    command = " ".join(dry_run.stdout.replace("\\\n", " ").split())
    assert (f"mlflow server --backend-store-uri sqlite:///{REPO_ROOT / 'mlflow.db'} --default-artifact-root "
            f"{REPO_ROOT / 'mlruns'} --host 127.0.0.1 --port 5123") in command
    assert "http://127.0.0.1:5123" in command
