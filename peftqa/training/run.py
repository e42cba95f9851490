"""One training, from params to saved adapter: load the backbone, start the encoder's head from the probe, fit,
write the adapter, history.csv, train_summary.json and resolved_config.json, and log it all to one MLflow run
(its life is peftqa.mlops.tracking.mlflow_run). Stage train@<method> calls train_method once; the protocols stage once
per seed or fold.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from pathlib import Path

import pandas as pd
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from peftqa import compute
from peftqa.catalog import ADAPTER, HISTORY, RESOLVED_CONFIG, SPLIT, TRAIN_SUMMARY
from peftqa.data.features import features_for
from peftqa.errors import PeftqaError
from peftqa.evaluation import scoring
from peftqa.families import Backbone
from peftqa.files import folder_bytes
from peftqa.methods.attach import load_backbone
from peftqa.mlops import environment, serving, tracking
from peftqa.mlops.tracking import log_metrics_row, log_outputs, mlflow_run
from peftqa.params import Params, flatten
from peftqa.training.checkpoint import resumed_seconds
from peftqa.training.distributed import make_accelerator, rank_digests, shared_resume
from peftqa.training.history import history_columns
from peftqa.training.loop import fit, set_seed, validate_start
from peftqa.training.probe import Probe, load_into_head, solve_probe

log = logging.getLogger(__name__)

SOURCE = "stages/train.py"  # MLflow's mlflow.source.name of every training run


def start_head_from_probe(backbone: Backbone, params: Params, train: pd.DataFrame, val: pd.DataFrame) -> Probe:
    """Solve the linear probe on the frozen encoder's features (C chosen on val) and load it into the head: the
    whole of train@base for the encoder, and the starting head of every tuned method (probe, then fine-tune)."""
    x_train, x_val = (features_for(backbone, frame, params.model) for frame in (train, val))
    balanced = params.train.class_weighting == "balanced"
    try:
        probe = solve_probe(x_train, train["label"].to_numpy(dtype=str), x_val, val["label"].to_numpy(dtype=str),
                            backbone.labels, params.peft.base.c_grid, "balanced" if balanced else None)
    except ValueError as err:
        raise PeftqaError(f"linear probe: {err}") from None
    load_into_head(backbone.head, probe)
    log.info("probe: C=%g chosen on val (macro-F1 %.4f); grid %s", probe.c, probe.chosen["val_macro_f1"],
             ", ".join(f"C={row['c']:g}: {row['val_macro_f1']:.3f}" for row in probe.grid))
    return probe


def _jsonable(value: object) -> object:
    """peft keeps target modules as a set: sort it, so the config (and the checkpoint check) is the same in every
    process (a set's order follows the per-process hash seed)."""
    return sorted(map(str, value)) if isinstance(value, (set, frozenset)) else str(value)


def resolved_config(params: Params, method: str, backbone: Backbone, world_size: int,
                    extra: dict[str, str]) -> dict[str, object]:
    """Everything that determines this run, flat: logged once to MLflow and copied to resolved_config.json. The peft
    config as peft resolved it is included, with the model's machine path replaced by its portable name."""
    config = {"method": method, "family": backbone.family, "prepare.labels": ",".join(params.prepare.labels),
              "prepare.protocol": params.prepare.protocol, "prepare.seed": params.prepare.seed}
    config.update(flatten(params.model, "model."))
    config.update(flatten(params.train, "train."))
    config.update(flatten(params.peft[method], f"peft.{method}."))
    config["world_size"] = world_size  # DDP: the effective batch is batch_size x grad_accum x this
    config["compute"] = compute.describe(params.model.dtype, backbone.device)  # model.dtype as this device resolved it
    config["cpu_bf16"] = compute.cpu_bf16_support()  # the CPU's native bf16 instructions, or none
    config.update(environment.environment_tags())  # the installed lock: a result names the environment that made it
    peft_config = getattr(backbone.model, "peft_config", {}).get("default")
    if peft_config is not None:
        resolved = backbone.source[0]  # the path load_backbone resolved params' model.name_or_path to
        config.update({key: params.model.name_or_path if value == resolved else value for key, value in flatten(
            json.loads(json.dumps(peft_config.to_dict(), default=_jsonable)), "peft_config.").items()})
    config.update(extra)  # protocol runs: which seed or fold this is, in the params as in the tags
    return config


def write_outputs(backbone: Backbone, out_dir: Path, config: dict, history: list[dict], best_epoch: int,
                  train_seconds: float, n_train: int, probe: Probe | None, run: dict[str, object]) -> dict[str, object]:
    """Save the adapter and its config, log it as an MLflow model, write history.csv and train_summary.json;
    returns the summary. `run` holds the MLflow ids and the per-rank digests."""
    adapter = ADAPTER.write(backbone.save, into=out_dir)
    config_path = RESOLVED_CONFIG.write(config, into=out_dir)
    model_id = serving.log_model(run["client"], run["mlflow_run_id"], adapter, config_path, name=backbone.method,
                                 step=best_epoch)
    history_frame = pd.DataFrame(history, columns=history_columns(backbone.labels))
    HISTORY.write(history_frame, into=out_dir)
    best = history_frame.loc[history_frame["epoch"] == best_epoch].iloc[0]
    epochs_run = int((history_frame["epoch"] > 0).sum())
    trainable, total = backbone.count_parameters()
    summary = {
        "method": backbone.method, "family": backbone.family, "model": backbone.model_name,
        "trainable_params": trainable, "total_params": total, "adapter_bytes": folder_bytes(adapter),
        "best_epoch": best_epoch, "best_val_macro_f1": float(best["val_macro_f1"]), "epochs_run": epochs_run,
        "train_seconds": round(train_seconds, 3),
        "examples_per_s": round(n_train * epochs_run / train_seconds, 3) if epochs_run else 0.0,
        "world_size": config["world_size"], "rank_param_sha256": run["rank_param_sha256"],
        "mlflow_run_id": run["mlflow_run_id"], "mlflow_experiment_id": run["mlflow_experiment_id"],
        "mlflow_model_id": model_id, "note": backbone.entry.describe(has_head=bool(backbone.head_parameters())),
    }
    if probe is not None:  # the head's starting point (base: its solution), C chosen on val
        summary["probe_c"], summary["probe_grid"] = probe.c, probe.grid
    TRAIN_SUMMARY.write(summary, into=out_dir)
    return summary


def log_setup(backbone: Backbone, accelerator: Accelerator) -> None:
    trainable, total = backbone.count_parameters()
    log.info("%s on %s (%s, %s): %d trainable of %d params", backbone.method, backbone.model_name, backbone.family,
             backbone.device, trainable, total)
    log.info("accelerate: %d process%s (%s, backend %s)", accelerator.num_processes,
             "es" if accelerator.num_processes > 1 else "", accelerator.distributed_type.value,
             accelerator.state.backend or "none")


def train_method(params: Params, method: str, train: pd.DataFrame, val: pd.DataFrame, out_dir: Path, *,
                 run_name: str | None = None, extra_tags: dict[str, str] | None = None,
                 parent_run_id: str | None = None, sources: dict[str, str] | None = None) -> dict[str, object]:
    """Train `method` on `train`, early-stop on `val`, save the best epoch to out_dir, log it all to one MLflow run:
    params, the splits as datasets (`sources` names where each came from), per-epoch metrics, and the adapter as an
    MLflow model. Writes out_dir/{adapter/, history.csv, train_summary.json, resolved_config.json}; returns the summary.
    The train stage calls it once; the repeated-seed and cross-validation protocols once per seed or fold, each as a
    child of their protocol's `parent_run_id`.
    Under `accelerate launch` every process trains and returns the summary; the main one alone logs and writes."""
    cfg, extra_tags = params.train, extra_tags or {}
    accelerator = make_accelerator(cfg.device)
    main_process = accelerator.is_main_process
    if not main_process:
        log.setLevel(logging.WARNING)  # the main process reports for all
    set_seed(cfg.seed)
    client, experiment_id = tracking.connect(params.mlflow.experiment) if main_process else (None, None)  # fail fast
    device = cfg.device if accelerator.num_processes == 1 else str(accelerator.device)  # under DDP: this rank's own
    backbone = load_backbone(params.model, method, params.peft, params.prepare.labels, seed=cfg.seed, device=device,
                             gradient_checkpointing=cfg.gradient_checkpointing)
    bf16 = scoring.use_bf16(params.model.dtype, backbone.device)
    log_setup(backbone, accelerator)
    config = resolved_config(params, method, backbone, accelerator.num_processes, extra_tags)
    checkpoint = out_dir / "checkpoint.pt" if cfg.checkpoint_every_epoch else None
    resume = shared_resume(checkpoint, config)
    sources = sources or {split: str(SPLIT.path(split=split)) for split in ("train", "val")}
    datasets = {"training": tracking.split_dataset(train, "train", sources["train"]),
                "validation": tracking.split_dataset(val, "val", sources["val"])}
    tags = {**tracking.run_tags(f"train@{method}", backbone.model_name, backbone.family, method, SOURCE),
            **extra_tags, **tracking.child_tags(parent_run_id)}
    run = mlflow_run(client, experiment_id, resume, run_name=run_name or method, tags=tags, config=config,
                     datasets=datasets, checkpoint=checkpoint) if main_process else contextlib.nullcontext()
    with run as run_id:
        log_epoch = functools.partial(log_metrics_row, client, run_id) if main_process else lambda row: None
        start = time.perf_counter()
        probe = start_head_from_probe(backbone, params, train, val) if backbone.head_parameters() else None
        if backbone.entry.frozen:
            history, best_epoch = validate_start(backbone, train, val, cfg, probe, bf16, log_epoch)
        else:
            knobs = params.peft[method]
            history, best_epoch = fit(backbone, accelerator, train, val, cfg, knobs.lr, bf16, log_epoch, checkpoint,
                                      resume, stamp={"config": config, "run_id": run_id}, head_lr=knobs.head_lr)
        digests = rank_digests(backbone.trainable_parameters())  # the best epoch's weights, one digest per process
        if not main_process:  # the main process writes and logs the one result, then shares its summary
            return broadcast_object_list([None])[0]
        seconds = time.perf_counter() - start + resumed_seconds(resume)
        summary = write_outputs(backbone, out_dir, config, history, best_epoch, seconds, len(train), probe, {
            "client": client, "mlflow_run_id": run_id, "mlflow_experiment_id": experiment_id,
            "rank_param_sha256": digests})
        log_outputs(client, run_id, out_dir, summary, probe, datasets["validation"])
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # the adapter is saved: the run is complete
    log.info("saved %s; best epoch %d, val macro-F1 %.4f; MLflow run %s in %s", out_dir, best_epoch,
             summary["best_val_macro_f1"], run_id, tracking.redact(tracking.tracking_uri()))
    return broadcast_object_list([summary])[0]
