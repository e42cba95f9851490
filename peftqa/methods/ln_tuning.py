"""Method ln_tuning: only the layer norms train (Zhao et al. 2024, "Tuning LayerNorm in Attention"), peft's
LNTuningConfig. peft knows no layer-norm names for BERT (its are `LayerNorm`), so each family names its own."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.methods.registry import Family, Method, register
from peftqa.params.knobs import LnTuningParams

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_ln_tuning(knobs: LnTuningParams, family: Family, model: ResolvedModel) -> PeftConfig:
    from peft import LNTuningConfig

    return LNTuningConfig(task_type=family.task_type,
                          target_modules=list(knobs.target_modules or family.layer_norm_layers))


register(Method("ln_tuning", LnTuningParams, build_ln_tuning, paper="Zhao et al. 2024",
                note="ln_tuning: base weights frozen; a trained copy of each layer norm (and, for the encoder, the "
                     "head, started from the probe)"))
