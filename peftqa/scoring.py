"""Batched scoring, written once for the train stage (val each epoch) and the evaluate stage."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

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


@torch.no_grad()
def score_frame(backbone: Backbone, frame: pd.DataFrame, batch_size: int,
                class_weights: torch.Tensor | None = None, with_loss: bool = True, bf16: bool = False
                ) -> tuple[float, np.ndarray]:
    """Mean loss over the items (NaN when with_loss is False) and label log-probabilities, shape (N, n_labels)."""
    backbone.model.eval()
    losses, log_probs = [], []
    for questions, contexts, labels in iterate_batches(frame, batch_size):
        batch = backbone.encode(questions, contexts, labels)
        with autocast(backbone.device, bf16):
            if with_loss:
                loss, scores = backbone.loss_and_score(batch, class_weights)
                losses.append(float(loss) * len(questions))
            else:
                scores = backbone.score(batch)
            log_probs.append(scores.float().cpu().numpy())
    mean_loss = sum(losses) / len(frame) if with_loss and len(frame) else float("nan")
    return mean_loss, np.concatenate(log_probs) if log_probs else np.zeros((0, len(backbone.labels)))


def use_bf16(dtype: str, device: torch.device) -> bool:
    """model.dtype 'auto' means bf16 autocast on CUDA (as the reference trained FLAN-T5-XL) and fp32 on CPU."""
    return dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def labels_from_log_probs(log_probs: np.ndarray, label_set: Sequence[str]) -> list[str]:
    return [label_set[i] for i in log_probs.argmax(axis=1)]
