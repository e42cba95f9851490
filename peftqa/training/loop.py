"""The training loop: seeded epochs over train, AdamW with linear warmup and decay, validation after each epoch,
early stopping on val macro-F1 with the best epoch restored. Reads top to bottom: set_seed, validate, one epoch,
a mid-epoch checkpoint, the optimizer, fit; validate_start for the frozen methods, which train no epoch.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from peftqa.evaluation import scoring
from peftqa.evaluation.metrics import classification_metrics
from peftqa.families import Backbone
from peftqa.params import TrainParams
from peftqa.training.checkpoint import (
    BestEpoch,
    EpochPosition,
    position_state,
    restore_state,
    resume_position,
    save_checkpoint,
    training_state,
)
from peftqa.training.distributed import TrainingLoss
from peftqa.training.probe import Probe

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Seed every RNG the loop touches; with deterministic algorithms a CPU run is bit-reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def validate(backbone: Backbone, val: pd.DataFrame, batch_size: int, class_weights: torch.Tensor | None,
             bf16: bool, by_length: bool = False) -> dict[str, float]:
    """Val loss and metrics: the numbers early stopping and the MLflow curves use."""
    loss, log_probs = scoring.score_frame(backbone, val, batch_size, class_weights, bf16=bf16, by_length=by_length)
    metrics = classification_metrics(val["label"].tolist(), scoring.labels_from_log_probs(log_probs, backbone.labels),
                                     backbone.labels)
    out = {"val_loss": loss, "val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"]}
    out.update({f"val_f1_{label}": metrics[f"f1_{label}"] for label in backbone.labels})
    return out


LENGTH_CHUNK_BATCHES = 64  # train.length_groups sorts within chunks of this many batches of the shuffle


def length_grouped(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """`order` (a shuffle of row positions) regrouped into batches of similar length: sorted by length within chunks
    of LENGTH_CHUNK_BATCHES batches, cut into batches, the full batches shuffled (a last, partial one stays last,
    so every batch boundary holds). Each row is still seen once an epoch, and the order depends only on `rng`."""
    chunk = batch_size * LENGTH_CHUNK_BATCHES
    parts = [order[start : start + chunk] for start in range(0, len(order), chunk)]
    ordered = np.concatenate([part[np.argsort(lengths[part], kind="stable")] for part in parts]) if parts else order
    n_full = len(ordered) // batch_size
    batches = ordered[: n_full * batch_size].reshape(n_full, batch_size)[rng.permutation(n_full)]  # (n_full, B)
    return np.concatenate([batches.ravel(), ordered[n_full * batch_size:]])


def epoch_rows(accelerator: Accelerator, n_train: int, seed: int, lengths: np.ndarray | None = None,
               batch_size: int = 1) -> np.ndarray:
    """This process's share of an epoch's seeded shuffle of train (seed: train.seed + epoch), as row positions: the
    same on every process and again in a resumed epoch, so a checkpoint needs to save only how far it got. With
    `lengths` (train.length_groups: each row's tokens), the shuffle is regrouped into batches of similar length."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_train)
    if lengths is not None:
        order = length_grouped(order, lengths, batch_size, rng)
    # contiguous shares; the last is padded with the last row, so every process takes the same steps (DDP syncs each)
    with accelerator.split_between_processes(order.tolist(), apply_padding=True) as share:
        return np.asarray(share)


def train_one_epoch(backbone: Backbone, model: torch.nn.Module, accelerator: Accelerator, train: pd.DataFrame,
                    optimizer: torch.optim.Optimizer, scheduler, cfg: TrainParams, class_weights: torch.Tensor | None,
                    position: EpochPosition, bf16: bool,
                    save: Callable[[EpochPosition], None] | None = None, lengths: np.ndarray | None = None) -> float:
    """One pass over a seeded shuffle of train, this process's share of it; `model` is TrainingLoss as prepared
    (DDP under several processes). Goes on from `position` (a fresh one: the epoch's start) and keeps it up to date;
    `save(position)` runs every train.checkpoint_every_steps optimizer steps. Returns the mean (weighted) training
    loss per item, over all processes. `lengths`: each train row's tokens, under train.length_groups."""
    backbone.model.train()
    rows = epoch_rows(accelerator, len(train), cfg.seed + position.epoch, lengths, cfg.batch_size)
    parameters = backbone.trainable_parameters()
    n_batches = -(-len(rows) // cfg.batch_size)
    done = position.micro_steps  # resumed mid-epoch: skip the micro-batches done before the kill, in the same order
    bar = tqdm(scoring.iterate_batches(train, cfg.batch_size, rows[done * cfg.batch_size:]), initial=done,
               total=n_batches, desc=f"epoch {position.epoch}", unit="batch", dynamic_ncols=True, file=sys.stderr,
               disable=not accelerator.is_main_process)
    for micro_step, (questions, contexts, labels) in enumerate(bar, start=done + 1):
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
        position.micro_steps = micro_step
        position.loss_sum += float(loss.detach()) * len(questions)
        position.items += len(questions)
        bar.set_postfix(loss=f"{position.loss_sum / position.items:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step and save is not None and -(-micro_step // cfg.grad_accum_steps) % cfg.checkpoint_every_steps == 0:
            save(position)
    sums = torch.tensor([position.loss_sum, position.items], dtype=torch.float64, device=backbone.device)  # (2,)
    total, seen = accelerator.reduce(sums, reduction="sum").tolist()
    return total / max(seen, 1)


def save_mid_epoch(checkpoint: Path, accelerator: Accelerator, grad_accum_steps: int, state: Callable[[], dict],
                   start: float, position: EpochPosition) -> None:
    """A checkpoint inside an epoch, at an optimizer-step boundary: `state()` (the stamp and training_state) and
    `position`. Every process calls it, to send its own loss sums; the main one writes."""
    position.seconds = time.perf_counter() - start
    sums_by_rank = gather_object([(position.loss_sum, position.items)])
    if accelerator.is_main_process:
        save_checkpoint(checkpoint, {**state(), "position": position_state(position, grad_accum_steps, sums_by_rank)})


def class_weights(train: pd.DataFrame, backbone: Backbone, cfg: TrainParams) -> torch.Tensor | None:
    """(n_labels,) loss weights under train.class_weighting: balanced, or None."""
    if cfg.class_weighting != "balanced":
        return None
    return scoring.balanced_class_weights(train["label"].tolist(), backbone.labels).to(backbone.device)


def parameter_groups(backbone: Backbone, lr: float, head_lr: float | None) -> list[dict]:
    """AdamW groups: the adapter (or the whole model) at `lr`, a classification head at `head_lr` (None: `lr`).
    A soft prompt wants 3e-2 and LoRA 5e-4, while a head wants neither: one shared rate would fit only one of them."""
    head = {id(p) for p in backbone.head_parameters()}  # a method may split the adapter's group (LoRA+'s B)
    adapter = [(name, p) for name, p in backbone.model.named_parameters() if p.requires_grad and id(p) not in head]
    split = backbone.entry.optimizer_groups
    groups = (split(adapter, backbone.knobs, lr) if split else [{"params": [p for _, p in adapter], "lr": lr}])
    groups.append({"params": [p for p in backbone.trainable_parameters() if id(p) in head],
                   "lr": lr if head_lr is None else head_lr})
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
    With `checkpoint`, the state after each epoch is saved there, with `stamp` (config, MLflow run id) beside it,
    and with train.checkpoint_every_steps every N optimizer steps inside one too; `resume` is such a state to continue
    from, after its epoch or at the next micro-batch of it. Under several processes each trains on its share of
    every batch round (DDP averages the gradients), the main process validates, and all follow its early-stopping
    decisions."""
    weights = class_weights(train, backbone, cfg)
    lengths = np.asarray(backbone.token_lengths(train)) if cfg.length_groups else None
    parameters = backbone.trainable_parameters()
    optimizer, scheduler = make_optimizer(backbone, accelerator, len(train), cfg, lr, head_lr)
    history, best = restore_state(resume, parameters, optimizer, scheduler) if resume else ([], BestEpoch())
    model, optimizer = accelerator.prepare(TrainingLoss(backbone), optimizer)  # one process: returned as they are

    def state() -> dict:  # what every checkpoint holds; a mid-epoch one adds its position
        return {**(stamp or {}), **training_state(parameters, optimizer, scheduler, history, best)}

    # a resumed run goes on after its last epoch (killed mid-epoch: in the next one, where it was), or not at all if
    # it had stopped already
    first = (history[-1]["epoch"] + 1 if history else 0) if best.stale < cfg.patience else cfg.epochs + 1
    resumed = resume_position(resume, accelerator.process_index)
    for epoch in range(first, cfg.epochs + 1):
        position = resumed if resumed and resumed.epoch == epoch else EpochPosition(epoch)
        start = time.perf_counter() - position.seconds
        save = functools.partial(save_mid_epoch, checkpoint, accelerator, cfg.grad_accum_steps, state, start) if (
            checkpoint is not None and cfg.checkpoint_every_steps) else None
        # epoch 0 trains nothing: the starting point (a fresh adapter, a head from the probe) is a candidate too,
        # so training that only hurts val ends where it began
        train_loss = float("nan") if epoch == 0 else train_one_epoch(
            backbone, model, accelerator, train, optimizer, scheduler, cfg, weights, position, bf16, save, lengths)
        row = None
        if accelerator.is_main_process:
            row = {"epoch": epoch, "train_loss": train_loss,
                   **validate(backbone, val, cfg.batch_size, weights, bf16, cfg.length_groups),
                   "seconds": time.perf_counter() - start}
        row = broadcast_object_list([row])[0]  # every process takes the same decisions below
        history.append(row)
        log.info("epoch %d: train_loss %.4f val_loss %.4f val_macro_f1 %.4f (%.0f s)", epoch, train_loss,
                 row["val_loss"], row["val_macro_f1"], row["seconds"])
        best.update(epoch, row["val_macro_f1"], parameters)
        # saved before the epoch is logged, so a resumed run logs each epoch once; one process saves for all
        if checkpoint is not None and accelerator.is_main_process:
            save_checkpoint(checkpoint, state())
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
           **validate(backbone, val, cfg.batch_size, class_weights(train, backbone, cfg), bf16, cfg.length_groups),
           "seconds": 0.0}
    row["seconds"] = time.perf_counter() - start
    log_epoch(row)
    return [row], 0
