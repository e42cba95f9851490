"""Reliability promises: outputs are replaced atomically (even under SIGKILL), and CPU runs are deterministic."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import hold
import pandas as pd
import pytest

from stages import evaluate as evaluate_stage
from stages import train as train_stage

from tiny_models import tiny_frame

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent  # for the writer's `import hold`

# writes 2.7 MB of CSV through write_csv_atomic, and holds once the temporary file has its first half (1.35 MB):
# pandas' own to_csv, given an open file, twice
WRITER = """
import sys
import pandas as pd
import hold
from peftqa.files import write_csv_atomic

real_to_csv = pd.DataFrame.to_csv

def to_csv_holding_halfway(frame, path, **kwargs):
    half = len(frame) // 2
    with open(path, "w", newline="") as f:
        real_to_csv(frame.iloc[:half], f, **kwargs)
        f.flush()
        hold.reach()
        real_to_csv(frame.iloc[half:], f, header=False, **kwargs)

pd.DataFrame.to_csv = to_csv_holding_halfway
frame = pd.DataFrame({"pmid": range(100_000), "text": ["x" * 20] * 100_000})
write_csv_atomic(sys.argv[1], frame)
"""


def test_sigkill_mid_write_leaves_the_previous_output_intact(tmp_path):
    target = tmp_path / "preds_test.csv"
    previous = pd.DataFrame({"pmid": ["1", "2"], "pred": ["yes", "no"]})
    previous.to_csv(target, index=False)
    before = target.read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS)])}
    with hold.held_process([sys.executable, "-c", WRITER, str(target)], tmp_path / "writer.log", env=env) as writer:
        (partial,) = tmp_path.glob(".preds_test.csv.*.tmp")
        assert partial.stat().st_size > 1_000_000  # well into the write
        writer.process.send_signal(signal.SIGKILL)
        assert writer.process.wait() == -signal.SIGKILL
    assert target.read_bytes() == before  # the earlier output is untouched ...
    pd.testing.assert_frame_equal(pd.read_csv(target, dtype={"pmid": str}), previous)  # ... and loadable


# -----------------------------------------------------------------------------
# determinism: the same params on CPU give identical adapters, predictions and metrics


def run_train_and_evaluate(root: Path, model: Path, write_params, monkeypatch) -> Path:
    (root / "data/processed").mkdir(parents=True)
    for split, (n, offset) in {"train": (12, 1000), "val": (8, 5000), "test": (8, 9000)}.items():
        tiny_frame(n, offset).to_csv(root / f"data/processed/{split}.csv", index=False)
    write_params(root, {"model.name_or_path": str(model), "model.max_length": 64, "train.epochs": 2,
                        "train.batch_size": 4, "train.device": "cpu", "mlflow.experiment": "determinism"})
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_stage.main(["prompt_tuning"])
    evaluate_stage.main(["prompt_tuning"])
    return root


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_two_cpu_runs_give_identical_adapters_predictions_and_metrics(tmp_path, write_params, monkeypatch,
                                                                      tiny_model_paths):
    model = tiny_model_paths["encoder"]
    first = run_train_and_evaluate(tmp_path / "a", model, write_params, monkeypatch)
    second = run_train_and_evaluate(tmp_path / "b", model, write_params, monkeypatch)
    adapter = "models/prompt_tuning/adapter"
    for name in ("adapter_model.safetensors", "head.safetensors"):
        assert (first / adapter / name).read_bytes() == (second / adapter / name).read_bytes(), name
    timing = ("latency", "seconds", "examples_per_s")
    for split in ("val", "test"):
        columns = ["pmid", "gold", "pred", "p_yes"]
        a = pd.read_csv(first / f"reports/eval/prompt_tuning/preds_{split}.csv")[columns]
        b = pd.read_csv(second / f"reports/eval/prompt_tuning/preds_{split}.csv")[columns]
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        metrics = [json.loads((root / f"reports/eval/prompt_tuning/metrics_{split}.json").read_text())
                   for root in (first, second)]
        assert {k: v for k, v in metrics[0].items() if not k.startswith(timing)} == \
               {k: v for k, v in metrics[1].items() if not k.startswith(timing)}
    history = [pd.read_csv(root / "models/prompt_tuning/history.csv").drop(columns="seconds")
               for root in (first, second)]
    pd.testing.assert_frame_equal(*history, check_exact=True)
