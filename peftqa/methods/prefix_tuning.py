"""Method prefix_tuning: trained key/value prefixes in every attention layer (peft's PrefixTuningConfig)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from peftqa.methods.knobs import VirtualTokenKnobs
from peftqa.methods.registry import Family, Method, ResolvedModel, register

if TYPE_CHECKING:
    from peft import PeftConfig


@dataclass(frozen=True)
class PrefixTuningParams(VirtualTokenKnobs):
    lr: float = 1e-2
    prefix_projection: bool = False
    projection_hidden_size: int = 512
    at_least_one: ClassVar[tuple[str, ...]] = ("num_virtual_tokens", "projection_hidden_size")


def build_prefix_tuning(knobs: PrefixTuningParams, family: Family, model: ResolvedModel) -> PeftConfig:
    """Trained key/value prefixes in every layer, optionally reparametrised through an MLP."""
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=family.task_type, num_virtual_tokens=knobs.num_virtual_tokens,
                              prefix_projection=knobs.prefix_projection,
                              encoder_hidden_size=knobs.projection_hidden_size)


register(Method("prefix_tuning", PrefixTuningParams, build_prefix_tuning, paper="Li & Liang 2021",
                gradient_checkpointing=False))  # peft passes the prefix as a key/value cache, which checkpointing drops
