"""Method dora: weight-decomposed low-rank adaptation (Liu et al. 2024), LoRA's update on the direction of each target
weight with a trained magnitude vector (peft's LoraConfig with use_dora)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.methods.registry import Family, Method, register
from peftqa.methods.shared import lora_config, lora_plus_groups
from peftqa.params.knobs import DoraParams

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_dora(knobs: DoraParams, family: Family, model: ResolvedModel) -> PeftConfig:
    return lora_config(knobs, family, use_dora=True)


register(Method("dora", DoraParams, build_dora, paper="Liu et al. 2024", optimizer_groups=lora_plus_groups,
                note="dora: base weights frozen; LoRA's low-rank direction update and a magnitude per output (and, "
                     "for the encoder, the head, started from the probe) trained"))
