"""Method prefix_tuning: trained key/value prefixes in every attention layer (peft's PrefixTuningConfig)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.methods.registry import Family, Method, register
from peftqa.params.knobs import PrefixTuningParams

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_prefix_tuning(knobs: PrefixTuningParams, family: Family, model: ResolvedModel) -> PeftConfig:
    """Trained key/value prefixes in every layer, optionally reparametrised through an MLP."""
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=family.task_type, num_virtual_tokens=knobs.num_virtual_tokens,
                              prefix_projection=knobs.prefix_projection,
                              encoder_hidden_size=knobs.projection_hidden_size)


register(Method("prefix_tuning", PrefixTuningParams, build_prefix_tuning, paper="Li & Liang 2021"))
