"""Register each method's best training run in the MLflow model registry, as the pyfunc it logged.

Inputs:  the MLflow store (tracking.tracking_uri()); its finished train@<method> runs of the main protocol (runs of
         the seeds and cv protocols, tagged `protocol`, are never registered), each with its logged model (an MLflow 3
         LoggedModel, made by peftqa.mlops.serving.log_model when train ran) or at least the artifacts adapter/ and
         resolved_config.json; params: methods, mlflow.experiment.
Outputs: per method, a new version of registered model "peftqa-<method>" whose source is the winning run's logged
         model (models:/<model_id>), and the alias `champion` moved to it. The winner is the run with the best val
         macro-F1 (never a test metric: choosing on test would leak it); ties go to the newest run. A run without a
         logged model (trained before train logged one) gets it logged now, into that run, from its artifacts.
         `mlflow.pyfunc.load_model("models:/peftqa-lora@champion").predict(frame)` takes a frame of question, context
         and gives label, p_yes, as `peftqa predict` and the evaluate stage do; the model's requirements.txt lists
         what it needs (peftqa's own code travels inside the model). The base model itself is not copied:
         model.name_or_path must load where the pyfunc is loaded.
Usage:   peftqa register [method ...]     (default: every method in params.yaml)
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Sequence

from mlflow.entities import LoggedModelStatus, Run
from mlflow.exceptions import MlflowException

from peftqa.catalog import RESOLVED_CONFIG
from peftqa.errors import PeftqaError
from peftqa.mlops import serving, tracking
from peftqa.mlops.serving import SIGNATURE, PeftqaModel, model_params_from_config  # noqa: F401  (pyfunc_model/ pickles
from peftqa.params import METHODS, load_params

# of older registrations name peftqa.cli.register.PeftqaModel)

log = logging.getLogger("peftqa.registry")

SELECTION_METRIC = "best_val_macro_f1"  # logged by the train stage; higher is better
CHAMPION = "champion"  # the alias of the version registered last: models:/peftqa-<method>@champion
PROTOCOL_TAGS = ("protocol", "protocol_unit")  # set on seed and fold runs by stages.protocols: never registered


def registered_name(method: str) -> str:
    return f"peftqa-{method}"


def pick_best_runs(runs: Sequence[Run], methods: Sequence[str]) -> dict[str, Run]:
    """{method: its finished main-protocol train@<method> run with the highest SELECTION_METRIC}; ties go to the
    newest run. Seed and fold runs (tagged by the protocols stage) are skipped, whatever they score. A method
    without such a run is left out."""
    best: dict[str, Run] = {}
    for run in runs:
        tags = run.data.tags
        method = tags.get("method")
        if (method not in methods or run.info.status != "FINISHED" or tags.get("stage") != f"train@{method}"
                or any(tags.get(tag) for tag in PROTOCOL_TAGS) or SELECTION_METRIC not in run.data.metrics):
            continue
        key = (run.data.metrics[SELECTION_METRIC], run.info.start_time)
        held = best.get(method)
        if held is None or key > (held.data.metrics[SELECTION_METRIC], held.info.start_time):
            best[method] = run
    return best


def logged_model_id(client, run: Run) -> str | None:
    """The newest READY model that peftqa.mlops.serving.log_model logged into `run`, or None."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'", max_results=100)  # (a status filter finds none here)
    ours = [m for m in models
            if m.tags.get(serving.MODEL_TAG) == serving.MODEL_TAG_VALUE and m.status == LoggedModelStatus.READY]
    return max(ours, key=lambda m: m.creation_timestamp).model_id if ours else None


def log_model_from_artifacts(client, run: Run, method: str) -> str:
    """For a run trained before train logged its model: log one into the run from its adapter/ and
    resolved_config.json artifacts (the run stays FINISHED)."""
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            adapter = Path(client.download_artifacts(run_id, "adapter", tmp))
            config = Path(client.download_artifacts(run_id, RESOLVED_CONFIG.file, tmp))
        except (MlflowException, OSError) as err:
            raise PeftqaError(f"run {run_id} ({method}) has no logged model and its artifacts adapter/ and "
                              f"{RESOLVED_CONFIG.file} cannot be read ({type(err).__name__}); retrain it "
                              f"(`dvc repro train@{method}`)") from None
        model_id = serving.log_model(client, run_id, adapter, config, name=method)
    log.info("run %s had no logged model: logged %s from its artifacts", run_id, model_id)
    return model_id


def register_run(client, run: Run, method: str) -> object:
    """Register the run's logged model as a new version of peftqa-<method> and point the alias champion at it."""
    model_id = logged_model_id(client, run) or log_model_from_artifacts(client, run, method)
    name = registered_name(method)
    try:
        client.create_registered_model(name, description=f"peftqa: the best {method} adapter by val macro-F1")
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    model_version = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run.info.run_id, model_id=model_id,
        tags={SELECTION_METRIC: str(run.data.metrics[SELECTION_METRIC]),
              "dvc_exp_name": run.data.tags.get("dvc_exp_name", "")})
    client.set_registered_model_alias(name, CHAMPION, model_version.version)
    return model_version


def parse_methods(argv: list[str]) -> list[str]:
    """The methods named on the command line (none: every method in params.yaml); an unknown one is a PeftqaError."""
    parser = argparse.ArgumentParser(prog="peftqa register", description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", metavar="method",
                        help=f"default: every method in params.yaml; one of {', '.join(METHODS)}")
    methods = parser.parse_args(argv).methods
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PeftqaError(f"usage: peftqa register [method ...], methods from {list(METHODS)}; got {unknown}")
    return methods


def main(args: list[str]) -> None:
    named = parse_methods(args)
    params = load_params()
    methods = named or list(params.methods)
    client, experiment_id = tracking.connect(params.mlflow.experiment)
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=5000)
    best = pick_best_runs(runs, methods)
    missing = [m for m in methods if m not in best]
    if missing:
        raise PeftqaError(f"no finished training run of the main protocol with {SELECTION_METRIC} for {missing} in "
                          f"experiment '{params.mlflow.experiment}' of {tracking.redact(tracking.tracking_uri())} "
                          "(seed and fold runs are not registered); train them first")
    for method in methods:
        model_version = register_run(client, best[method], method)
        log.info("registered models:/%s/%s (@%s), source %s of run %s (%s %.4f)", model_version.name,
                 model_version.version, CHAMPION, model_version.source, best[method].info.run_id, SELECTION_METRIC,
                 best[method].data.metrics[SELECTION_METRIC])

