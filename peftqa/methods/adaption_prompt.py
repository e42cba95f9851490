"""Method adaption_prompt: LLaMA-Adapter (Zhang et al. 2023), peft's AdaptionPromptConfig. Learned prompts of
adapter_len tokens join the attention of the top adapter_layers layers through a gate that starts at zero. peft
writes it for three causal architectures only (llama, mistral, gpt2), so any other model is refused by name."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.errors import PeftqaError
from peftqa.methods.registry import Family, Method, register
from peftqa.params.knobs import AdaptionPromptParams

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_adaption_prompt(knobs: AdaptionPromptParams, family: Family, model: ResolvedModel) -> PeftConfig:
    from peft import AdaptionPromptConfig

    return AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=knobs.adapter_len,
                                adapter_layers=knobs.adapter_layers)


def refuse(model: torch.nn.Module, knobs: AdaptionPromptParams, family: Family) -> None:
    from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if family.task_type != "CAUSAL_LM" or model_type not in TRANSFORMERS_MODEL_CONFIG:
        raise PeftqaError(f"adaption_prompt cannot serve this {family.family} model ({model_type}): peft's "
                          f"LLaMA-Adapter is written for the causal architectures {sorted(TRANSFORMERS_MODEL_CONFIG)} "
                          "only; drop adaption_prompt from methods for this model")
    layers = model.config.num_hidden_layers  # GPT-2's config maps it to n_layer
    if knobs.adapter_layers > layers:
        raise PeftqaError(f"params: peft.adaption_prompt.adapter_layers is {knobs.adapter_layers} but this model has "
                          f"{layers} layers; set it to at most {layers}")


register(Method("adaption_prompt", AdaptionPromptParams, build_adaption_prompt,
                paper="Zhang et al. 2023 (LLaMA-Adapter)",
                refuse=refuse,
                note="adaption_prompt: base weights frozen; learned prompts and their zero-started gates in the top "
                     "adapter_layers attention layers trained"))
