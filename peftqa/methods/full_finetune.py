"""Method full_finetune: every weight trained, no adapter; the upper-bound reference, saved as the whole model."""
from __future__ import annotations

from dataclasses import dataclass

from peftqa.methods.base import build_no_adapter
from peftqa.methods.knobs import TrainedKnobs
from peftqa.methods.registry import Method, register


@dataclass(frozen=True)
class FullFinetuneParams(TrainedKnobs):
    lr: float = 3e-5


register(Method("full_finetune", FullFinetuneParams, build_no_adapter, whole_model=True,
                note="full fine-tune: every weight trained (upper-bound reference, not an adapter)"))
