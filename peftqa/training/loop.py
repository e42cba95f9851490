"""The training loop: seeded epochs over train, AdamW with linear warmup and decay, validation after each epoch,
early stopping on val macro-F1 with the best epoch restored. Reads top to bottom: set_seed, validate, one epoch,
the optimizer, fit; validate_start for the frozen methods, which train no epoch.
"""
from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from peftqa import scoring
from peftqa.families import Backbone
from peftqa.metrics import classification_metrics
from peftqa.params import TrainParams
from peftqa.probe import Probe
from peftqa.training.checkpoint import BestEpoch, restore_state, save_checkpoint, training_state
from peftqa.training.distributed import TrainingLoss

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Seed every RNG the loop touches; with deterministic algorithms a CPU run is bit-reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def validate(backbone: Backbone, val: pd.DataFrame, batch_size: int, class_weights: torch.Tensor | None,
             bf16: bool) -> dict[str, float]:
    """Val loss and metrics: the numbers early stopping and the MLflow curves use."""
    loss, log_probs = scoring.score_frame(backbone, val, batch_size, class_weights, bf16=bf16)
    metrics = classification_metrics(val["label"].tolist(), scoring.labels_from_log_probs(log_probs, backbone.labels),
                                     backbone.labels)
    out = {"val_loss": loss, "val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"]}
    out.update({f"val_f1_{label}": metrics[f"f1_{label}"] for label in backbone.labels})
    return out


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


def class_weights(train: pd.DataFrame, backbone: Backbone, cfg: TrainParams) -> torch.Tensor | None:
    """(n_labels,) loss weights under train.class_weighting: balanced, or None."""
    if cfg.class_weighting != "balanced":
        return None
    return scoring.balanced_class_weights(train["label"].tolist(), backbone.labels).to(backbone.device)


def parameter_groups(backbone: Backbone, lr: float, head_lr: float | None) -> list[dict]:
    """AdamW groups: the adapter (or the whole model) at `lr`, a classification head at `head_lr` (None: `lr`).
    A soft prompt wants 3e-2 and LoRA 5e-4, while a head wants neither: one shared rate would fit only one of them."""
    head = {id(p) for p in backbone.head_parameters()}
    groups = [{"params": [p for p in backbone.trainable_parameters() if id(p) not in head], "lr": lr},
              {"params": [p for p in backbone.trainable_parameters() if id(p) in head],
               "lr": lr if head_lr is None else head_lr}]
    return [group for group in groups if group["params"]]


def make_optimizer(backbone: Backbone, accelerator: Accelerator, n_train: int, cfg: TrainParams, lr: float,
                   head_lr: float | None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over parameter_groups, with linear warmup then decay to 0 over every optimizer step of the run."""
    optimizer = torch.optim.AdamW(parameter_groups(backbone, lr, head_lr), weight_decay=cfg.weight_decay)
    rows_per_process = -(-n_train // accelerator.num_processes)
    steps_per_epoch = -(-rows_per_process // (cfg.batch_size * cfg.grad_accum_steps))
    total_steps = steps_per_epoch * cfg.epochs
    # not passed to accelerator.prepare: its scheduler wrapper steps once per process, which would squeeze the schedule
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)


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
