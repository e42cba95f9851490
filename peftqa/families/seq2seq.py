"""The seq2seq family (T5): the template on the encoder side, the label word as the decoder target, scored at the
decoder's first step."""
from __future__ import annotations

import torch
from peft import TaskType
from transformers import AutoModelForSeq2SeqLM, PretrainedConfig

from peftqa.families.backbone import IGNORE_INDEX, MAX_NEW_TOKENS, Batch, is_encoder_decoder, register_family
from peftqa.families.language_model import LanguageModelBackbone
from peftqa.families.tokens import pad_rows, padded_inputs, token_nll


@register_family
class Seq2SeqBackbone(LanguageModelBackbone):
    family = "seq2seq"
    auto_class = AutoModelForSeq2SeqLM
    task_type = TaskType.SEQ_2_SEQ_LM
    query_value_layers = ("q", "v")  # T5's layer names
    key_value_layers = ("k", "v")
    feedforward_layers = ("wo",)
    attention_output_layers = (r"(encoder|decoder)\.block\.\d+\.layer\.0\.SelfAttention\.o",)  # self-attention
    feedforward_output_layers = (r"(encoder|decoder)\.block\.\d+\.layer\.\d+\.DenseReluDense\.wo",)
    layer_norm_layers = ("layer_norm", "final_layer_norm")

    @classmethod
    def claims(cls, config: PretrainedConfig) -> bool:
        return is_encoder_decoder(config)

    def _answer_ids(self, word: str) -> list[int]:
        return self.tokenizer(word, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def encode(self, questions: list[str], contexts: list[str], labels: list[str] | None = None) -> Batch:
        """Prompts right-padded for the encoder; with labels, "target_ids" (B, L) for the decoder."""
        prompts = [self._prompt_ids(q, c) for q, c in zip(questions, contexts, strict=True)]
        batch = padded_inputs(prompts, self.tokenizer.pad_token_id)
        if labels is not None:
            batch["target_ids"] = pad_rows([self.answer_ids[label] for label in labels], IGNORE_INDEX)
        return self._with_labels(batch, labels)

    def _label_logits(self, batch: Batch) -> torch.Tensor:
        """Logits of each label's first token at the first decoder step."""
        start = torch.full((batch["input_ids"].shape[0], 1), self.model.config.decoder_start_token_id,
                           device=self.device)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            decoder_input_ids=start).logits  # (B, 1, V)
        return self._verbalize(logits[:, 0])

    def _example_losses(self, batch: Batch) -> torch.Tensor:
        targets = batch["target_ids"]  # (B, L)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            decoder_input_ids=self.model.prepare_decoder_input_ids_from_labels(labels=targets)).logits
        return token_nll(logits, targets)

    def _generated_texts(self, batch: Batch) -> list[str]:
        output = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                     pad_token_id=self.tokenizer.pad_token_id)  # (B, <= 1 + MAX_NEW_TOKENS) decoder ids
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)
