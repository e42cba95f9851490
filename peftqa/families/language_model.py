"""What the two language-model families (seq2seq, causal) share: the instruction template in, the label word out.

A prompt is model.template (chat-wrapped when the tokenizer has a chat template and model.chat_template is auto);
only the context is cut when it is too long (model.truncation). A label is scored by the verbalizer, each label's
words pooled at the answer's first token; greedy answers are mapped back to a label.
"""
from __future__ import annotations

import torch

from peftqa.errors import PeftqaError, log
from peftqa.families.backbone import Backbone, Batch
from peftqa.families.tokens import answer_to_label, kept_positions, verbalizer_token_ids
from peftqa.params import ModelParams


def label_words(label: str, mode: str) -> list[str]:
    """The words that say `label`, the training target first: exact = the label as written; cased = Capitalised
    (how an assistant starts its answer), as written and UPPER, pooled by the verbalizer."""
    forms = [label] if mode == "exact" else [label.capitalize(), label, label.upper()]
    return list(dict.fromkeys(forms))


class LanguageModelBackbone(Backbone):
    """What seq2seq and causal share: the template, context-only truncation, the verbalizer and greedy answers."""

    def _configure(self, model_params: ModelParams) -> None:
        self.template = model_params.template
        self.truncation = model_params.truncation
        self.demonstrations = ""  # plain prompts: solved examples before the template (set_demonstrations)
        self.n_examples = 0
        self.chat = self._chat_parts(model_params.chat_template)  # (text before, text after) the user message, or None
        mode = model_params.label_words
        if mode == "auto":
            mode = "cased" if self.chat else "exact"
        self.label_words = {label: label_words(label, mode) for label in self.labels}
        # the target tokens (the first word, EOS included), and each label's first token: no two labels share one
        self.answer_ids = {label: self._answer_ids(words[0]) for label, words in self.label_words.items()}
        self.verbalizer_ids = verbalizer_token_ids(self.answer_ids)
        self.verbalizer_groups = self._verbalizer_groups()  # per label, the first tokens of all its words

    def _chat_parts(self, chat_template: str) -> tuple[str, str] | None:
        """With model.chat_template auto and a tokenizer that has one: the chat text around the user's message,
        ending with the assistant's turn (where the answer starts)."""
        if chat_template == "none":
            return None
        if not getattr(self.tokenizer, "chat_template", None):
            log.warning("model.chat_template: auto, but %s has no chat template: using the plain model.template",
                        self.model_name)
            return None
        log.info("model.chat_template: auto: the prompt is wrapped in %s's chat template", self.model_name)
        return self._around_message([])

    def _around_message(self, turns: list[dict[str, str]]) -> tuple[str, str]:
        """The chat text before and after the user's last message, `turns` (earlier messages) before it."""
        marker = "\x00peftqa-message\x00"
        text = self.tokenizer.apply_chat_template([*turns, {"role": "user", "content": marker}],
                                                  add_generation_prompt=True, tokenize=False)
        before, found, after = text.partition(marker)
        if not found:
            raise PeftqaError(f"the chat template of {self.model_name} drops the user's message; set "
                              "model.chat_template: none")
        return before, after

    def _template_text(self, question: str, context: str) -> str:
        before, after = (part.replace("{question}", question) for part in self.template.split("{context}"))
        return before + context + after

    def set_demonstrations(self, examples: list[tuple[str, str, str]]) -> None:
        """Put solved examples (question, context, label) before every prompt, each in the template with its whole
        context and answered by its label's target word (label_words' first): earlier chat turns, user then
        assistant, under a chat template; else "<filled template> <word>" paragraphs. Only the item's own context is
        ever cut (model.truncation), never an example's."""
        self.n_examples = len(examples)
        if not self.chat:
            self.demonstrations = "".join(f"{self._template_text(q, c)} {self.label_words[label][0]}\n\n"
                                          for q, c, label in examples)
            return
        turns = [turn for q, c, label in examples
                 for turn in ({"role": "user", "content": self._template_text(q, c)},
                              {"role": "assistant", "content": self.label_words[label][0]})]
        self.chat = self._around_message(turns)

    def _filled(self, question: str, context: str) -> tuple[str, str, str]:
        """The prompt as (text before the context, the context, text after it), chat-wrapped if configured."""
        before, after = (part.replace("{question}", question) for part in self.template.split("{context}"))
        if self.chat:
            before, after = self.chat[0] + before, after + self.chat[1]
        return self.demonstrations + before, context, after

    def _tokenize(self, text: str, **kwargs) -> dict:
        """Chat text carries its own special tokens; a plain prompt gets the tokenizer's."""
        return self.tokenizer(text, add_special_tokens=not self.chat, **kwargs)

    def _answer_ids(self, word: str) -> list[int]:
        raise NotImplementedError

    def _verbalizer_groups(self) -> list[list[int]]:
        """Per label, the distinct first tokens of its words; a token that starts another label's words is left out
        (the targets' first tokens are distinct, verbalizer_token_ids checks)."""
        firsts = {label: list(dict.fromkeys(self._answer_ids(word)[0] for word in words))
                  for label, words in self.label_words.items()}
        return [[t for t in ids if not any(t in firsts[other] for other in firsts if other != label)]
                for label, ids in firsts.items()]

    def _verbalize(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) next-token logits -> (B, n_labels): each label's words pooled (log of their summed probability;
        one word per label gives its logit exactly)."""
        return torch.stack([logits[:, ids].logsumexp(dim=-1) for ids in self.verbalizer_groups], dim=-1)

    def _prompt_budget(self) -> int:
        """Tokens the prompt may take."""
        return self.max_length

    def _prompt_ids(self, question: str, context: str) -> list[int]:
        """The filled template as ids (special tokens included); if too long, context tokens are cut
        (model.truncation)."""
        before, context, after = self._filled(question, context)
        start, end = len(before), len(before) + len(context)  # the context's character span
        encoded = self._tokenize(before + context + after, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        excess = len(ids) - self._prompt_budget()
        if excess <= 0:
            return ids
        # tokens wholly inside the context; special tokens have empty spans, tokens straddling the edge are kept
        inside = [i for i, (s, e) in enumerate(encoded["offset_mapping"]) if start <= s < e <= end]
        if len(inside) < excess:
            setting, parts = (("references.few_shot_max_length", f"the {self.n_examples} examples, the instruction and "
                               "question") if self.n_examples else ("model.max_length", "the instruction and question"))
            raise PeftqaError(f"{setting} = {self.max_length} is too short: {parts} alone take "
                              f"{len(ids) - len(inside)} tokens of the {self._prompt_budget()} a prompt may use. "
                              f"Raise {setting} or shorten model.template.")
        dropped = set(inside) - {inside[i] for i in kept_positions(len(inside), len(inside) - excess, self.truncation)}
        return [token for i, token in enumerate(ids) if i not in dropped]

    def _generated_texts(self, batch: Batch) -> list[str]:
        raise NotImplementedError

    def generate(self, batch: Batch) -> list[str | None]:
        """Greedy answers of at most MAX_NEW_TOKENS tokens, mapped to a label, or None when they are no label."""
        return [answer_to_label(text, self.labels) for text in self._generated_texts(batch)]
