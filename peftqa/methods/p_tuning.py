"""Method p_tuning: virtual tokens produced by a small MLP prompt encoder (peft's PromptEncoderConfig)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.methods.registry import Family, Method, register
from peftqa.params.knobs import PTuningParams

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_p_tuning(knobs: PTuningParams, family: Family, model: ResolvedModel) -> PeftConfig:
    """Virtual tokens produced by a small MLP prompt encoder (P-tuning)."""
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type=family.task_type, num_virtual_tokens=knobs.num_virtual_tokens,
                               encoder_hidden_size=knobs.encoder_hidden_size)


register(Method("p_tuning", PTuningParams, build_p_tuning, paper="Liu et al. 2021 (P-tuning)"))
