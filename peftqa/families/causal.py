"""The causal-LM family (GPT-2, Llama): the template followed by " <label>", scored at the prompt's last position;
greedy answers are decoded by hand on right-padded rows."""
from __future__ import annotations

import torch
from peft import PeftType, TaskType
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from peftqa.families.backbone import (
    IGNORE_INDEX,
    MAX_NEW_TOKENS,
    Batch,
    _has_causal_architecture,
    is_encoder_decoder,
    register_family,
)
from peftqa.families.language_model import LanguageModelBackbone
from peftqa.families.tokens import pad_rows, padded_inputs, token_nll


@register_family
class CausalBackbone(LanguageModelBackbone):
    family = "causal"
    auto_class = AutoModelForCausalLM
    task_type = TaskType.CAUSAL_LM
    query_value_layers = ("q_proj", "v_proj")  # Llama's layer names (GPT-2 fuses them: set target_modules c_attn)
    key_value_layers = ("k_proj", "v_proj")
    feedforward_layers = ("down_proj",)
    attention_output_layers = (r"model\.layers\.\d+\.self_attn\.o_proj", r"transformer\.h\.\d+\.attn\.c_proj")
    feedforward_output_layers = (r"model\.layers\.\d+\.mlp\.down_proj", r"transformer\.h\.\d+\.mlp\.c_proj")
    layer_norm_layers = ("input_layernorm", "post_attention_layernorm", "norm")  # Llama's (GPT-2: ln_1, ln_2, ln_f)

    @classmethod
    def claims(cls, config: PretrainedConfig) -> bool:
        """A causal-LM architecture, or a model type that is causal-LM only (BERT-likes register one too)."""
        if is_encoder_decoder(config):
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
            targets = [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answers)]
            batch["target_ids"] = pad_rows(targets, IGNORE_INDEX)
        return self._with_labels(batch, labels)

    def _rows_to_batch(self, rows: list[list[int]], prompt_lengths: list[int]) -> Batch:
        """Padded rows plus "prompt_lengths" (B,): where each prompt ends, i.e. where the answer is predicted."""
        return {**padded_inputs(rows, self.tokenizer.pad_token_id), "prompt_lengths": torch.tensor(prompt_lengths)}

    def _virtual_positions(self) -> int:
        """How many virtual tokens prompt and p-tuning prepend to the sequence the model sees (prefix tuning's sit in
        the key/value cache instead): the shift between a real token's index and its position there."""
        config = getattr(self.model, "active_peft_config", None)
        if config is None or not config.is_prompt_learning or config.peft_type == PeftType.PREFIX_TUNING:
            return 0
        return config.num_virtual_tokens

    def _position_offset(self) -> int:
        """The position id of the first real token: prompt learning's virtual tokens (prepended, or prefix tuning's
        cache) come first."""
        config = getattr(self.model, "active_peft_config", None)
        return config.num_virtual_tokens if config is not None and config.is_prompt_learning else 0

    def _logits_at(self, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
        """(B, K) next-token logits at `positions` (B, K), indices of real tokens: the LM head (vocabulary x hidden)
        runs there alone, through transformers' logits_to_keep, not at every position."""
        keep = positions + self._virtual_positions()
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          logits_to_keep=keep).logits

    def _prompt_end_logits(self, batch: Batch) -> torch.Tensor:
        """(B, V) logits of the token that follows each prompt."""
        return self._logits_at(batch, (batch["prompt_lengths"] - 1)[:, None])[:, 0]

    def _label_logits(self, batch: Batch) -> torch.Tensor:
        return self._verbalize(self._prompt_end_logits(batch))

    def _answer_positions(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) indices of the answer tokens and the tokens there, K the longest answer (the shorter answers'
        extra places hold IGNORE_INDEX)."""
        targets, starts = batch["target_ids"], batch["prompt_lengths"]  # (B, T), (B,): the answer starts there
        width = int((targets != IGNORE_INDEX).sum(dim=1).max())
        index = starts[:, None] + torch.arange(width, device=starts.device)
        inside = index < targets.shape[1]
        index = index.clamp(max=targets.shape[1] - 1)
        return index, torch.where(inside, targets.gather(1, index), IGNORE_INDEX)

    def _example_losses(self, batch: Batch) -> torch.Tensor:
        """The answer tokens' NLL, each predicted from the position before it."""
        index, answer = self._answer_positions(batch)
        return token_nll(self._logits_at(batch, index - 1), answer)

    def _losses_and_label_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: the answer's first token is predicted at the prompt's end, where scoring reads (the
        answer after it cannot change that position's logits)."""
        index, answer = self._answer_positions(batch)
        logits = self._logits_at(batch, index - 1)  # (B, K, V)
        return token_nll(logits, answer), self._verbalize(logits[:, 0])

    @torch.no_grad()
    def _generated_texts(self, batch: Batch) -> list[str]:
        """Greedy decoding on right-padded rows with a key/value cache: the prompt runs once (as scoring runs it),
        then each new token alone. HF generate needs left padding, and peft's prompt learning drops the position ids
        that correct for it, so the steps go to the underlying transformers model, with each row's own positions
        and the padding masked out."""
        lengths = batch["prompt_lengths"]  # (B,)
        keep = (lengths - 1)[:, None] + self._virtual_positions()
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
                         use_cache=True)
        tokens = out.logits[:, 0].argmax(dim=-1)  # (B,)
        answers, cache = [tokens], out.cache
        mask = batch["attention_mask"]
        if self._position_offset():  # the virtual tokens are attended to
            mask = torch.cat([torch.ones(mask.shape[0], self._position_offset(), dtype=mask.dtype,
                                         device=mask.device), mask], dim=1)
        decoder = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        for step in range(MAX_NEW_TOKENS - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = (lengths + self._position_offset() + step)[:, None]
            out = decoder(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions,
                          cache=cache, use_cache=True, logits_to_keep=1)
            tokens, cache = out.logits[:, -1].argmax(dim=-1), out.cache
            answers.append(tokens)
        eos = self.tokenizer.eos_token_id
        texts = []
        for row in torch.stack(answers, dim=1).tolist():
            texts.append(self.tokenizer.decode(row[: row.index(eos)] if eos in row else row, skip_special_tokens=True))
        return texts
