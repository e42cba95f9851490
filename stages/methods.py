"""The registry of PEFT methods: one name, one builder of a `peft` config (STYLE.md principle 3).

The names are `stages.params.METHODS`: the params key, the dvc.yaml foreach item, the models/<name>/ folder.
A builder turns the method's section of `PeftParams` into the peft config for one backbone family, or None
for the two methods that are not adapters: `base` (a frozen backbone: linear probe or zero-shot) and
`full_finetune` (every weight trained). Checks that need the loaded model (target modules) live here too,
so an impossible combination is a PeftqaError that names the params key before any training starts.
"""
from __future__ import annotations

from typing import Callable

import torch
from peft import (IA3Config, LoraConfig, PeftConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig,
                  PromptTuningInit, TaskType)

from stages.common import PeftqaError
from stages.params import METHODS, PeftParams

# the encoder gets our own classification head on top, so peft only has to return hidden states
TASK_TYPES = {"encoder": TaskType.FEATURE_EXTRACTION, "seq2seq": TaskType.SEQ_2_SEQ_LM, "causal": TaskType.CAUSAL_LM}

Builder = Callable[[PeftParams, str, str], PeftConfig | None]  # (peft params, family, model path) -> config


def build_no_adapter(params: PeftParams, family: str, model_path: str) -> None:
    """base and full_finetune train no adapter: the backbone is either frozen or trained whole."""
    return None


def build_prompt_tuning(params: PeftParams, family: str, model_path: str) -> PromptTuningConfig:
    """Soft prompt; text init copies the embeddings of init_text, so peft needs the tokenizer's path."""
    knobs = params.prompt_tuning
    from_text = knobs.init == "text"
    return PromptTuningConfig(
        task_type=TASK_TYPES[family],
        num_virtual_tokens=knobs.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if from_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=knobs.init_text if from_text else None,
        tokenizer_name_or_path=model_path if from_text else None,
    )


def build_prefix_tuning(params: PeftParams, family: str, model_path: str) -> PrefixTuningConfig:
    """Trained key/value prefixes in every layer, optionally reparametrised through an MLP."""
    knobs = params.prefix_tuning
    return PrefixTuningConfig(
        task_type=TASK_TYPES[family],
        num_virtual_tokens=knobs.num_virtual_tokens,
        prefix_projection=knobs.prefix_projection,
        encoder_hidden_size=knobs.projection_hidden_size,
    )


def build_p_tuning(params: PeftParams, family: str, model_path: str) -> PromptEncoderConfig:
    """Virtual tokens produced by a small MLP prompt encoder (P-tuning)."""
    knobs = params.p_tuning
    return PromptEncoderConfig(
        task_type=TASK_TYPES[family],
        num_virtual_tokens=knobs.num_virtual_tokens,
        encoder_hidden_size=knobs.encoder_hidden_size,
    )


def build_lora(params: PeftParams, family: str, model_path: str) -> LoraConfig:
    """Low-rank updates on the family's target layers (their names differ between BERT, T5 and Llama)."""
    knobs = params.lora
    return LoraConfig(
        task_type=TASK_TYPES[family],
        r=knobs.r,
        lora_alpha=knobs.alpha,
        lora_dropout=knobs.dropout,
        target_modules=list(getattr(knobs.target_modules, family)),
    )


def build_ia3(params: PeftParams, family: str, model_path: str) -> IA3Config:
    """Learned rescaling vectors; feed-forward modules are scaled on their input, the others on their output."""
    knobs = params.ia3
    return IA3Config(
        task_type=TASK_TYPES[family],
        target_modules=list(getattr(knobs.target_modules, family)),
        feedforward_modules=list(getattr(knobs.feedforward_modules, family)),
    )


METHOD_BUILDERS: dict[str, Builder] = {
    "base": build_no_adapter,
    "prompt_tuning": build_prompt_tuning,
    "prefix_tuning": build_prefix_tuning,
    "p_tuning": build_p_tuning,
    "lora": build_lora,
    "ia3": build_ia3,
    "full_finetune": build_no_adapter,
}


def build_peft_config(method: str, peft_params: PeftParams, family: str, model_path: str, *,
                      gradient_checkpointing: bool = False) -> PeftConfig | None:
    """The peft config for `method` on `family`, after the checks peft itself would only fail late or obscurely."""
    if method not in METHOD_BUILDERS:
        raise PeftqaError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if method == "prefix_tuning" and gradient_checkpointing:
        raise PeftqaError("train.gradient_checkpointing: true cannot be combined with prefix_tuning: peft passes the "
                          "prefix as a key/value cache, which gradient checkpointing disables. Set "
                          "train.gradient_checkpointing: false or drop prefix_tuning from methods.")
    return METHOD_BUILDERS[method](peft_params, family, model_path)


def check_target_modules(peft_config: PeftConfig | None, model: torch.nn.Module, *, method: str, family: str,
                         model_name: str) -> None:
    """Fail on a target module the model lacks; peft only fails when *none* match, silently skipping the rest."""
    targets = getattr(peft_config, "target_modules", None) or ()
    module_names = [name for name, _ in model.named_modules()]
    for target in sorted(targets):
        if not any(name == target or name.endswith(f".{target}") for name in module_names):
            leaves = {name.rsplit(".", 1)[-1] for name in module_names}
            examples = sorted(leaf for leaf in leaves if leaf and not leaf.isdigit())[:12]  # indices say nothing
            raise PeftqaError(f"peft.{method}.target_modules.{family}: module '{target}' does not exist in model "
                              f"'{model_name}'. Fix that params key; this model's layer names include {examples}.")
