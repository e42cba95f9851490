"""Several processes: `accelerate launch` starts them and DDP averages their gradients, so their weights stay
equal. A lone process (plain python) trains exactly as it would without accelerate.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object

from peftqa.errors import PeftqaError
from peftqa.families import Backbone, Batch
from peftqa.training.checkpoint import load_checkpoint


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
    done = (len(state["history"]), (state.get("position") or {}).get("micro_steps", 0)) if state else (0, 0)
    progress = gather_object([done])  # per rank: (epochs done, micro-batches done of the next one)
    if len(set(progress)) > 1:
        raise PeftqaError(f"{checkpoint}: the training processes see different checkpoints ((epochs, micro-batches) "
                          f"done by rank: {progress}); put models/ on a folder every machine shares, or delete the "
                          "checkpoint")
    return state


def end_processes() -> None:
    """Under `accelerate launch`: wait for every process, then close the process group before the interpreter exits
    (left open, a gloo group's threads can abort a finished process at exit: "terminate called without an active
    exception"). accelerate's own close; a lone process has no group."""
    from accelerate import PartialState

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        PartialState().destroy_process_group()
