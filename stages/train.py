"""Stage train@<method>: fine-tune one PEFT method on train, pick the best epoch on val, save it, log it to MLflow.

Inputs:  data/processed/{train,val}.csv; params: model, train, peft.<method>, mlflow, prepare.labels.
Outputs: models/<method>/adapter/           save_pretrained output (+ head for the encoder family, peftqa.json)
         models/<method>/history.csv        one row per epoch (epoch 0 only, for a zero-shot base)
         models/<method>/train_summary.json params, sizes, best epoch, timing, MLflow run id
         models/<method>/resolved_config.json  the whole resolved config, as logged to MLflow
Usage:   python -m stages.train <method> [--debug]
         accelerate launch --multi_gpu --num_processes N -m stages.train <method>   (DDP: N processes, one result)
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, gather_object
from mlflow.entities import Dataset
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from stages import common, environment, scoring, serving, tracking
from stages.common import PeftqaError, read_split
from stages.embed import features_for
from stages.families import Backbone, Batch, load_backbone, resolve_model
from stages.metrics import classification_metrics
from stages.params import METHODS, Params, TrainParams, flatten, load_params
from stages.probe import Probe, load_into_head, solve_probe

log = logging.getLogger("peftqa.train")

DATA_DIR = Path("data/processed")
MODELS_DIR = Path("models")
SOURCE = "stages/train.py"  # MLflow's mlflow.source.name of every training run


# -----------------------------------------------------------------------------
# helpers


def set_seed(seed: int) -> None:
    """Seed every RNG the loop touches; with deterministic algorithms a CPU run is bit-reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def history_columns(labels: tuple[str, ...]) -> list[str]:
    return ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1",
            *[f"val_f1_{label}" for label in labels], "seconds"]


def validate(backbone: Backbone, val: pd.DataFrame, batch_size: int, class_weights: torch.Tensor | None,
             bf16: bool) -> dict[str, float]:
    """Val loss and metrics: the numbers early stopping and the MLflow curves use."""
    loss, log_probs = scoring.score_frame(backbone, val, batch_size, class_weights, bf16=bf16)
    metrics = classification_metrics(val["label"].tolist(), scoring.labels_from_log_probs(log_probs, backbone.labels),
                                     backbone.labels)
    out = {"val_loss": loss, "val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"]}
    out.update({f"val_f1_{label}": metrics[f"f1_{label}"] for label in backbone.labels})
    return out


# -----------------------------------------------------------------------------
# several processes: `accelerate launch` starts them, DDP averages their gradients, so their weights stay equal


def make_accelerator(device: str) -> Accelerator:
    """This process's place among those `accelerate launch` started (alone under plain python). Precision stays
    with model.dtype and placement with train.device, so a lone process trains exactly as it would without it."""
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())  # CPU processes talk over gloo
    # a trainable weight the loss never reaches (BERT's pooler in full_finetune) would otherwise stop DDP
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=cpu, mixed_precision="no", device_placement=False, kwargs_handlers=[ddp])


class TrainingLoss(torch.nn.Module):
    """The backbone's training loss as one module that owns every trainable weight: what DDP wraps, so its gradient
    all-reduce covers them all (the encoder's head lives outside the transformers model)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.weights = torch.nn.ParameterList(backbone.trainable_parameters())  # the same tensors, not copies

    def forward(self, batch: Batch, class_weights: torch.Tensor | None) -> torch.Tensor:
        return self.backbone.loss(batch, class_weights)


def parameter_digest(parameters: list[torch.Tensor]) -> str:
    """sha256 of the parameters' raw bytes, in order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for p in parameters:
        digest.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rank_digests(parameters: list[torch.Tensor]) -> list[str]:
    """Every process's parameter digest, in rank order; they must be equal, or the saved adapter is one rank's."""
    digests = gather_object([parameter_digest(parameters)])
    if len(set(digests)) > 1:
        raise PeftqaError(f"the {len(digests)} training processes ended with different weights (sha256 by rank: "
                          f"{digests}), so their gradients were not averaged; nothing was saved. Train with one "
                          "process (python -m stages.train) and report the accelerate launch command that did this.")
    return digests


def shared_resume(checkpoint: Path | None, config: dict) -> dict | None:
    """The checkpoint to continue from, read by every process; on several machines models/ must be one shared
    folder, or the ranks would start from different epochs."""
    state = load_checkpoint(checkpoint, config) if checkpoint else None
    epochs = gather_object([len(state["history"]) if state else 0])  # per rank: epochs done
    if len(set(epochs)) > 1:
        raise PeftqaError(f"{checkpoint}: the training processes see different checkpoints (epochs done by rank: "
                          f"{epochs}); put models/ on a folder every machine shares, or delete the checkpoint")
    return state


def train_one_epoch(backbone: Backbone, model: torch.nn.Module, accelerator: Accelerator, train: pd.DataFrame,
                    optimizer: torch.optim.Optimizer, scheduler, cfg: TrainParams, class_weights: torch.Tensor | None,
                    epoch: int, bf16: bool) -> float:
    """One pass over a seeded shuffle of train, this process's share of it; `model` is TrainingLoss as prepared
    (DDP under several processes). Returns the mean (weighted) training loss per item, over all processes."""
    backbone.model.train()
    order = np.random.default_rng(cfg.seed + epoch).permutation(len(train))  # the same on every process
    # contiguous shares; the last is padded with the last row, so every process takes the same steps (DDP syncs each)
    with accelerator.split_between_processes(order.tolist(), apply_padding=True) as share:
        rows = np.asarray(share)
    parameters = backbone.trainable_parameters()
    n_batches = -(-len(rows) // cfg.batch_size)
    total, seen = 0.0, 0
    bar = tqdm(scoring.iterate_batches(train, cfg.batch_size, rows), total=n_batches, desc=f"epoch {epoch}",
               unit="batch", dynamic_ncols=True, file=sys.stderr, disable=not accelerator.is_main_process)
    for micro_step, (questions, contexts, labels) in enumerate(bar, start=1):
        batch = backbone.encode(questions, contexts, labels)
        step = micro_step % cfg.grad_accum_steps == 0 or micro_step == n_batches
        # gradients are all-reduced once per optimizer step, on its last micro-batch
        with contextlib.nullcontext() if step else accelerator.no_sync(model):
            with scoring.autocast(backbone.device, bf16):
                loss = model(batch, class_weights)
            accelerator.backward(loss / cfg.grad_accum_steps)
        if step:
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(parameters, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach()) * len(questions)
        seen += len(questions)
        bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    sums = torch.tensor([total, seen], dtype=torch.float64, device=backbone.device)  # (2,) loss sum, items
    total, seen = accelerator.reduce(sums, reduction="sum").tolist()
    return total / max(seen, 1)


def save_checkpoint(path: Path, state: dict) -> None:
    """Everything needed to continue bit-identically after a kill: weights, optimizer, scheduler, RNG, history."""
    with common.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, config: dict) -> dict | None:
    """The saved state, if it was made by the same resolved config; a stale checkpoint is ignored."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    if state.get("config") != config:
        log.warning("ignoring %s: it was saved by a different config", path)
        return None
    log.info("resuming from %s after epoch %d", path, state["history"][-1]["epoch"])
    return state


def class_weights(train: pd.DataFrame, backbone: Backbone, cfg: TrainParams) -> torch.Tensor | None:
    """(n_labels,) loss weights under train.class_weighting: balanced, or None."""
    if cfg.class_weighting != "balanced":
        return None
    return scoring.balanced_class_weights(train["label"].tolist(), backbone.labels).to(backbone.device)


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


def parameter_groups(backbone: Backbone, lr: float, head_lr: float | None) -> list[dict]:
    """AdamW groups: the adapter (or the whole model) at `lr`, a classification head at `head_lr` (None: `lr`).
    A soft prompt wants 3e-2 and LoRA 5e-4, while a head wants neither: one shared rate would fit only one of them."""
    head = {id(p) for p in backbone.head_parameters()}
    groups = [{"params": [p for p in backbone.trainable_parameters() if id(p) not in head], "lr": lr},
              {"params": [p for p in backbone.trainable_parameters() if id(p) in head],
               "lr": lr if head_lr is None else head_lr}]
    return [group for group in groups if group["params"]]


@dataclass
class BestEpoch:
    """Early stopping's memory: the best val macro-F1 so far, its epoch and weights, and epochs since a gain."""
    epoch: int = 0
    f1: float = -1.0
    state: list[torch.Tensor] | None = None
    stale: int = 0

    def update(self, epoch: int, f1: float, parameters: list[torch.Tensor]) -> None:
        if f1 > self.f1:  # ties keep the earlier epoch
            self.epoch, self.f1, self.stale = epoch, f1, 0
            self.state = [p.detach().clone() for p in parameters]
        else:
            self.stale += 1

    def restore(self, parameters: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, saved in zip(parameters, self.state):
                p.copy_(saved)


def make_optimizer(backbone: Backbone, accelerator: Accelerator, n_train: int, cfg: TrainParams, lr: float,
                   head_lr: float | None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over parameter_groups, with linear warmup then decay to 0 over every optimizer step of the run."""
    optimizer = torch.optim.AdamW(parameter_groups(backbone, lr, head_lr), weight_decay=cfg.weight_decay)
    rows_per_process = -(-n_train // accelerator.num_processes)
    steps_per_epoch = -(-rows_per_process // (cfg.batch_size * cfg.grad_accum_steps))
    total_steps = steps_per_epoch * cfg.epochs
    # not passed to accelerator.prepare: its scheduler wrapper steps once per process, which would squeeze the schedule
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)


def restore_state(resume: dict, parameters: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                  scheduler) -> tuple[list[dict], BestEpoch]:
    """Put a checkpoint's weights, optimizer, scheduler and RNG back; returns its history and early-stopping state."""
    BestEpoch(state=resume["parameters"]).restore(parameters)
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    torch.set_rng_state(resume["torch_rng"])
    return resume["history"], BestEpoch(resume["best_epoch"], resume["best_f1"], resume["best_state"], resume["stale"])


def training_state(parameters: list[torch.Tensor], optimizer: torch.optim.Optimizer, scheduler, history: list[dict],
                   best: BestEpoch) -> dict:
    """What save_checkpoint writes after an epoch, and restore_state reads back."""
    return {"parameters": [p.detach().clone() for p in parameters], "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "history": history,
            "best_epoch": best.epoch, "best_f1": best.f1, "best_state": best.state, "stale": best.stale}


def fit(backbone: Backbone, accelerator: Accelerator, train: pd.DataFrame, val: pd.DataFrame, cfg: TrainParams,
        lr: float, bf16: bool, log_epoch, checkpoint: Path | None = None, resume: dict | None = None,
        stamp: dict | None = None, head_lr: float | None = None) -> tuple[list[dict], int]:
    """AdamW + linear warmup/decay, early stopping on val macro-F1, best epoch restored. Returns (history, best).
    Epoch 0 is the untrained start, validated like the others. The adapter learns at `lr`, a classification head at
    `head_lr` (None: `lr`).
    With `checkpoint`, the state after each epoch is saved there, with `stamp` (config, MLflow run id) beside it;
    `resume` is such a state to continue from. Under several processes each trains on its share of every batch
    round (DDP averages the gradients), the main process validates, and all follow its early-stopping decisions."""
    weights = class_weights(train, backbone, cfg)
    parameters = backbone.trainable_parameters()
    optimizer, scheduler = make_optimizer(backbone, accelerator, len(train), cfg, lr, head_lr)
    history, best = restore_state(resume, parameters, optimizer, scheduler) if resume else ([], BestEpoch())
    model, optimizer = accelerator.prepare(TrainingLoss(backbone), optimizer)  # one process: returned as they are
    # a resumed run goes on after its last epoch, or not at all if it had stopped already
    first = (history[-1]["epoch"] + 1 if history else 0) if best.stale < cfg.patience else cfg.epochs + 1
    for epoch in range(first, cfg.epochs + 1):
        start = time.perf_counter()
        # epoch 0 trains nothing: the starting point (a fresh adapter, a head from the probe) is a candidate too,
        # so training that only hurts val ends where it began
        train_loss = float("nan") if epoch == 0 else train_one_epoch(
            backbone, model, accelerator, train, optimizer, scheduler, cfg, weights, epoch, bf16)
        row = None
        if accelerator.is_main_process:
            row = {"epoch": epoch, "train_loss": train_loss, **validate(backbone, val, cfg.batch_size, weights, bf16),
                   "seconds": time.perf_counter() - start}
        row = broadcast_object_list([row])[0]  # every process takes the same decisions below
        history.append(row)
        log.info("epoch %d: train_loss %.4f val_loss %.4f val_macro_f1 %.4f (%.0f s)", epoch, train_loss,
                 row["val_loss"], row["val_macro_f1"], row["seconds"])
        best.update(epoch, row["val_macro_f1"], parameters)
        # saved before the epoch is logged, so a resumed run logs each epoch once; one process saves for all
        if checkpoint is not None and accelerator.is_main_process:
            save_checkpoint(checkpoint, {**(stamp or {}),
                                         **training_state(parameters, optimizer, scheduler, history, best)})
        log_epoch(row)
        if best.stale >= cfg.patience:
            log.info("early stop: no val macro-F1 gain for %d epochs; best epoch %d", best.stale, best.epoch)
            break
    best.restore(parameters)  # the best epoch's weights are the ones saved
    return history, best.epoch


def validate_start(backbone: Backbone, train: pd.DataFrame, val: pd.DataFrame, cfg: TrainParams, probe: Probe | None,
                   bf16: bool, log_epoch) -> tuple[list[dict], int]:
    """A frozen method (zero-shot, or the probe solved) trains no epoch: one validation pass, recorded as epoch 0."""
    start = time.perf_counter()
    row = {"epoch": 0, "train_loss": probe.chosen["train_loss"] if probe else float("nan"),
           **validate(backbone, val, cfg.batch_size, class_weights(train, backbone, cfg), bf16), "seconds": 0.0}
    row["seconds"] = time.perf_counter() - start
    log_epoch(row)
    return [row], 0


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
    config.update(environment.environment_tags())  # the installed lock: a result names the environment that made it
    peft_config = getattr(backbone.model, "peft_config", {}).get("default")
    if peft_config is not None:
        resolved = resolve_model(params.model.name_or_path)[0]
        config.update({key: params.model.name_or_path if value == resolved else value for key, value in flatten(
            json.loads(json.dumps(peft_config.to_dict(), default=_jsonable)), "peft_config.").items()})
    config.update(extra)  # protocol runs: which seed or fold this is, in the params as in the tags
    return config


# -----------------------------------------------------------------------------
# the MLflow run: one per training, named after the method


def log_metrics_row(client, run_id: str, row: dict) -> None:
    """One history row into MLflow, at step=epoch, so MLflow and history.csv hold the same numbers."""
    tracking.log_metrics(client, run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"],
                         timestamp_ms=int(time.time() * 1000))


@contextlib.contextmanager
def mlflow_run(client, experiment_id: str, resume: dict | None, *, run_name: str, tags: dict[str, str],
               config: dict, datasets: dict[str, Dataset]) -> Iterator[str]:
    """The training's MLflow run, its whole life. A new run gets the config as params and the splits as datasets;
    resuming, the checkpoint's run is reopened and its epochs that never reached MLflow are logged. The run ends
    FINISHED when the block completes and FAILED when it raises; a killed process leaves it RUNNING, to resume."""
    if resume is None:
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        tracking.log_params(client, run_id, config)
        tracking.log_datasets(client, run_id, datasets)
    else:
        run_id = resume["run_id"]
        client.update_run(run_id, status="RUNNING")
        logged = {m.step for m in client.get_metric_history(run_id, "val_macro_f1")}
        for row in resume["history"]:  # epochs checkpointed but killed before they reached MLflow
            if row["epoch"] not in logged:
                log_metrics_row(client, run_id, row)
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def log_outputs(client, run_id: str, out_dir: Path, summary: dict, probe: Probe | None, dataset: Dataset) -> None:
    """The best epoch's figures (linked to the logged model and the val split), the probe's grid, the files."""
    tracking.log_metrics(client, run_id, {key: summary[key] for key in (
        "best_epoch", "best_val_macro_f1", "trainable_params", "adapter_bytes", "train_seconds")},
        step=summary["best_epoch"], timestamp_ms=int(time.time() * 1000), model_id=summary["mlflow_model_id"],
        dataset=dataset)
    if probe is not None:  # val macro-F1 per C tried, in grid order (step = position in peft.base.c_grid, sorted)
        for step, row in enumerate(probe.grid):
            tracking.log_metrics(client, run_id, {"probe_c": row["c"], "probe_val_macro_f1": row["val_macro_f1"]},
                                 step=step, timestamp_ms=int(time.time() * 1000))
    tracking.log_folder(client, run_id, out_dir / "adapter", "adapter")
    for name in ("history.csv", "train_summary.json", "resolved_config.json"):
        client.log_artifact(run_id, str(out_dir / name))


# -----------------------------------------------------------------------------


def write_outputs(backbone: Backbone, out_dir: Path, config: dict, history: list[dict], best_epoch: int,
                  train_seconds: float, n_train: int, probe: Probe | None, run: dict[str, object]) -> dict[str, object]:
    """Save the adapter and its config, log it as an MLflow model, write history.csv and train_summary.json;
    returns the summary. `run` holds the MLflow ids and the per-rank digests."""
    common.replace_dir_atomic(backbone.save, out_dir / "adapter")
    common.write_json_atomic(out_dir / "resolved_config.json", config)
    model_id = serving.log_model(run["client"], run["mlflow_run_id"], out_dir / "adapter",
                                 out_dir / "resolved_config.json", name=backbone.method, step=best_epoch)
    history_frame = pd.DataFrame(history, columns=history_columns(backbone.labels))
    common.write_csv_atomic(out_dir / "history.csv", history_frame)
    best = history_frame.loc[history_frame["epoch"] == best_epoch].iloc[0]
    epochs_run = int((history_frame["epoch"] > 0).sum())
    trainable, total = backbone.count_parameters()
    summary = {
        "method": backbone.method, "family": backbone.family, "model": backbone.model_name,
        "trainable_params": trainable, "total_params": total, "adapter_bytes": common.folder_bytes(out_dir / "adapter"),
        "best_epoch": best_epoch, "best_val_macro_f1": float(best["val_macro_f1"]), "epochs_run": epochs_run,
        "train_seconds": round(train_seconds, 3),
        "examples_per_s": round(n_train * epochs_run / train_seconds, 3) if epochs_run else 0.0,
        "world_size": config["world_size"], "rank_param_sha256": run["rank_param_sha256"],
        "mlflow_run_id": run["mlflow_run_id"], "mlflow_experiment_id": run["mlflow_experiment_id"],
        "mlflow_model_id": model_id, "note": backbone.entry.describe(has_head=bool(backbone.head_parameters())),
    }
    if probe is not None:  # the head's starting point (base: its solution), C chosen on val
        summary["probe_c"], summary["probe_grid"] = probe.c, probe.grid
    common.write_json_atomic(out_dir / "train_summary.json", summary)
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
    sources = sources or {split: str(DATA_DIR / f"{split}.csv") for split in ("train", "val")}
    datasets = {"training": tracking.split_dataset(train, "train", sources["train"]),
                "validation": tracking.split_dataset(val, "val", sources["val"])}
    tags = {**tracking.run_tags(f"train@{method}", backbone.model_name, backbone.family, method, SOURCE),
            **extra_tags, **tracking.child_tags(parent_run_id)}
    run = mlflow_run(client, experiment_id, resume, run_name=run_name or method, tags=tags, config=config,
                     datasets=datasets) if main_process else contextlib.nullcontext()
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
        seconds = time.perf_counter() - start + (sum(r["seconds"] for r in resume["history"]) if resume else 0.0)
        summary = write_outputs(backbone, out_dir, config, history, best_epoch, seconds, len(train), probe, {
            "client": client, "mlflow_run_id": run_id, "mlflow_experiment_id": experiment_id,
            "rank_param_sha256": digests})
        log_outputs(client, run_id, out_dir, summary, probe, datasets["validation"])
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # the adapter is saved: the run is complete
    log.info("saved %s; best epoch %d, val macro-F1 %.4f; MLflow run %s in %s", out_dir, best_epoch,
             summary["best_val_macro_f1"], run_id, tracking.redact(tracking.tracking_uri()))
    return broadcast_object_list([summary])[0]


def main(args: list[str]) -> None:
    if len(args) != 1 or args[0] not in METHODS:
        raise PeftqaError(f"usage: python -m stages.train <method>, with <method> one of {list(METHODS)}; got {args}")
    method = args[0]
    params = load_params()
    train = read_split(DATA_DIR / "train.csv", params.train.limit_train)
    val = read_split(DATA_DIR / "val.csv", params.evaluate.limit_items)  # per-epoch val scores what evaluate scores
    train_method(params, method, train, val, MODELS_DIR / method)


if __name__ == "__main__":
    from stages.common import run_cli

    run_cli(main)
