"""Scoring a saved adapter on a split, exactly as evaluate@<method> does: batched predictions, per-item latency,
the predictions frame, the split's metrics, and logging them into the training's MLflow run.

`peftqa predict` and the protocols stage score through the same functions, so a label means the same everywhere.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from peftqa.catalog import predictions_frame
from peftqa.errors import PeftqaError
from peftqa.evaluation.metrics import classification_metrics, latency_summary, top_label_probability
from peftqa.evaluation.scoring import (
    autocast,
    iterate_batches,
    labels_from_log_probs,
    length_order,
    score_frame,
)
from peftqa.families import Backbone
from peftqa.params import Params

ABSTAIN = "abstain"  # the label written when the model is not confident enough (--abstain-below)


@torch.no_grad()
def predict_batched(backbone: Backbone, frame: pd.DataFrame, batch_size: int, scoring: str, bf16: bool,
                    by_length: bool = False) -> tuple[list[str | None], np.ndarray | None, float]:
    """Predicted labels, label log-probs (verbalizer only) and the batched run's wall time in seconds, in the frame's
    order; by_length (train.length_groups) runs the batches from shortest to longest prompt."""
    start = time.perf_counter()
    if scoring == "generate" and backbone.generates:
        order = length_order(backbone.token_lengths(frame)) if by_length else np.arange(len(frame))
        answers: list[str | None] = []
        for questions, contexts, _ in iterate_batches(frame, batch_size, order):
            with autocast(backbone.device, bf16):
                answers.extend(backbone.generate(backbone.encode(questions, contexts)))
        preds: list[str | None] = [None] * len(frame)
        for row, answer in zip(order, answers, strict=True):
            preds[row] = answer
        return preds, None, time.perf_counter() - start
    _, log_probs = score_frame(backbone, frame, batch_size, with_loss=False, bf16=bf16, by_length=by_length)
    return labels_from_log_probs(log_probs, backbone.labels), log_probs, time.perf_counter() - start


@torch.no_grad()
def time_per_example(backbone: Backbone, frame: pd.DataFrame, scoring: str, bf16: bool) -> list[float]:
    """Seconds per item, scored one at a time (tokenisation included): what a single request would wait."""
    latencies = []
    for questions, contexts, _ in tqdm(iterate_batches(frame, 1), total=len(frame), desc="latency", unit="item"):
        start = time.perf_counter()
        batch = backbone.encode(questions, contexts)
        with autocast(backbone.device, bf16):
            backbone.generate(batch) if scoring == "generate" else backbone.score(batch)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        latencies.append(time.perf_counter() - start)
    return latencies


def scored_predictions(frame: pd.DataFrame, preds: list[str | None], log_probs: np.ndarray | None,
                       labels: tuple[str, ...], latencies: Sequence[float] = ()) -> pd.DataFrame:
    """The catalog's predictions_frame of a model's scores: p_yes from the label log-probs (N, n_labels), NaN without
    them or without a 'yes' label; `latencies` (seconds) of the first items timed alone, NaN for the rest."""
    p_yes = np.exp(log_probs[:, labels.index("yes")]) if log_probs is not None and "yes" in labels else np.nan
    latency = np.full(len(frame), np.nan)
    latency[: len(latencies)] = latencies
    return predictions_frame(frame, preds, p_yes, latency)


def generation_metrics(backbone: Backbone, frame: pd.DataFrame, preds: list[str | None], scoring: str,
                       batch_size: int, bf16: bool, by_length: bool = False) -> dict[str, float]:
    """Language models: the share of greedy answers (MAX_NEW_TOKENS) that map to a label, and under verbalizer
    scoring the share where that answer is the verbalizer's prediction. Nothing for the encoder (no generation)."""
    if not backbone.generates or not len(frame):
        return {}
    answers = preds if scoring == "generate" else predict_batched(backbone, frame, batch_size, "generate", bf16,
                                                                            by_length)[0]
    metrics = {"generate_parse_rate": float(np.mean([answer is not None for answer in answers]))}
    if scoring != "generate":
        metrics["generate_agreement"] = float(np.mean([a == p for a, p in zip(answers, preds)]))
    return metrics


def scored_split(backbone: Backbone, frame: pd.DataFrame, params: Params, bf16: bool
                 ) -> tuple[pd.DataFrame, dict[str, float], float]:
    """A split scored as evaluate batches it (evaluate.batch_size, model.scoring, train.length_groups), no item timed
    alone: the predictions in evaluate's columns (latency_s NaN), their classification metrics, and the batched
    run's seconds. The pilot's base and the few_shot stage score through it."""
    labels = params.prepare.labels
    preds, log_probs, seconds = predict_batched(backbone, frame, params.evaluate.batch_size, params.model.scoring,
                                                bf16, params.train.length_groups)
    pred_frame = scored_predictions(frame, preds, log_probs, labels)
    metrics = classification_metrics(pred_frame["gold"].tolist(), [p if isinstance(p, str) else None for p in preds],
                                     labels)
    return pred_frame, metrics, seconds


def split_metrics(preds: pd.DataFrame, labels: tuple[str, ...], seconds: float, summary: dict) -> dict[str, float]:
    pred = [p if isinstance(p, str) else None for p in preds["pred"]]
    metrics = classification_metrics(preds["gold"].tolist(), pred, labels)
    metrics.update(latency_summary(preds["latency_s"].dropna().tolist()))
    metrics["examples_per_s"] = len(preds) / seconds if seconds > 0 else float("nan")
    metrics["trainable_params_m"] = summary["trainable_params"] / 1e6
    metrics["adapter_mb"] = summary["adapter_bytes"] / 1e6
    return metrics


def predict_frame(backbone: Backbone, items: pd.DataFrame, batch_size: int, scoring: str, bf16: bool,
                  abstain_below: float | None = None, by_length: bool = False) -> pd.DataFrame:
    """(pmid, pred, p_yes, latency_s) per item, in the items' order. latency_s is the item's share of its batch's
    wall time (tokenisation included); with batch_size 1 it is the per-request latency. by_length
    (train.length_groups) batches the items from shortest to longest prompt."""
    # evaluate's scoring passes gold labels to encode (for the loss it skips here): any valid label will do
    frame = items.assign(label=backbone.labels[0])
    order = length_order(backbone.token_lengths(frame)) if by_length else np.arange(len(frame))
    preds, log_probs, latencies = [None] * len(frame), [], np.zeros(len(frame))
    for start in range(0, len(frame), batch_size):
        rows = order[start : start + batch_size]
        chunk_preds, chunk_log_probs, seconds = predict_batched(backbone, frame.iloc[rows], batch_size, scoring, bf16)
        for row, pred in zip(rows, chunk_preds, strict=True):
            preds[row] = pred
        if chunk_log_probs is not None:
            log_probs.append(chunk_log_probs)
        latencies[rows] = seconds / len(rows)
    if log_probs:
        in_order = np.empty((len(frame), len(backbone.labels)), dtype=log_probs[0].dtype)
        in_order[order] = np.concatenate(log_probs)
        log_probs = [in_order]
    log_probs = np.concatenate(log_probs) if log_probs else None
    if abstain_below is not None:
        if log_probs is None and len(frame):
            raise PeftqaError("--abstain-below needs label probabilities, but model.scoring is 'generate'; "
                              "use model.scoring: verbalizer")
        preds = apply_abstention(preds, log_probs, abstain_below) if len(frame) else preds
    out = scored_predictions(frame, preds, log_probs, backbone.labels, latencies.tolist())
    out["pmid"] = items["pmid"].values  # keep None where the input gave no pmid
    return out[["pmid", "pred", "p_yes", "latency_s"]]


def apply_abstention(preds: Sequence[str | None], log_probs: np.ndarray, abstain_below: float) -> list[str | None]:
    """Replace a prediction by ABSTAIN where its top label probability, max over exp(log_probs) (N, n_labels),
    is below `abstain_below`."""
    p_max = top_label_probability(np.exp(log_probs))
    return [ABSTAIN if p < abstain_below else pred for pred, p in zip(preds, p_max, strict=True)]
