"""Method prompt_tuning: a trained soft prompt of virtual tokens in front of the input (peft's PromptTuningConfig)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.methods.registry import Family, Method, register
from peftqa.params.knobs import PromptTuningParams

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_prompt_tuning(knobs: PromptTuningParams, family: Family, model: ResolvedModel) -> PeftConfig:
    """Soft prompt; text init copies the embeddings of init_text, so peft loads the tokenizer (a GGUF one with its
    gguf_file=)."""
    from peft import PromptTuningConfig, PromptTuningInit

    from_text = knobs.init == "text"
    path, kwargs = model
    init = {"random": PromptTuningInit.RANDOM, "text": PromptTuningInit.TEXT,
            "sample_vocab": PromptTuningInit.SAMPLE_VOCAB}[knobs.init]
    return PromptTuningConfig(
        task_type=family.task_type,
        num_virtual_tokens=knobs.num_virtual_tokens,
        prompt_tuning_init=init,
        prompt_tuning_init_text=knobs.init_text if from_text else None,
        tokenizer_name_or_path=path if from_text else None,
        tokenizer_kwargs=(kwargs or None) if from_text else None,
    )


register(Method("prompt_tuning", PromptTuningParams, build_prompt_tuning, paper="Lester et al. 2021"))
