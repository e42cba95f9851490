"""What survives a kill: the state after each epoch (weights, optimizer, scheduler, RNG, history, early stopping),
and with train.checkpoint_every_steps also every N optimizer steps inside one (plus how far that epoch has got),
saved atomically and restored bit-identically when the same resolved config runs again.

The file is one header line, `peftqa-checkpoint sha256=<64 hex digits>`, then torch.save's bytes: the digest is of
those bytes, so a flipped byte anywhere (which torch's zip format does not check) is caught at load.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from peftqa.errors import complaint, unreadable
from peftqa.files import atomic_path

log = logging.getLogger(__name__)

HEADER = re.compile(rb"peftqa-checkpoint sha256=([0-9a-f]{64})\n")


class CorruptCheckpoint(ValueError):
    """The checkpoint's bytes are not the ones save_checkpoint wrote: no header line, or another digest."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Everything needed to continue bit-identically after a kill: weights, optimizer, scheduler, RNG, history; behind
    the header that holds its digest. The bytes are built in memory (a second copy of the state while it is written)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(b"peftqa-checkpoint sha256=%s\n" % hashlib.sha256(payload).hexdigest().encode())
        f.write(payload)


def read_checkpoint(path: Path) -> dict:
    """The state save_checkpoint wrote; CorruptCheckpoint when the header is missing or the digest differs."""
    data = path.read_bytes()
    header = HEADER.match(data)
    if header is None:
        raise CorruptCheckpoint("it does not start with the peftqa-checkpoint line (an older peftqa's, or damaged)")
    payload = memoryview(data)[header.end():]
    if hashlib.sha256(payload).hexdigest() != header[1].decode():
        raise CorruptCheckpoint("its sha256 differs from the one it was saved with")
    return torch.load(io.BytesIO(payload), weights_only=False)


# resolved-config keys that describe the machine, not the run: a killed run goes on from its checkpoint on another
# machine, and DDP ranks on different CPUs share one
MACHINE_KEYS = ("cpu_bf16",)


def same_run(saved: dict | None, config: dict) -> bool:
    """Whether a checkpoint's config is this run's, the machine's own keys aside."""
    def settings(c: dict) -> dict:
        return {key: value for key, value in c.items() if key not in MACHINE_KEYS}

    return saved is not None and settings(saved) == settings(config)


def load_checkpoint(path: Path, config: dict) -> dict | None:
    """The saved state, if it was made by the same resolved config; a stale or unreadable checkpoint is ignored, with
    a warning, and training starts afresh (the next checkpoint replaces it)."""
    if not path.exists():
        return None
    try:
        state = read_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - a corrupt checkpoint's, else re-raised
        if not (isinstance(err, CorruptCheckpoint) or unreadable(err)):
            raise
        log.warning("ignoring %s: it cannot be read, it is truncated or corrupted (%s); training starts afresh", path,
                    complaint(err))
        return None
    if not same_run(state.get("config"), config):
        log.warning("ignoring %s: it was saved by a different config", path)
        return None
    position = state.get("position")
    if position is None:
        log.info("resuming from %s after epoch %d", path, state["history"][-1]["epoch"])
    else:
        log.info("resuming from %s in epoch %d after micro-batch %d (optimizer step %d)", path, position["epoch"],
                 position["micro_steps"], position["optimizer_steps"])
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
    """What save_checkpoint writes after an epoch, and restore_state reads back; a mid-epoch checkpoint adds
    position_state's "position"."""
    return {"parameters": [p.detach().clone() for p in parameters], "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "history": history,
            "best_epoch": best.epoch, "best_f1": best.f1, "best_state": best.state, "stale": best.stale}


@dataclass
class EpochPosition:
    """How far an epoch has got: what a mid-epoch checkpoint adds, taken at an optimizer-step boundary (no gradient
    is half accumulated there). The data order needs no saving: it is a function of train.seed and the epoch."""
    epoch: int
    micro_steps: int = 0  # micro-batches of this process's share done; the next one is micro-batch micro_steps + 1
    loss_sum: float = 0.0  # this process's training loss x items over them, for the epoch's mean
    items: int = 0  # this process's items over them
    seconds: float = 0.0  # the epoch's wall time before the kill


def position_state(position: EpochPosition, grad_accum_steps: int, sums_by_rank: list[tuple[float, int]]) -> dict:
    """The checkpoint's "position"; every process's (loss_sum, items), in rank order, since each has its own."""
    return {"epoch": position.epoch, "micro_steps": position.micro_steps, "seconds": position.seconds,
            "optimizer_steps": -(-position.micro_steps // grad_accum_steps), "sums_by_rank": sums_by_rank}


def resume_position(resume: dict | None, rank: int) -> EpochPosition | None:
    """Where this process goes on in the epoch a mid-epoch checkpoint was taken in; None after a whole epoch."""
    position = (resume or {}).get("position")
    if position is None:
        return None
    loss_sum, items = position["sums_by_rank"][rank]
    return EpochPosition(position["epoch"], position["micro_steps"], loss_sum, items, position["seconds"])


def resumed_seconds(resume: dict | None) -> float:
    """Training time a resumed run had already spent: its finished epochs and the part of the one it was killed in."""
    if resume is None:
        return 0.0
    return sum(row["seconds"] for row in resume["history"]) + (resume.get("position") or {}).get("seconds", 0.0)


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
