"""Benchmark (not a test): training throughput and inference speed of the current params profile.

Prints a markdown table of examples per second and per-example latency for:
  - training: a few optimizer steps per method in params.methods (forward + backward + step);
  - inference, batched label scoring (the evaluate stage's default) against one-at-a-time scoring;
  - seq2seq/causal only: the reference's per-example greedy generate loop (max_new_tokens=2), as a ratio
    measured in the same run on the same items.
--before PATH puts a committed bench's rates beside each measurement of the same name, with the speed-up: `make bench
BENCH=smollm2` gives reports/bench/smollm2-before.json, the causal family's code as it was before the LM head ran
only where it is read and greedy decoding kept a key/value cache, timed at commit d2caa3b (its record says where
and how). That old code is a test oracle now (tests/causal_before.py), not timed again: the speed-up is across runs.
Usage: peftqa bench [--items N] [--train-batches K] [--set KEY=VALUE ...] [--before PATH] [--json PATH]   (reads
       data/processed/test.csv and train.csv; --set overrides a params.yaml key for this bench only, as
       `dvc exp run -S` does; --json also writes the rows, the settings and the environment, as
       reports/bench/default.json, which docs/models.md renders, was written)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from peftqa.catalog import read_split
from peftqa.cli.bench_reference import describe_environment
from peftqa.errors import PeftqaError, complaint
from peftqa.evaluation.scoring import autocast, iterate_batches, score_frame, use_bf16
from peftqa.families import Backbone
from peftqa.files import write_json_atomic
from peftqa.methods import registry as methods
from peftqa.methods.attach import load_backbone
from peftqa.params import Params, load_params
from peftqa.studies.bench_tables import format_bench_table
from peftqa.training.loop import set_seed


def step_seconds(backbone: Backbone, batches: list[tuple[list[str], list[str], list[str]]], lr: float,
                 bf16: bool = False) -> list[float]:
    """Seconds of each optimizer step (encode, forward, backward, AdamW) over `batches` (questions, contexts, labels),
    from a fresh AdamW; bf16: under bf16 autocast, as model.dtype asks. The first step warms up allocators and kernels:
    callers leave it out."""
    optimizer = torch.optim.AdamW(backbone.trainable_parameters(), lr=lr)
    backbone.model.train()
    seconds = []
    for questions, contexts, labels in batches:
        start = time.perf_counter()
        with autocast(backbone.device, bf16):
            loss = backbone.loss(backbone.encode(questions, contexts, labels))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def time_training(backbone: Backbone, frame: pd.DataFrame, batch_size: int, lr: float, batches: int,
                  bf16: bool = False) -> float:
    """Examples per second over `batches` optimizer steps, after one warm-up step."""
    chunks = list(iterate_batches(frame, batch_size))[: batches + 1]
    elapsed = sum(step_seconds(backbone, chunks, lr, bf16)[1:])
    seen = sum(len(questions) for questions, _, _ in chunks[1:])
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


def read_before(path: Path | None) -> dict[str, float]:
    """{measurement: examples/s} of a committed bench record (`--before`), {} without one."""
    if path is None:
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {row["what"]: float(row["before_examples_per_s"]) for row in record["rows"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PeftqaError(f"--before {path}: not a bench record whose rows hold `what` and `before_examples_per_s` "
                          f"({complaint(err)}); reports/bench/smollm2-before.json is one") from None


def measured(name: str, rate: float, before: dict[str, float], seconds: np.ndarray | None = None,
             batched: float = float("nan")) -> dict:
    """One table row: today's examples/s, and the committed before rate of the same measurement with the speed-up
    where `before` has one."""
    old = before.get(name, float("nan"))
    return {"what": name, "examples_per_s": rate, "before_examples_per_s": old, "speedup": rate / old,
            "latency_mean_s": seconds.mean() if seconds is not None else float("nan"),
            "latency_p95_s": float(np.percentile(seconds, 95)) if seconds is not None else float("nan"),
            "vs_batched": rate / batched}


def bench_inference(params: Params, frame: pd.DataFrame, before: dict[str, float]) -> list[dict]:
    labels = params.prepare.labels
    backbone = load_backbone(params.model, "base", params.peft, labels, seed=params.train.seed,
                             device=params.train.device)
    bf16 = use_bf16(params.model.dtype, backbone.device)
    score_frame(backbone, frame.iloc[:2], 2, with_loss=False, bf16=bf16)  # warm-up
    start = time.perf_counter()
    score_frame(backbone, frame, params.evaluate.batch_size, with_loss=False, bf16=bf16)
    batched = len(frame) / (time.perf_counter() - start)
    rows = [measured(f"inference: batched label scoring (batch {params.evaluate.batch_size})", batched, before,
                     batched=batched)]
    loops = [("score", "inference: label scoring, one item at a time")]
    if backbone.generates:
        loops.append(("generate", "inference: greedy generate loop (2 new tokens), one at a time"))
    for how, name in loops:
        seconds = time_one_at_a_time(backbone, frame, how, bf16)
        rows.append(measured(name, len(seconds) / seconds.sum(), before, seconds, batched))
    return rows


def bench_training(params: Params, train: pd.DataFrame, batches: int, before: dict[str, float]) -> list[dict]:
    rows = []
    for method in params.methods:
        if methods.get(method).frozen:
            continue  # zero-shot, or the encoder's probe (solved by LogisticRegression): no training loop to time
        backbone = load_backbone(params.model, method, params.peft, params.prepare.labels, seed=params.train.seed,
                                 device=params.train.device)
        rate = time_training(backbone, train, params.train.batch_size, params.peft[method].lr, batches,
                             use_bf16(params.model.dtype, backbone.device))
        rows.append(measured(f"training: {method} (batch {params.train.batch_size})", rate, before))
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peftqa bench", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="test items scored (default 64)")
    parser.add_argument("--train-batches", type=int, default=3, help="timed optimizer steps per method (default 3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml key for this bench, e.g. --set model.max_length=256")
    parser.add_argument("--before", type=Path, default=None,
                        help="a committed bench record whose rates go beside today's "
                             "(e.g. reports/bench/smollm2-before.json)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and how they were made here")
    args = parser.parse_args(argv)
    params = load_params(overrides=args.set)
    train, test = read_split("train"), read_split("test", args.items)  # train first: its absence is the usual one
    set_seed(params.train.seed)
    before = read_before(args.before)
    rows = bench_training(params, train, args.train_batches, before) + bench_inference(params, test, before)

    device = "cuda" if torch.cuda.is_available() and params.train.device != "cpu" else f"cpu ({os.cpu_count()} cores)"
    print(f"\nmodel {params.model.name_or_path}, max_length {params.model.max_length}, {len(test)} test items, "
          f"device {device}, torch threads {torch.get_num_threads()}\n")
    print(format_bench_table(rows))
    if args.json:
        write_json_atomic(args.json, {
            "command": " ".join(["peftqa bench", *argv]), "environment": describe_environment(torch.device("cpu")),
            "model": params.model.name_or_path, "max_length": params.model.max_length, "items": len(test),
            "train_batches": args.train_batches, "device": device, "torch_threads": torch.get_num_threads(),
            "rows": [{key: None if value != value else value for key, value in row.items()}  # NaN (none): null
                     for row in rows]})
