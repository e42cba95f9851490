"""Batched scoring, written once for the train stage (val each epoch) and the evaluate stage."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from peftqa.compute import autocast, use_bf16  # noqa: F401 (re-exported: where scoring's callers find them)
from peftqa.families import Backbone


def iterate_batches(frame: pd.DataFrame, batch_size: int, order: Sequence[int] | None = None
                    ) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(questions, contexts, labels) per batch, in `order` (row positions) or file order."""
    order = np.arange(len(frame)) if order is None else np.asarray(order)
    for start in range(0, len(order), batch_size):
        rows = frame.iloc[order[start : start + batch_size]]
        yield rows["question"].tolist(), rows["context"].tolist(), rows["label"].tolist()


def balanced_class_weights(labels: Sequence[str], label_set: Sequence[str]) -> torch.Tensor:
    """n / (k * count_c): each class contributes equally to the loss (sklearn's 'balanced')."""
    counts = np.array([sum(1 for label in labels if label == c) for c in label_set], dtype=float)
    weights = len(labels) / (len(label_set) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Row positions from shortest to longest prompt (ties in file order): batches padded to almost nothing."""
    return np.argsort(np.asarray(lengths), kind="stable")


@torch.no_grad()
def score_frame(backbone: Backbone, frame: pd.DataFrame, batch_size: int,
                class_weights: torch.Tensor | None = None, with_loss: bool = True, bf16: bool = False,
                by_length: bool = False) -> tuple[float, np.ndarray]:
    """Mean loss over the items (NaN when with_loss is False) and label log-probabilities, shape (N, n_labels), in
    the frame's order. by_length (train.length_groups) scores the items from shortest to longest prompt."""
    backbone.model.eval()
    order = length_order(backbone.token_lengths(frame)) if by_length else np.arange(len(frame))
    losses, log_probs = [], []
    for questions, contexts, labels in iterate_batches(frame, batch_size, order):
        batch = backbone.encode(questions, contexts, labels)
        with autocast(backbone.device, bf16):
            if with_loss:
                loss, scores = backbone.loss_and_score(batch, class_weights)
                losses.append(float(loss) * len(questions))
            else:
                scores = backbone.score(batch)
            log_probs.append(scores.float().cpu().numpy())
    mean_loss = sum(losses) / len(frame) if with_loss and len(frame) else float("nan")
    if not log_probs:
        return mean_loss, np.zeros((0, len(backbone.labels)))
    in_frame_order = np.empty((len(frame), len(backbone.labels)), dtype=np.float32)
    in_frame_order[order] = np.concatenate(log_probs)
    return mean_loss, in_frame_order


def labels_from_log_probs(log_probs: np.ndarray, label_set: Sequence[str]) -> list[str]:
    return [label_set[i] for i in log_probs.argmax(axis=1)]
