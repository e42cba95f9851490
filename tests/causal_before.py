"""The causal family's scoring, loss and greedy answers as they were before the LM head ran only where it is read
and greedy decoding kept a key/value cache: the head at every position, (B, T, V), and the whole sequence re-run
for each new token.

A test oracle, not library code: tests/test_causal_paths.py compares today's code against it (`with
computed_as_before(backbone): ...`). Its rates, timed in one run beside the code of that day, are committed in
reports/bench/smollm2-before.json, which `peftqa bench --before` reads.
"""
from __future__ import annotations

import contextlib
import types
from typing import Iterator

import torch

from peftqa.families.backbone import MAX_NEW_TOKENS, Batch
from peftqa.families.causal import CausalBackbone
from peftqa.families.tokens import token_nll


def full_logits(backbone: CausalBackbone, batch: Batch) -> torch.Tensor:
    """(B, T, V) next-token logits of the real positions (prompt/p-tuning prepend virtual ones)."""
    logits = backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[:, -batch["input_ids"].shape[1]:]


def prompt_end_logits(backbone: CausalBackbone, batch: Batch) -> torch.Tensor:
    last = batch["prompt_lengths"] - 1  # (B,)
    return full_logits(backbone, batch)[torch.arange(last.shape[0], device=last.device), last]


def label_logits(backbone: CausalBackbone, batch: Batch) -> torch.Tensor:
    return backbone._verbalize(prompt_end_logits(backbone, batch))


def example_losses(backbone: CausalBackbone, batch: Batch) -> torch.Tensor:
    return token_nll(full_logits(backbone, batch)[:, :-1], batch["target_ids"][:, 1:])


def separate_passes(backbone: CausalBackbone, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation's loss and scores, one forward pass each."""
    return example_losses(backbone, batch), label_logits(backbone, batch)


@torch.no_grad()
def generated_texts(backbone: CausalBackbone, batch: Batch) -> list[str]:
    """Greedy decoding by hand on right-padded rows, each step re-running every row whole."""
    lengths = batch["prompt_lengths"].tolist()
    rows = [row[:n].tolist() for row, n in zip(batch["input_ids"].cpu(), lengths)]
    for _ in range(MAX_NEW_TOKENS):
        step = {k: v.to(backbone.device) for k, v in backbone._rows_to_batch(rows, [len(r) for r in rows]).items()}
        for row, token in zip(rows, prompt_end_logits(backbone, step).argmax(dim=-1).tolist()):
            row.append(token)
    answers = [row[n:] for row, n in zip(rows, lengths)]
    eos = backbone.tokenizer.eos_token_id
    return [backbone.tokenizer.decode(a[: a.index(eos)] if eos in a else a, skip_special_tokens=True)
            for a in answers]


@contextlib.contextmanager
def computed_as_before(backbone: CausalBackbone) -> Iterator[CausalBackbone]:
    """Within the block, `backbone` scores, trains and answers the old way (its instance methods replaced)."""
    replaced = {"_label_logits": label_logits, "_example_losses": example_losses, "_generated_texts": generated_texts,
                "_losses_and_label_logits": separate_passes}
    for name, function in replaced.items():
        setattr(backbone, name, types.MethodType(function, backbone))
    try:
        yield backbone
    finally:
        for name in replaced:
            delattr(backbone, name)
