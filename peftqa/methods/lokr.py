"""Method lokr: Kronecker-product updates (Edalati et al. 2022, KronA; LyCORIS's LoKr), peft's LoKrConfig. Like
LoHa, it cannot wrap GPT-2's Conv1D layers, which are refused by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peftqa.errors import require
from peftqa.methods.loha import LohaParams, refuse_conv1d
from peftqa.methods.registry import Family, Method, ResolvedModel, register

if TYPE_CHECKING:
    from peft import PeftConfig


@dataclass(frozen=True)
class LokrParams(LohaParams):
    decompose_factor: int = -1  # the Kronecker factor's size; -1 = the most square split of each dimension

    def __post_init__(self):
        super().__post_init__()

        require(self.decompose_factor == -1 or self.decompose_factor >= 1, "decompose_factor",
                self.decompose_factor, "must be -1 (automatic) or >= 1")


def build_lokr(knobs: LokrParams, family: Family, model: ResolvedModel) -> PeftConfig:
    from peft import LoKrConfig

    return LoKrConfig(task_type=family.task_type, r=knobs.r, alpha=knobs.alpha, rank_dropout=knobs.rank_dropout,
                      module_dropout=knobs.module_dropout, decompose_factor=knobs.decompose_factor,
                      target_modules=list(knobs.target_modules or family.query_value_layers))


register(Method("lokr", LokrParams, build_lokr, paper="Edalati et al. 2022 (KronA)", refuse=refuse_conv1d("lokr")))
