"""Method lora: low-rank updates on the target layers (peft's LoraConfig)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.methods.registry import Family, Method, register
from peftqa.methods.shared import lora_config, lora_plus_groups
from peftqa.params.knobs import LoraParams

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_lora(knobs: LoraParams, family: Family, model: ResolvedModel) -> PeftConfig:
    """Low-rank updates on the target layers (the family's query and value projections unless params name others)."""
    return lora_config(knobs, family)


register(Method("lora", LoraParams, build_lora, paper="Hu et al. 2021", optimizer_groups=lora_plus_groups))
