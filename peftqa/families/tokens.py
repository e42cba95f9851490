"""Small pure helpers on token ids: which context tokens to keep, padding, per-example NLL, the verbalizer's token
ids and a generated answer's label."""
from __future__ import annotations

import string

import torch
import torch.nn.functional as F

from peftqa.errors import PeftqaError
from peftqa.families.backbone import IGNORE_INDEX, Batch


def verbalizer_token_ids(answer_ids: dict[str, list[int]]) -> list[int]:
    """The first token of each label's answer. Scoring compares these, so two labels must not share one."""
    first = {label: ids[0] for label, ids in answer_ids.items()}
    for label, token in first.items():
        clash = [other for other, t in first.items() if t == token and other != label]
        if clash:
            raise PeftqaError(f"labels '{label}' and '{clash[0]}' start with the same token (id {token}) in this "
                              "model's tokenizer, so they cannot be told apart; use another model or prepare.labels")
    return list(first.values())


def answer_to_label(text: str, labels: tuple[str, ...]) -> str | None:
    """A generated answer's first word, lowercased and stripped of punctuation, if it is a label; else None."""
    words = text.strip().lower().split()
    word = words[0].strip(string.punctuation) if words else ""
    return word if word in labels else None


def kept_positions(n_tokens: int, budget: int, truncation: str) -> list[int]:
    """Which of a context's n_tokens to keep when only `budget` fit: its start, its end, or both ends (half each).
    PubMedQA abstracts end with their RESULTS/CONCLUSIONS paragraph, which the start-only cut loses first."""
    if n_tokens <= budget:
        return list(range(n_tokens))
    head = {"start": budget, "end": 0, "both": (budget + 1) // 2}[truncation]
    return list(range(head)) + list(range(n_tokens - (budget - head), n_tokens))


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """Rows of ids -> (B, T), padded on the right with `value`."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def padded_inputs(rows: list[list[int]], pad_id: int) -> Batch:
    """input_ids and attention_mask (B, T), right-padded: positions then start at 0 in every row."""
    return {"input_ids": pad_rows(rows, pad_id), "attention_mask": pad_rows([[1] * len(row) for row in rows], 0)}


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per example over its target tokens: (B, L, V) and (B, L) -> (B,)."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(dim=1) / (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
