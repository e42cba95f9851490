"""The encoder family (BERT-like): the (question, context) pair in, pooled hidden states, our own linear head out.

Every method gets the same encoding; the head is always trained (base: the linear probe), saved beside the adapter
as head.safetensors, and the probe reads the encoder's features without its adapter (`frozen_encoder`).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from peft import PeftModel, TaskType
from safetensors.torch import load_file, save_file
from transformers import AutoModel, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from peftqa.errors import PeftqaError, reading
from peftqa.families.backbone import (
    HEAD_FILE,
    Backbone,
    Batch,
    _has_causal_architecture,
    is_encoder_decoder,
    register_family,
    restore_fix,
)
from peftqa.families.tokens import kept_positions
from peftqa.files import atomic_path
from peftqa.params import ModelParams
from peftqa.params.traits import traits


@register_family
class EncoderBackbone(Backbone):
    family = "encoder"
    auto_class = AutoModel
    task_type = TaskType.FEATURE_EXTRACTION  # our own head sits on top, so peft returns hidden states
    query_value_layers = ("query", "value")  # BERT's layer names
    key_value_layers = ("key", "value")
    feedforward_layers = ("output.dense",)
    attention_output_layers = (r"encoder\.layer\.\d+\.attention\.output\.dense",)
    feedforward_output_layers = (r"encoder\.layer\.\d+\.output\.dense",)
    layer_norm_layers = ("LayerNorm",)  # BERT's; peft has no default for BERT
    generates = traits("encoder").generates  # False: it classifies pooled features

    @classmethod
    def claims(cls, config: PretrainedConfig) -> bool:
        """A masked-LM model type, neither encoder-decoder (BART) nor saved as a causal LM (RobertaForCausalLM)."""
        return (config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not is_encoder_decoder(config)
                and not _has_causal_architecture(config))

    def _configure(self, model_params: ModelParams) -> None:
        self.pooling = model_params.pooling
        self.truncation = model_params.truncation
        self.head = torch.nn.Linear(self.model.config.hidden_size, len(self.labels))  # always trained (base: probe)

    def _parts(self) -> list[torch.nn.Module]:
        return [self.model, self.head]

    def _output_heads(self) -> list[torch.nn.Module]:
        return [self.head]

    def head_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]

    def _truncate_context(self, question: str, context: str) -> str:
        """The context cut to the tokens that fit beside the question (model.truncation picks which), as text."""
        budget = (self.max_length - len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
                  - self.tokenizer.num_special_tokens_to_add(pair=True))
        spans = self.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True,
                               verbose=False)["offset_mapping"]  # no "longer than the model" warning: it is cut here
        if len(spans) <= budget:
            return context
        if budget < 1:
            return ""  # the question alone fills max_length: the tokenizer call below says so
        keep = kept_positions(len(spans), budget, self.truncation)
        runs, run = [], [keep[0]]  # contiguous runs of kept tokens -> character spans
        for i in keep[1:]:
            if i == run[-1] + 1:
                run.append(i)
            else:
                runs.append(run)
                run = [i]
        runs.append(run)
        return " ".join(context[spans[r[0]][0]: spans[r[-1]][1]] for r in runs)

    def encode(self, questions: list[str], contexts: list[str], labels: list[str] | None = None) -> Batch:
        """Tokenised (question, context) pairs; truncation cuts only the context (model.truncation says which part)."""
        contexts = [self._truncate_context(q, c) for q, c in zip(questions, contexts, strict=True)]
        try:  # the tokenizer's own truncation is a safety net: re-tokenised joins can gain a token
            encoded = self.tokenizer(list(questions), contexts, truncation="only_second",
                                     max_length=self.max_length, padding=True, return_tensors="pt")
        except Exception as err:  # tokenizers: a bare `Exception: Truncation error` when a question fills max_length
            if "truncation" not in str(err).lower():
                raise
            longest = max(len(self.tokenizer(q)["input_ids"]) for q in questions)
            raise PeftqaError(f"model.max_length = {self.max_length} is too short: a question alone takes {longest} "
                              "tokens and questions are never truncated. Raise model.max_length.") from None
        # no token_type_ids for any method: peft's prompt learning drops them for feature extraction (forced, with a
        # warning per call), so every method gets the same encoding, segment 0 throughout, as the probe does
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        return self._with_labels(batch, labels)

    @torch.no_grad()
    def features(self, batch: Batch) -> torch.Tensor:
        """(B, H) pooled hidden states: what the head reads, and what the probe is fitted on."""
        return self._pooled(batch)

    @contextlib.contextmanager
    def frozen_encoder(self) -> Iterator[None]:
        """Within it, the encoder runs without its adapter (the probe's features). A soft prompt or prefix lives
        outside the base model, so that is used alone; peft switches LoRA-like layers off (for prompt learning its
        disable_adapter needs a generation method a feature extractor lacks). A PiSSA start has replaced each target
        weight by its residual, which the switched-off adapter would leave alone; residual plus adapter is the frozen
        weight until training moves it, so the probe (fitted before training) reads the encoder as it is."""
        model = self.model
        if not isinstance(model, PeftModel) or getattr(model.active_peft_config, "init_lora_weights", None) == "pissa":
            yield
        elif model.active_peft_config.is_prompt_learning:
            self.model = model.get_base_model()
            try:
                yield
            finally:
                self.model = model
        else:
            with model.disable_adapter():
                yield

    def _pooled(self, batch: Batch) -> torch.Tensor:
        """(B, H) pooled over the real tokens: prompt/p-tuning prepend virtual tokens, so keep the last T positions."""
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        hidden = hidden[:, -batch["input_ids"].shape[1]:]  # (B, T, H)
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def _label_logits(self, batch: Batch) -> torch.Tensor:
        return self.head(self._pooled(batch).to(self.head.weight.dtype))

    def _example_losses(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self._label_logits(batch).float(), batch["label_ids"], reduction="none")

    def _save_weights(self, folder: Path) -> None:
        super()._save_weights(folder)
        with atomic_path(folder / HEAD_FILE) as tmp:
            save_file(self.head.state_dict(), str(tmp))

    def _load_weights(self, folder: Path) -> None:
        with reading(folder / HEAD_FILE, restore_fix(folder, self.method)):
            self.head.load_state_dict(load_file(str(folder / HEAD_FILE), device=str(self.device)))
