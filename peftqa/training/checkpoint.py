"""What survives a kill: the state after each epoch (weights, optimizer, scheduler, RNG, history, early stopping),
saved atomically and restored bit-identically when the same resolved config runs again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from peftqa import common

log = logging.getLogger(__name__)


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
