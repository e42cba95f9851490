"""Method lokr: Kronecker-product updates (Edalati et al. 2022, KronA; LyCORIS's LoKr), peft's LoKrConfig. Like
LoHa, it cannot wrap GPT-2's Conv1D layers, which are refused by name."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.methods.registry import Family, Method, register
from peftqa.methods.shared import refuse_conv1d
from peftqa.params.knobs import LokrParams

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_lokr(knobs: LokrParams, family: Family, model: ResolvedModel) -> PeftConfig:
    from peft import LoKrConfig

    return LoKrConfig(task_type=family.task_type, r=knobs.r, alpha=knobs.alpha, rank_dropout=knobs.rank_dropout,
                      module_dropout=knobs.module_dropout, decompose_factor=knobs.decompose_factor,
                      target_modules=list(knobs.target_modules or family.query_value_layers))


register(Method("lokr", LokrParams, build_lokr, paper="Edalati et al. 2022 (KronA)", refuse=refuse_conv1d("lokr")))
