"""Method p_tuning: virtual tokens produced by a small MLP prompt encoder (peft's PromptEncoderConfig)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from peftqa.methods.knobs import VirtualTokenKnobs
from peftqa.methods.registry import Family, Method, ResolvedModel, register

if TYPE_CHECKING:
    from peft import PeftConfig


@dataclass(frozen=True)
class PTuningParams(VirtualTokenKnobs):
    lr: float = 1e-2
    encoder_hidden_size: int = 128
    at_least_one: ClassVar[tuple[str, ...]] = ("num_virtual_tokens", "encoder_hidden_size")


def build_p_tuning(knobs: PTuningParams, family: Family, model: ResolvedModel) -> PeftConfig:
    """Virtual tokens produced by a small MLP prompt encoder (P-tuning)."""
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type=family.task_type, num_virtual_tokens=knobs.num_virtual_tokens,
                               encoder_hidden_size=knobs.encoder_hidden_size)


register(Method("p_tuning", PTuningParams, build_p_tuning, paper="Liu et al. 2021 (P-tuning)"))
