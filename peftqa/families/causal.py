"""The causal-LM family (GPT-2, Llama): the template followed by " <label>", scored at the prompt's last position;
greedy answers are decoded by hand on right-padded rows."""
from __future__ import annotations

import torch
from peft import TaskType
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from peftqa.families.base import (
    IGNORE_INDEX,
    MAX_NEW_TOKENS,
    Batch,
    _has_causal_architecture,
    _is_encoder_decoder,
    register_family,
)
from peftqa.families.language_model import LanguageModelBackbone
from peftqa.families.tokens import _pad, _padded_inputs, _token_nll


@register_family
class CausalBackbone(LanguageModelBackbone):
    family = "causal"
    auto_class = AutoModelForCausalLM
    task_type = TaskType.CAUSAL_LM
    query_value_layers = ("q_proj", "v_proj")  # Llama's layer names (GPT-2 fuses them: set target_modules c_attn)
    key_value_layers = ("k_proj", "v_proj")
    feedforward_layers = ("down_proj",)

    @classmethod
    def claims(cls, config: PretrainedConfig) -> bool:
        """A causal-LM architecture, or a model type that is causal-LM only (BERT-likes register one too)."""
        if _is_encoder_decoder(config):
            return False
        return _has_causal_architecture(config) or (config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                                                    and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    def _answer_ids(self, word: str) -> list[int]:
        """ " <word>" as tokenised right after the instruction (SentencePiece and BPE treat the space differently);
        with a chat template, "<word>" right after the assistant's turn begins."""
        instruction = "".join(self._filled("", ""))
        answer = word if self.chat else " " + word
        head = self.tokenizer(instruction, add_special_tokens=False)["input_ids"]
        whole = self.tokenizer(instruction + answer, add_special_tokens=False)["input_ids"]
        answer = whole[len(head):] if whole[: len(head)] == head else self.tokenizer(
            answer, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return answer + ([eos] if eos is not None else [])

    def _prompt_budget(self) -> int:
        """The answer is appended to the prompt, so leave room for the longest one."""
        return self.max_length - max(len(ids) for ids in self.answer_ids.values())

    def encode(self, questions: list[str], contexts: list[str], labels: list[str] | None = None) -> Batch:
        """Prompt (+ answer) rows; with labels, "target_ids" (B, T) holds the answer tokens, IGNORE_INDEX elsewhere."""
        prompts = [self._prompt_ids(q, c) for q, c in zip(questions, contexts, strict=True)]
        answers = [self.answer_ids[label] for label in labels] if labels is not None else [[] for _ in prompts]
        batch = self._rows_to_batch([p + a for p, a in zip(prompts, answers)], [len(p) for p in prompts])
        if labels is not None:
            batch["target_ids"] = _pad([[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answers)], IGNORE_INDEX)
        return self._with_labels(batch, labels)

    def _rows_to_batch(self, rows: list[list[int]], prompt_lengths: list[int]) -> Batch:
        """Padded rows plus "prompt_lengths" (B,): where each prompt ends, i.e. where the answer is predicted."""
        return {**_padded_inputs(rows, self.tokenizer.pad_token_id), "prompt_lengths": torch.tensor(prompt_lengths)}

    def _logits(self, batch: Batch) -> torch.Tensor:
        """(B, T, V) next-token logits of the real positions (prompt/p-tuning prepend virtual ones)."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, -batch["input_ids"].shape[1]:]

    def _prompt_end_logits(self, batch: Batch) -> torch.Tensor:
        """(B, V) logits of the token that follows each prompt."""
        last = batch["prompt_lengths"] - 1  # (B,)
        return self._logits(batch)[torch.arange(last.shape[0], device=last.device), last]

    def _label_logits(self, batch: Batch) -> torch.Tensor:
        return self._verbalize(self._prompt_end_logits(batch))

    def _example_losses(self, batch: Batch) -> torch.Tensor:
        return _token_nll(self._logits(batch)[:, :-1], batch["target_ids"][:, 1:])

    @torch.no_grad()
    def _generated_texts(self, batch: Batch) -> list[str]:
        """Greedy decoding by hand on right-padded rows: HF generate needs left padding, and peft's prompt learning
        drops the position ids that correct for it (GPT-2's absolute positions would shift with the padding)."""
        lengths = batch["prompt_lengths"].tolist()
        rows = [row[:n].tolist() for row, n in zip(batch["input_ids"].cpu(), lengths)]
        for _ in range(MAX_NEW_TOKENS):
            step = {k: v.to(self.device) for k, v in self._rows_to_batch(rows, [len(r) for r in rows]).items()}
            for row, token in zip(rows, self._prompt_end_logits(step).argmax(dim=-1).tolist()):
                row.append(token)
        answers = [row[n:] for row, n in zip(rows, lengths)]
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer.decode(a[: a.index(eos)] if eos in a else a, skip_special_tokens=True) for a in answers]
