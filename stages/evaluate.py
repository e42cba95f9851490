"""Stage evaluate@<method>: score val and test with the saved adapter; predictions, metrics, confusion matrices.

Inputs:  models/<method>/adapter/, models/<method>/train_summary.json, data/processed/{val,test}.csv;
         params: model, evaluate, prepare.labels.
Outputs: reports/eval/<method>/preds_<split>.csv    pmid, gold, pred, p_yes, latency_s
         reports/eval/<method>/metrics_<split>.json accuracy, macro-F1, per-class P/R/F1, latency, throughput, size
         reports/eval/<method>/cm_<split>.csv       gold, pred, count
The metrics (as eval_<split>_<metric>, linked to the run's logged model) and the confusion-matrix figures also go into
the training run in MLflow (its id is in train_summary.json).
Throughput is timed over the batched run; latency per example on a separate pass, one item at a time.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from mlflow.entities import Dataset
from mlflow.tracking import MlflowClient
from tqdm import tqdm

from stages import tracking
from stages.common import PeftqaError, read_split, write_csv_atomic, write_json_atomic
from stages.families import Backbone, load_backbone
from stages.figures import plot_confusion
from stages.metrics import classification_metrics, confusion_frame, latency_summary
from stages.params import METHODS, load_params
from stages.scoring import autocast, iterate_batches, labels_from_log_probs, score_frame, use_bf16

log = logging.getLogger("peftqa.evaluate")

DATA_DIR = Path("data/processed")
MODELS_DIR = Path("models")
EVAL_DIR = Path("reports/eval")
SPLITS = ("val", "test")
METRIC_PREFIX = "eval_"  # MLflow keys of the evaluated metrics: eval_val_macro_f1, eval_test_accuracy, ...


@torch.no_grad()
def predict_batched(backbone: Backbone, frame: pd.DataFrame, batch_size: int, scoring: str, bf16: bool
                    ) -> tuple[list[str | None], np.ndarray | None, float]:
    """Predicted labels, label log-probs (verbalizer only) and the batched run's wall time in seconds."""
    start = time.perf_counter()
    if scoring == "generate" and backbone.generates:
        preds: list[str | None] = []
        for questions, contexts, _ in iterate_batches(frame, batch_size):
            with autocast(backbone.device, bf16):
                preds.extend(backbone.generate(backbone.encode(questions, contexts)))
        return preds, None, time.perf_counter() - start
    _, log_probs = score_frame(backbone, frame, batch_size, with_loss=False, bf16=bf16)
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


def predictions_frame(frame: pd.DataFrame, preds: list[str | None], log_probs: np.ndarray | None,
                      labels: tuple[str, ...], latencies: list[float]) -> pd.DataFrame:
    p_yes = np.exp(log_probs[:, labels.index("yes")]) if log_probs is not None and "yes" in labels else np.nan
    latency = np.full(len(frame), np.nan)
    latency[: len(latencies)] = latencies
    return pd.DataFrame({"pmid": frame["pmid"].values, "gold": frame["label"].values, "pred": preds,
                         "p_yes": p_yes, "latency_s": latency})


def generation_metrics(backbone: Backbone, frame: pd.DataFrame, preds: list[str | None], scoring: str,
                       batch_size: int, bf16: bool) -> dict[str, float]:
    """Language models: the share of greedy answers (MAX_NEW_TOKENS) that map to a label, and under verbalizer
    scoring the share where that answer is the verbalizer's prediction. Nothing for the encoder (no generation)."""
    if not backbone.generates or not len(frame):
        return {}
    answers = preds if scoring == "generate" else predict_batched(backbone, frame, batch_size, "generate", bf16)[0]
    metrics = {"generate_parse_rate": float(np.mean([answer is not None for answer in answers]))}
    if scoring != "generate":
        metrics["generate_agreement"] = float(np.mean([a == p for a, p in zip(answers, preds)]))
    return metrics


def split_metrics(preds: pd.DataFrame, labels: tuple[str, ...], seconds: float, summary: dict) -> dict[str, float]:
    pred = [p if isinstance(p, str) else None for p in preds["pred"]]
    metrics = classification_metrics(preds["gold"].tolist(), pred, labels)
    metrics.update(latency_summary(preds["latency_s"].dropna().tolist()))
    metrics["examples_per_s"] = len(preds) / seconds if seconds > 0 else float("nan")
    metrics["trainable_params_m"] = summary["trainable_params"] / 1e6
    metrics["adapter_mb"] = summary["adapter_bytes"] / 1e6
    return metrics


def log_to_training_run(client: MlflowClient, summary: dict, metrics_by_split: dict[str, dict],
                        datasets: dict[str, Dataset], figures: dict[str, Figure]) -> None:
    """Val/test metrics and the confusion-matrix figures go into the same MLflow run as the training, as
    eval_<split>_<metric>: apart from the per-epoch curves (val_macro_f1, ...), which stay equal to history.csv.
    They are linked to the run's logged model and to the split they were measured on; test joins the run's inputs."""
    run_id = summary["mlflow_run_id"]
    tracking.log_datasets(client, run_id, {"test": datasets["test"]})
    for split, metrics in metrics_by_split.items():
        tracking.log_metrics(client, run_id, {f"{METRIC_PREFIX}{split}_{key}": value for key, value in metrics.items()},
                             step=summary["best_epoch"], timestamp_ms=int(time.time() * 1000),
                             model_id=summary.get("mlflow_model_id"), dataset=datasets[split])
    for name, figure in figures.items():
        client.log_figure(run_id, figure, f"eval/{name}")


def main(args: list[str]) -> None:
    if len(args) != 1 or args[0] not in METHODS:
        raise PeftqaError(f"usage: python -m stages.evaluate <method>, with <method> one of {list(METHODS)}; "
                          f"got {args}")
    method = args[0]
    params = load_params()
    labels = params.prepare.labels
    summary_path = MODELS_DIR / method / "train_summary.json"
    if not summary_path.exists():
        raise PeftqaError(f"{summary_path} not found: train the method first (`dvc repro train@{method}`)")
    summary = json.loads(summary_path.read_text())
    client, _ = tracking.connect(params.mlflow.experiment)  # an unusable store fails now, not after the scoring
    tracking.check_run(client, summary["mlflow_run_id"], str(summary_path))
    backbone = load_backbone(params.model, method, params.peft, labels, seed=params.train.seed,
                             device=params.train.device, adapter_dir=MODELS_DIR / method / "adapter")
    bf16 = use_bf16(params.model.dtype, backbone.device)
    scoring = params.model.scoring

    out_dir = EVAL_DIR / method
    metrics_by_split, figures, datasets = {}, {}, {}
    for split in SPLITS:
        frame = read_split(DATA_DIR / f"{split}.csv", params.evaluate.limit_items)
        datasets[split] = tracking.split_dataset(frame, split, str(DATA_DIR / f"{split}.csv"))
        preds, log_probs, seconds = predict_batched(backbone, frame, params.evaluate.batch_size, scoring, bf16)
        timed = frame if params.evaluate.latency_items == 0 else frame.iloc[: params.evaluate.latency_items]
        latencies = time_per_example(backbone, timed, scoring, bf16)
        pred_frame = predictions_frame(frame, preds, log_probs, labels, latencies)
        metrics = split_metrics(pred_frame, labels, seconds, summary)
        metrics.update(generation_metrics(backbone, frame, preds, scoring, params.evaluate.batch_size, bf16))
        if metrics["unmapped"]:
            log.warning("%s %s: %d generations mapped to no label (counted as wrong)", method, split,
                        metrics["unmapped"])
        cm = confusion_frame(pred_frame["gold"].tolist(), [p if isinstance(p, str) else None for p in preds], labels)
        write_csv_atomic(out_dir / f"preds_{split}.csv", pred_frame)
        write_json_atomic(out_dir / f"metrics_{split}.json", metrics)
        write_csv_atomic(out_dir / f"cm_{split}.csv", cm)
        metrics_by_split[split] = metrics
        figures[f"cm_{split}.png"] = plot_confusion(cm, labels, method, split)
        log.info("%s %s: accuracy %.4f macro-F1 %.4f, %.1f items/s batched, latency mean %.4f s", method, split,
                 metrics["accuracy"], metrics["macro_f1"], metrics["examples_per_s"], metrics["latency_mean_s"])
    log_to_training_run(client, summary, metrics_by_split, datasets, figures)


if __name__ == "__main__":
    from stages.common import run_cli

    run_cli(main)
