"""Register the best training run of each method in the MLflow model registry, as a pyfunc that answers questions.

Inputs:  the MLflow store (tracking.tracking_uri()); its finished train@<method> runs, each holding the artifacts
         adapter/ and resolved_config.json; params: methods, mlflow.experiment.
Outputs: per method, a model version of registered model "peftqa-<method>": the run's best val macro-F1 wins (never a
         test metric: choosing on test would leak it). Its source is the pyfunc saved into that run's artifacts
         under pyfunc_model/. `mlflow.pyfunc.load_model("models:/peftqa-lora/1").predict(frame)` takes a frame of
         question, context and gives label, p_yes, as `peftqa predict` and the evaluate stage do.
         The base model itself is not copied: model.name_or_path must load where the pyfunc is loaded.
Usage:   python -m stages.registry [method ...]     (default: every method in params.yaml)
"""
from __future__ import annotations

import json
import logging
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import mlflow.pyfunc
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from stages import tracking
from stages.common import PeftqaError
from stages.params import METHODS, ModelParams, PeftParams, load_params

log = logging.getLogger("peftqa.registry")

SELECTION_METRIC = "best_val_macro_f1"  # logged by the train stage; higher is better
MODEL_ARTIFACT = "pyfunc_model"  # where the pyfunc goes inside the winning run's artifacts
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "question"), ColSpec("string", "context")]),
                           outputs=Schema([ColSpec("string", "label"), ColSpec("double", "p_yes")]))
REQUIREMENTS = ("torch", "transformers", "peft", "safetensors", "mlflow", "pandas", "peftqa")


def registered_name(method: str) -> str:
    return f"peftqa-{method}"


def pick_best_runs(runs: Sequence[Run], methods: Sequence[str]) -> dict[str, Run]:
    """{method: its finished train@<method> run with the highest SELECTION_METRIC}; ties go to the newest run.
    A method without such a run is left out."""
    best: dict[str, Run] = {}
    for run in runs:
        method = run.data.tags.get("method")
        if (method not in methods or run.info.status != "FINISHED" or run.data.tags.get("stage") != f"train@{method}"
                or SELECTION_METRIC not in run.data.metrics):
            continue
        key = (run.data.metrics[SELECTION_METRIC], run.info.start_time)
        held = best.get(method)
        if held is None or key > (held.data.metrics[SELECTION_METRIC], held.info.start_time):
            best[method] = run
    return best


def model_params_from_config(config: dict[str, object]) -> tuple[ModelParams, tuple[str, ...], int, str]:
    """(model params, labels, seed, method) from a run's resolved_config.json: what the adapter was trained with."""
    model = {key.removeprefix("model."): value for key, value in config.items() if key.startswith("model.")}
    labels = tuple(str(config["prepare.labels"]).split(","))
    return ModelParams(**model), labels, int(config.get("train.seed", 42)), str(config["method"])


class PeftqaModel(mlflow.pyfunc.PythonModel):
    """Base model + saved adapter behind pyfunc's predict: a frame of question, context -> label, p_yes."""

    def load_context(self, context) -> None:
        from stages.families import load_backbone  # heavy: only where the model is loaded

        config = json.loads(Path(context.artifacts["resolved_config"]).read_text(encoding="utf-8"))
        model_params, labels, seed, method = model_params_from_config(config)
        self.scoring = model_params.scoring
        self.backbone = load_backbone(model_params, method, PeftParams(), labels, seed=seed, device="auto",
                                      adapter_dir=Path(context.artifacts["adapter"]))
        self.dtype = model_params.dtype

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from stages.predict import predict_frame
        from stages.scoring import use_bf16

        items = model_input.assign(pmid=None)[["pmid", "question", "context"]]
        batch_size = int((params or {}).get("batch_size", 32))
        preds = predict_frame(self.backbone, items, batch_size, self.scoring, use_bf16(self.dtype, self.backbone.device))
        return pd.DataFrame({"label": preds["pred"].values, "p_yes": preds["p_yes"].values})


def register_run(client, run: Run, method: str) -> object:
    """Save the pyfunc into the run's artifacts and register it as a new version of peftqa-<method>."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(client.download_artifacts(run.info.run_id, "adapter", tmp)).parent
        client.download_artifacts(run.info.run_id, "resolved_config.json", str(inputs))
        model_dir = Path(tmp) / MODEL_ARTIFACT
        mlflow.pyfunc.save_model(
            str(model_dir), python_model=PeftqaModel(), signature=SIGNATURE,
            artifacts={"adapter": str(inputs / "adapter"), "resolved_config": str(inputs / "resolved_config.json")},
            pip_requirements=[f"{name}=={version(name)}" for name in REQUIREMENTS])  # explicit: no inference run
        client.log_artifacts(run.info.run_id, str(model_dir), MODEL_ARTIFACT)
    name = registered_name(method)
    try:
        client.create_registered_model(name, description=f"peftqa: the best {method} adapter by val macro-F1")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run.info.run_id,
        tags={SELECTION_METRIC: str(run.data.metrics[SELECTION_METRIC]), "dvc_exp_name": run.data.tags.get("dvc_exp_name", "")})


def main(args: list[str]) -> None:
    unknown = [a for a in args if a not in METHODS]
    if unknown:
        raise PeftqaError(f"usage: python -m stages.registry [method ...], methods from {list(METHODS)}; got {unknown}")
    params = load_params()
    methods = args or list(params.methods)
    client, experiment_id = tracking.connect(params.mlflow.experiment)
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=5000)
    best = pick_best_runs(runs, methods)
    missing = [m for m in methods if m not in best]
    if missing:
        raise PeftqaError(f"no finished training run with {SELECTION_METRIC} for {missing} in experiment "
                          f"'{params.mlflow.experiment}' of {tracking.redact(tracking.tracking_uri())}; train them first")
    for method in methods:
        model_version = register_run(client, best[method], method)
        log.info("registered models:/%s/%s from run %s (%s %.4f)", model_version.name, model_version.version,
                 best[method].info.run_id, SELECTION_METRIC, best[method].data.metrics[SELECTION_METRIC])


if __name__ == "__main__":
    from stages.common import run_cli

    run_cli(main)
