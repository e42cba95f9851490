"""Method dora: weight-decomposed low-rank adaptation (Liu et al. 2024), LoRA's update on the direction of each target
weight with a trained magnitude vector (peft's LoraConfig with use_dora)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peftqa.methods.lora import LoraParams, build_lora, lora_plus_groups
from peftqa.methods.registry import Family, Method, ResolvedModel, register

if TYPE_CHECKING:
    from peft import PeftConfig


@dataclass(frozen=True)
class DoraParams(LoraParams):
    lr: float = 5e-4


def build_dora(knobs: DoraParams, family: Family, model: ResolvedModel) -> PeftConfig:
    config = build_lora(knobs, family, model)
    config.use_dora = True
    return config


register(Method("dora", DoraParams, build_dora, paper="Liu et al. 2024", optimizer_groups=lora_plus_groups,
                note="dora: base weights frozen; LoRA's low-rank direction update and a magnitude per output (and, "
                     "for the encoder, the head, started from the probe) trained"))
