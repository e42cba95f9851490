"""Benchmark (not a test): training throughput and inference speed of the current params profile.

Prints a markdown table of examples per second and per-example latency for:
  - training: a few optimizer steps per method in params.methods (forward + backward + step);
  - inference, batched label scoring (the evaluate stage's default) against one-at-a-time scoring;
  - seq2seq/causal only: the reference's per-example greedy generate loop (max_new_tokens=2), as a ratio
    measured in the same run on the same items.
Usage: peftqa bench [--items N] [--train-batches K]   (reads data/processed/test.csv and train.csv)
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from peftqa import methods
from peftqa.common import PeftqaError
from peftqa.families import Backbone, load_backbone
from peftqa.params import Params, load_params
from peftqa.scoring import autocast, iterate_batches, score_frame, use_bf16
from peftqa.training.loop import set_seed

DATA_DIR = Path("data/processed")


def time_training(backbone: Backbone, frame: pd.DataFrame, batch_size: int, lr: float, batches: int) -> float:
    """Examples per second over `batches` optimizer steps, after one warm-up step."""
    optimizer = torch.optim.AdamW(backbone.trainable_parameters(), lr=lr)
    backbone.model.train()
    chunks = list(iterate_batches(frame, batch_size))[: batches + 1]
    seen, elapsed = 0, 0.0
    for i, (questions, contexts, labels) in enumerate(chunks):
        start = time.perf_counter()
        loss = backbone.loss(backbone.encode(questions, contexts, labels))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i > 0:  # the first step warms up allocators and kernels
            elapsed += time.perf_counter() - start
            seen += len(questions)
    return seen / elapsed if elapsed else float("nan")


@torch.no_grad()
def time_one_at_a_time(backbone: Backbone, frame: pd.DataFrame, how: str, bf16: bool) -> np.ndarray:
    """Per-item seconds for score (verbalizer) or generate (the reference's loop), tokenisation included."""
    backbone.model.eval()
    seconds = []
    for questions, contexts, _ in iterate_batches(frame, 1):
        start = time.perf_counter()
        batch = backbone.encode(questions, contexts)
        with autocast(backbone.device, bf16):
            backbone.score(batch) if how == "score" else backbone.generate(batch)
        seconds.append(time.perf_counter() - start)
    return np.asarray(seconds)


def bench_inference(params: Params, frame: pd.DataFrame) -> list[dict]:
    labels = params.prepare.labels
    backbone = load_backbone(params.model, "base", params.peft, labels, seed=params.train.seed,
                             device=params.train.device)
    bf16 = use_bf16(params.model.dtype, backbone.device)
    score_frame(backbone, frame.iloc[:2], 2, with_loss=False, bf16=bf16)  # warm-up
    start = time.perf_counter()
    score_frame(backbone, frame, params.evaluate.batch_size, with_loss=False, bf16=bf16)
    batched = len(frame) / (time.perf_counter() - start)
    rows = [{"what": f"inference: batched label scoring (batch {params.evaluate.batch_size})",
             "examples_per_s": batched, "latency_mean_s": float("nan"), "latency_p95_s": float("nan"),
             "vs_batched": 1.0}]
    loops = [("score", "inference: label scoring, one item at a time")]
    if backbone.generates:
        loops.append(("generate", "inference: reference generate loop (greedy, 2 new tokens), one at a time"))
    for how, name in loops:
        seconds = time_one_at_a_time(backbone, frame, how, bf16)
        rate = len(seconds) / seconds.sum()
        rows.append({"what": name, "examples_per_s": rate, "latency_mean_s": seconds.mean(),
                     "latency_p95_s": float(np.percentile(seconds, 95)), "vs_batched": rate / batched})
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peftqa bench", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="test items scored (default 64)")
    parser.add_argument("--train-batches", type=int, default=3, help="timed optimizer steps per method (default 3)")
    args = parser.parse_args(argv)
    params = load_params()
    for split in ("train", "test"):
        if not (DATA_DIR / f"{split}.csv").exists():
            raise PeftqaError(f"{DATA_DIR / split}.csv not found: run `dvc repro prepare` (or `make run`) first")
    test = pd.read_csv(DATA_DIR / "test.csv", dtype={"pmid": str}).iloc[: args.items]
    train = pd.read_csv(DATA_DIR / "train.csv", dtype={"pmid": str})
    set_seed(params.train.seed)

    rows = []
    for method in params.methods:
        if methods.get(method).frozen:
            continue  # zero-shot, or the encoder's probe (solved by LogisticRegression): no training loop to time
        backbone = load_backbone(params.model, method, params.peft, params.prepare.labels, seed=params.train.seed,
                                 device=params.train.device)
        rate = time_training(backbone, train, params.train.batch_size, params.peft[method].lr,
                             args.train_batches)
        rows.append({"what": f"training: {method} (batch {params.train.batch_size})", "examples_per_s": rate,
                     "latency_mean_s": float("nan"), "latency_p95_s": float("nan"), "vs_batched": float("nan")})
    rows += bench_inference(params, test)

    device = "cuda" if torch.cuda.is_available() and params.train.device != "cpu" else f"cpu ({os.cpu_count()} cores)"
    print(f"\nmodel {params.model.name_or_path}, max_length {params.model.max_length}, {len(test)} test items, "
          f"device {device}, torch threads {torch.get_num_threads()}\n")
    table = pd.DataFrame(rows).rename(columns={"what": "measurement", "examples_per_s": "examples/s",
                                               "latency_mean_s": "latency mean (s)", "latency_p95_s": "latency p95 (s)",
                                               "vs_batched": "speed vs batched"})
    print(table.to_markdown(index=False, floatfmt=".3f", missingval=""))

