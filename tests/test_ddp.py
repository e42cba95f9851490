"""The train stage under `accelerate launch` with DDP: two CPU processes over gloo, on the tiny encoder.

It proves the multi-GPU path's logic on a laptop: the processes shard every epoch, DDP averages their gradients,
both end with bit-identical weights, and only the main process logs to MLflow and writes the outputs.
"""
from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
from test_train import mlflow_client

from peftqa.families import Backbone
from peftqa.methods.attach import load_backbone
from peftqa.params import load_params
from peftqa.training.distributed import parameter_digest

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

# accelerate's torchrun path (--multi_gpu) starts the processes; train.device cpu makes them MULTI_CPU over gloo
# (`--cpu` alone starts one process unless mpirun is set up). Port 0: accelerate picks a free one.
LAUNCH = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def named_weights(backbone: Backbone) -> list[tuple[str, object]]:
    """(name, weight) of every weight, the encoder's head included, in the order trainable_parameters() uses."""
    return [(f"{i}.{name}", p) for i, part in enumerate(backbone._parts()) for name, p in part.named_parameters()]


def test_two_cpu_processes_end_with_identical_adapter_weights(stage_dir, pipeline_env):  # noqa: F811
    # 13 rows over 2 processes: shares of 7 and 6 (+1 padding row), 2 micro-batches each, one optimizer step per
    # epoch (grad_accum 2), so the no-sync micro-batch and the synced step both run
    root = stage_dir(n_train=13, **{"train.epochs": 2, "train.patience": 5, "train.grad_accum_steps": 2})
    env = {**pipeline_env, "DVC_ROOT": str(root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([*LAUNCH, "-m", "stages.train", "lora"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "accelerate: 2 processes (MULTI_CPU, backend gloo)" in result.stderr, result.stderr[-5000:]

    summary = json.loads((root / "models/lora/train_summary.json").read_text())
    digests = summary["rank_param_sha256"]
    assert summary["world_size"] == 2 and len(digests) == 2 and digests[0] == digests[1]
    assert list(pd.read_csv(root / "models/lora/history.csv")["epoch"]) == [0, 1, 2]

    # the saved adapter, loaded back by the project's own code, holds exactly those weights
    params = load_params(root / "params.yaml")
    fresh = load_backbone(params.model, "lora", params.peft, params.prepare.labels, seed=params.train.seed,
                          device="cpu")
    saved = load_backbone(params.model, "lora", params.peft, params.prepare.labels, seed=params.train.seed,
                          device="cpu", adapter_dir=root / "models/lora/adapter")
    trained = [name for name, weight in named_weights(fresh) if weight.requires_grad]
    loaded = dict(named_weights(saved))
    assert parameter_digest([loaded[name] for name in trained]) == digests[0]
    assert parameter_digest(fresh.trainable_parameters()) != digests[0]  # and training did move them

    client = mlflow_client(root)  # one run, from the main process only
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [run.info.run_id for run in runs] == [summary["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["world_size"] == "2"
