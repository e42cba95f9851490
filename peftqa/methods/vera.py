"""Method vera: vector-based random matrix adaptation (Kopiczko et al. 2024), peft's VeraConfig. One pair of frozen
random low-rank matrices is shared by every target layer; only a scaling vector per layer on each side trains. The
random pair is drawn from projection_prng_key and saved with the adapter, so a reload needs no seed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from peftqa.errors import require
from peftqa.methods.knobs import TrainedKnobs
from peftqa.methods.registry import Family, Method, ResolvedModel, register

if TYPE_CHECKING:
    from peft import PeftConfig


@dataclass(frozen=True)
class VeraParams(TrainedKnobs):
    lr: float = 5e-3
    r: int = 256  # the shared random matrices' rank: VeRA's trained count grows with it only through d (r per layer)
    dropout: float = 0.0
    d_initial: float = 0.1  # the start of the trained vector d (the other, b, starts at 0: the identity)
    projection_prng_key: int = 0  # the seed of the shared random matrices
    target_modules: tuple[str, ...] = ()  # () = the family's query and value projections
    at_least_one: ClassVar[tuple[str, ...]] = ("r",)

    def __post_init__(self):
        super().__post_init__()
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        require(self.d_initial > 0, "d_initial", self.d_initial, "must be > 0")


def build_vera(knobs: VeraParams, family: Family, model: ResolvedModel) -> PeftConfig:
    from peft import VeraConfig

    return VeraConfig(task_type=family.task_type, r=knobs.r, vera_dropout=knobs.dropout, d_initial=knobs.d_initial,
                      projection_prng_key=knobs.projection_prng_key, save_projection=True,
                      target_modules=list(knobs.target_modules or family.query_value_layers))


register(Method("vera", VeraParams, build_vera, paper="Kopiczko et al. 2024"))
