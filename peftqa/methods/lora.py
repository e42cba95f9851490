"""Method lora: low-rank updates on the target layers (peft's LoraConfig)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from peftqa.common import require
from peftqa.methods.knobs import TrainedKnobs
from peftqa.methods.registry import Family, Method, ResolvedModel, register

if TYPE_CHECKING:
    from peft import PeftConfig


@dataclass(frozen=True)
class LoraParams(TrainedKnobs):
    lr: float = 5e-4
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ()  # () = the family's query and value projections
    at_least_one: ClassVar[tuple[str, ...]] = ("r",)  # the rank

    def __post_init__(self):
        super().__post_init__()
        require(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")


def build_lora(knobs: LoraParams, family: Family, model: ResolvedModel) -> PeftConfig:
    """Low-rank updates on the target layers (the family's query and value projections unless params name others)."""
    from peft import LoraConfig

    return LoraConfig(task_type=family.task_type, r=knobs.r, lora_alpha=knobs.alpha, lora_dropout=knobs.dropout,
                      target_modules=list(knobs.target_modules or family.query_value_layers))


register(Method("lora", LoraParams, build_lora))
