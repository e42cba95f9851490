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

import logging

from peftqa.catalog import ADAPTER, CONFUSION, METRICS, PREDS, SCORED_SPLITS, SPLIT, TRAIN_SUMMARY, read_split
from peftqa.errors import PeftqaError
from peftqa.evaluation.metrics import confusion_frame
from peftqa.evaluation.predictions import (
    generation_metrics,
    predict_batched,
    scored_predictions,
    split_metrics,
    time_per_example,
)
from peftqa.evaluation.scoring import use_bf16
from peftqa.methods.attach import load_backbone
from peftqa.mlops import tracking
from peftqa.params import METHODS, load_params
from peftqa.report.palette import close_figure, plot_confusion

log = logging.getLogger("peftqa.evaluate")


def main(args: list[str]) -> None:
    if len(args) != 1 or args[0] not in METHODS:
        raise PeftqaError(f"usage: python -m stages.evaluate <method>, with <method> one of {list(METHODS)}; "
                          f"got {args}")
    method = args[0]
    params = load_params()
    labels = params.prepare.labels
    summary_path = TRAIN_SUMMARY.path(method=method)
    if not summary_path.exists():
        raise PeftqaError(f"{summary_path} not found: train the method first (`dvc repro train@{method}`)")
    summary = TRAIN_SUMMARY.read(method=method)
    client, _ = tracking.connect(params.mlflow.experiment)  # an unusable store fails now, not after the scoring
    tracking.check_run(client, summary["mlflow_run_id"], str(summary_path))
    backbone = load_backbone(params.model, method, params.peft, labels, seed=params.train.seed,
                             device=params.train.device, adapter_dir=ADAPTER.path(method=method))
    bf16 = use_bf16(params.model.dtype, backbone.device)
    by_length = params.train.length_groups  # batches in length order, predictions written in split order
    scoring = params.model.scoring

    metrics_by_split, figures, datasets = {}, {}, {}
    for split in SCORED_SPLITS:
        frame = read_split(split, params.evaluate.limit_items)
        datasets[split] = tracking.split_dataset(frame, split, str(SPLIT.path(split=split)))
        preds, log_probs, seconds = predict_batched(backbone, frame, params.evaluate.batch_size, scoring, bf16,
                                                   by_length)
        timed = frame if params.evaluate.latency_items == 0 else frame.iloc[: params.evaluate.latency_items]
        latencies = time_per_example(backbone, timed, scoring, bf16)
        pred_frame = scored_predictions(frame, preds, log_probs, labels, latencies)
        metrics = split_metrics(pred_frame, labels, seconds, summary)
        metrics.update(generation_metrics(backbone, frame, preds, scoring, params.evaluate.batch_size, bf16,
                                          by_length))
        if metrics["unmapped"]:
            log.warning("%s %s: %d generations mapped to no label (counted as wrong)", method, split,
                        metrics["unmapped"])
        cm = confusion_frame(pred_frame["gold"].tolist(), [p if isinstance(p, str) else None for p in preds], labels)
        PREDS.write(pred_frame, method=method, split=split)
        METRICS.write(metrics, method=method, split=split)
        CONFUSION.write(cm, method=method, split=split)
        metrics_by_split[split] = metrics
        figures[f"cm_{split}.png"] = plot_confusion(cm, labels, method, split)
        log.info("%s %s: accuracy %.4f macro-F1 %.4f, %.1f items/s batched, latency mean %.4f s", method, split,
                 metrics["accuracy"], metrics["macro_f1"], metrics["examples_per_s"], metrics["latency_mean_s"])
    try:
        tracking.log_evaluation(client, summary, metrics_by_split, datasets, figures)
    finally:  # pyplot keeps every figure until it is closed
        for figure in figures.values():
            close_figure(figure)


if __name__ == "__main__":
    from peftqa.stops import run_cli

    run_cli(main)
