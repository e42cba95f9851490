"""The reference-scale bench (peftqa/cli/bench_reference.py) on its small CPU shape: figures, CLI, and its imports."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftqa.cli.bench_reference import METHODS, SHAPES, bench_method

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bench_method_gives_finite_positive_figures(method):
    row = bench_method(SHAPES["small"], method, torch.device("cpu"), steps=1, warmup=0, bf16=False, peak_flops=None)
    for key in ("trainable_params", "step_s_median", "peak_memory_gib", "model_tflop_per_step", "achieved_tflops",
                "projected_712x5_s", "last_loss"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["trainable_params"] < row["total_params"]
    assert row["encoder_tokens_per_item"] >= SHAPES["small"].input_tokens
    assert row["mfu"] is None  # no peak figure for a CPU


def test_cli_runs_small_shape_without_mlflow_or_dvc(tmp_path):
    """A fresh interpreter runs the whole bench and never imports the pipeline's tracking tools."""
    out = tmp_path / "bench.json"
    code = ("import sys; from peftqa.cli.bench_reference import main; "
            f"main(['--device', 'cpu', '--shape', 'small', '--steps', '1', '--warmup', '0', '--json', {str(out)!r}]); "
            "loaded = {name.split('.')[0] for name in sys.modules}; "
            "print('LOADED', sorted(loaded & {'mlflow', 'dvc', 'pandas'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "SCALED-DOWN SHAPE 'small'" in result.stdout
    assert "LOADED []" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["environment"]["torch"] == torch.__version__
    assert [row["method"] for row in figures["methods"]] == list(METHODS)
    assert figures["command"] == f"peftqa bench-reference --device cpu --shape small --steps 1 --warmup 0 --json {out}"


def test_cli_rejects_zero_steps():
    from peftqa.cli.bench_reference import main

    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--steps", "0"])
