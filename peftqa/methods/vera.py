"""Method vera: vector-based random matrix adaptation (Kopiczko et al. 2024), peft's VeraConfig. One pair of frozen
random low-rank matrices is shared by every target layer; only a scaling vector per layer on each side trains. The
random pair is drawn from projection_prng_key and saved with the adapter, so a reload needs no seed."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.methods.registry import Family, Method, register
from peftqa.params.knobs import VeraParams

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_vera(knobs: VeraParams, family: Family, model: ResolvedModel) -> PeftConfig:
    from peft import VeraConfig

    return VeraConfig(task_type=family.task_type, r=knobs.r, vera_dropout=knobs.dropout, d_initial=knobs.d_initial,
                      projection_prng_key=knobs.projection_prng_key, save_projection=True,
                      target_modules=list(knobs.target_modules or family.query_value_layers))


register(Method("vera", VeraParams, build_vera, paper="Kopiczko et al. 2024"))
