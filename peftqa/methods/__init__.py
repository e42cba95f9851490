"""The PEFT methods: one registry entry per method, holding its knobs and its builder; one module per method.

registry holds Method, Native, REGISTRY/METHODS, register, get and the checks; knobs the knobs' shared bases; base,
prompt_tuning, prefix_tuning, p_tuning, lora, dora, loha, lokr, vera, ia3, ln_tuning, adaption_prompt,
bottleneck, bitfit and full_finetune each hold one method's
knobs dataclass, its builder (and a native method's own attach, save and load, or its optimizer groups) and its
register() call. Importing a method module registers it, so the import order below is METHODS' order.
peft is imported when a config is built, not here, so that params (which every stage loads) stays light.
"""
# isort: off
from peftqa.methods.base import BaseMethodParams, build_no_adapter
from peftqa.methods.prompt_tuning import PromptTuningParams, build_prompt_tuning
from peftqa.methods.prefix_tuning import PrefixTuningParams, build_prefix_tuning
from peftqa.methods.p_tuning import PTuningParams, build_p_tuning
from peftqa.methods.lora import LoraParams, build_lora
from peftqa.methods.dora import DoraParams
from peftqa.methods.loha import LohaParams
from peftqa.methods.lokr import LokrParams
from peftqa.methods.vera import VeraParams
from peftqa.methods.ia3 import Ia3Params, build_ia3
from peftqa.methods.ln_tuning import LnTuningParams
from peftqa.methods.adaption_prompt import AdaptionPromptParams
from peftqa.methods.bottleneck import BottleneckParams
from peftqa.methods.bitfit import BitfitParams
from peftqa.methods.full_finetune import FullFinetuneParams
# isort: on
from peftqa.methods.knobs import TrainedKnobs, VirtualTokenKnobs
from peftqa.methods.registry import (
    METHODS,
    REGISTRY,
    Builder,
    Family,
    Method,
    Native,
    ResolvedModel,
    build_peft_config,
    check_gradient_checkpointing,
    check_target_modules,
    get,
    register,
)

__all__ = [
    "AdaptionPromptParams", "BaseMethodParams", "BitfitParams", "BottleneckParams", "Builder", "DoraParams", "Family",
    "FullFinetuneParams", "Ia3Params", "LnTuningParams", "LohaParams", "LokrParams", "LoraParams", "METHODS",
    "Method", "Native", "PTuningParams", "PrefixTuningParams", "PromptTuningParams", "REGISTRY", "ResolvedModel",
    "TrainedKnobs", "VeraParams", "VirtualTokenKnobs", "build_ia3", "build_lora", "build_no_adapter",
    "build_p_tuning", "build_peft_config", "build_prefix_tuning", "build_prompt_tuning",
    "check_gradient_checkpointing", "check_target_modules", "get", "register",
]
