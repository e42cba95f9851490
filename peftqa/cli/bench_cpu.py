"""Benchmark (not a test): SmolLM2 on CPU with bf16 compute and batches of similar length, against fp32 as today.

Four parts, each writing one file under reports/bench/ (every figure of the docs' CPU speed section comes from them):
  agreement  do bf16 compute and length order change the answers? SmolLM2's zero-shot on all 890 items, and one
             LoRA adapter trained on 128 train items for one epoch under fp32 and under bf16 compute (same seed),
             scored on val and test; label agreement, |delta p_yes| and macro-F1 against fp32 in file order
             (cpu-bf16-agreement.json).
  speed      training (prompt, prefix, LoRA) and scoring at 256 and 512 tokens, fp32 with today's batches against
             bf16 compute, length groups, and both, timed in one run on real items; the peer row times
             lm-evaluation-harness on the same zero-shot items and prompt (cpu-bf16.json).
  seeds      what the agreement's trained rows are to be read against: the same LoRA training in fp32 with
             another train.seed, against the first (cpu-bf16-seeds.json).
  profile    torch.profiler's top operators of one LoRA training step at 256 and 512 tokens, fp32 and bf16
             (cpu-bf16-profile.md).
Reads data/processed/{train,val,test}.csv (the default profile's 890 yes/no items) and the SmolLM2 study's params
(reports/smollm2/params.yaml). Usage: peftqa bench-cpu PART [--json PATH] (`make bench BENCH=smollm2` runs
speed after `peftqa bench`; agreement, seeds and profile are run by hand: see docs/models.md).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from peftqa import compute
from peftqa.catalog import read_split
from peftqa.cli.bench import step_seconds
from peftqa.cli.bench_reference import describe_environment
from peftqa.evaluation.metrics import classification_metrics
from peftqa.evaluation.scoring import (
    autocast,
    iterate_batches,
    labels_from_log_probs,
    length_order,
    score_frame,
)
from peftqa.families import Backbone
from peftqa.files import write_json_atomic, write_text_atomic
from peftqa.methods.attach import load_backbone
from peftqa.params import Params, load_params
from peftqa.studies.bench_peer import PEER_MAX_LENGTH, peer
from peftqa.studies.bench_profile import profile_report
from peftqa.training.checkpoint import EpochPosition
from peftqa.training.distributed import TrainingLoss, make_accelerator
from peftqa.training.loop import class_weights, length_grouped, make_optimizer, set_seed, train_one_epoch

STUDY_PARAMS = Path("reports/smollm2/params.yaml")  # SmolLM2's profile: template, label words, learning rates
BENCH_DIR = Path("reports/bench")
CHANGES = {"fp32": ("float32", False), "bf16": ("bf16_compute", False), "length_groups": ("float32", True),
           "both": ("bf16_compute", True)}  # change: (model.dtype, train.length_groups)
TRAINED = ("prompt_tuning", "prefix_tuning", "lora")
SEED = 42


def study_params(max_length: int, *overrides: str) -> Params:
    """The SmolLM2 study's profile at `max_length` tokens (it cut prompts at 256 and kept their start)."""
    return load_params(STUDY_PARAMS, overrides=[f"model.max_length={max_length}", *overrides])


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -----------------------------------------------------------------------------
# agreement: the answers under each change, against fp32 in file order


def p_yes(log_probs: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    return np.exp(log_probs[:, labels.index("yes")])


def compare(frame: pd.DataFrame, labels: tuple[str, ...], reference: np.ndarray, changed: np.ndarray) -> dict:
    """Label agreement, |delta p_yes| and each side's macro-F1 of two (N, n_labels) log-prob arrays over `frame`."""
    ref_pred, new_pred = labels_from_log_probs(reference, labels), labels_from_log_probs(changed, labels)
    gap = np.abs(p_yes(reference, labels) - p_yes(changed, labels))
    gold = frame["label"].tolist()
    return {"items": len(frame), "label_agreement": float(np.mean([a == b for a, b in zip(ref_pred, new_pred)])),
            "labels_differing": int(sum(a != b for a, b in zip(ref_pred, new_pred))),
            "median_abs_delta_p_yes": float(np.median(gap)), "max_abs_delta_p_yes": float(gap.max()),
            "macro_f1_fp32": classification_metrics(gold, ref_pred, labels)["macro_f1"],
            "macro_f1": classification_metrics(gold, new_pred, labels)["macro_f1"]}


def scored(backbone: Backbone, frame: pd.DataFrame, batch_size: int, change: str) -> np.ndarray:
    """Label log-probs of `frame` under `change` (the backbone loaded as bf16_compute: its head stays fp32, and
    without autocast it computes exactly as a float32 one). Agreement runs time nothing: the speed part does."""
    dtype, by_length = CHANGES[change]
    return score_frame(backbone, frame, batch_size, with_loss=False, bf16=dtype != "float32", by_length=by_length)[1]


def train_adapter(params: Params, train: pd.DataFrame, bf16: bool) -> Backbone:
    """LoRA trained for one epoch as the train stage trains it (train_one_epoch, AdamW, warmup and decay, class
    weights, train.seed for the adapter's start and the order), under bf16 compute or fp32; no validation, no early
    stopping."""
    set_seed(params.train.seed)
    backbone = load_backbone(params.model, "lora", params.peft, params.prepare.labels, seed=params.train.seed,
                             device="cpu")
    accelerator = make_accelerator("cpu")
    cfg = params.train
    optimizer, scheduler = make_optimizer(backbone, accelerator, len(train), cfg, params.peft.lora.lr, None)
    train_one_epoch(backbone, TrainingLoss(backbone), accelerator, train, optimizer, scheduler, cfg,
                    class_weights(train, backbone, cfg), EpochPosition(1), bf16)
    backbone.model.eval()
    return backbone


def agreement(max_length: int, train_items: int, limit: int) -> dict:
    # bf16_compute keeps the LM head fp32 in every backbone here; scoring with bf16=False is then fp32 throughout
    params = study_params(max_length, "model.dtype=bf16_compute", "train.length_groups=false")
    labels, batch = params.prepare.labels, params.evaluate.batch_size
    splits = {split: read_split(split, limit) for split in ("train", "val", "test")}
    every = pd.concat(splits.values(), ignore_index=True)
    rows = []
    backbone = load_backbone(params.model, "base", params.peft, labels, seed=SEED, device="cpu")
    zero_shot = {}
    for change in CHANGES:
        progress(f"zero-shot, {len(every)} items, {change}")
        zero_shot[change] = scored(backbone, every, batch, change)
    val_rows = np.arange(len(splits["train"]), len(splits["train"]) + len(splits["val"]))
    for change in ("bf16", "length_groups", "both"):
        for name, rows_at in ((f"all {len(every)} items", np.arange(len(every))), ("val", val_rows)):
            rows.append({"model": "zero-shot", "items_from": name, "change": change,
                         **compare(every.iloc[rows_at], labels, zero_shot["fp32"][rows_at],
                                   zero_shot[change][rows_at])})
    del backbone
    train = splits["train"].iloc[:train_items]
    adapters = {}
    for trained in ("fp32", "bf16"):
        progress(f"LoRA on {len(train)} train items, one epoch, trained under {trained}")
        backbone = train_adapter(params, train, bf16=trained == "bf16")
        for split in ("val", "test"):
            for change in ("fp32", "bf16"):
                progress(f"  scoring {split} under {change}")
                adapters[trained, split, change] = scored(backbone, splits[split], batch, change)
    for split in ("val", "test"):
        reference = adapters["fp32", split, "fp32"]
        for trained, change, what in (("bf16", "bf16", "trained and scored under bf16 compute"),
                                      ("fp32", "bf16", "trained under fp32, scored under bf16 compute")):
            rows.append({"model": f"LoRA ({len(train)} train items, 1 epoch)", "items_from": split,
                         "change": "bf16", "what": what,
                         **compare(splits[split], labels, reference, adapters[trained, split, change])})
    return {"max_length": max_length, "train_items": len(train), "rows": rows}


def seed_noise(max_length: int, train_items: int, limit: int, other_seed: int = SEED + 1) -> dict:
    """What bf16 training's gap is to be read against: the same LoRA training in fp32 with another train.seed (the
    adapter's start and the data order), scored on val and test in fp32, against seed SEED's."""
    splits = {split: read_split(split, limit) for split in ("train", "val", "test")}
    train = splits["train"].iloc[:train_items]
    scores = {}
    for seed in (SEED, other_seed):
        params = study_params(max_length, "model.dtype=bf16_compute", "train.length_groups=false",
                              f"train.seed={seed}")
        progress(f"LoRA on {len(train)} train items, one epoch, fp32, train.seed {seed}")
        backbone = train_adapter(params, train, bf16=False)
        for split in ("val", "test"):
            scores[seed, split] = scored(backbone, splits[split], params.evaluate.batch_size, "fp32")
    labels = params.prepare.labels
    rows = [{"model": f"LoRA ({len(train)} train items, 1 epoch)", "items_from": split,
             "change": f"train.seed {other_seed}", "what": f"trained and scored under fp32, train.seed {other_seed}",
             **compare(splits[split], labels, scores[SEED, split], scores[other_seed, split])}
            for split in ("val", "test")]
    return {"max_length": max_length, "train_items": len(train), "rows": rows}


# -----------------------------------------------------------------------------
# speed: each change against fp32 with today's batches, in one run


def batch_orders(backbone: Backbone, frame: pd.DataFrame, batch_size: int, seed: int) -> dict[bool, np.ndarray]:
    """Row orders of `frame` for training: today's seeded shuffle (False) and regrouped by length (True), as
    train_one_epoch draws them."""
    rng = np.random.default_rng(seed)
    shuffle = rng.permutation(len(frame))
    lengths = np.asarray(backbone.token_lengths(frame))
    return {False: shuffle, True: length_grouped(shuffle, lengths, batch_size, rng)}


def padding_share(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> float:
    """Padded tokens over real tokens, batches cut from `order`: 1.0 is no padding."""
    padded = sum(lengths[order[i : i + batch_size]].max() * len(order[i : i + batch_size])
                 for i in range(0, len(order), batch_size))
    return float(padded / lengths.sum())


def time_training(backbone: Backbone, frame: pd.DataFrame, order: np.ndarray, batch_size: int, lr: float,
                  bf16: bool) -> list[float]:
    """Seconds of each optimizer step over the batches of `order`, after one untimed warm-up step on its first."""
    batches = list(iterate_batches(frame, batch_size, order))
    return step_seconds(backbone, [batches[0], *batches], lr, bf16)[1:]


@torch.no_grad()
def time_scoring(backbone: Backbone, frame: pd.DataFrame, order: np.ndarray, batch_size: int, bf16: bool
                 ) -> tuple[list[float], np.ndarray]:
    """Seconds of each batch (encode and score) in `order`, after an untimed warm-up batch, and the label log-probs
    in the frame's order."""
    backbone.model.eval()
    batches = list(iterate_batches(frame, batch_size, order))
    seconds, log_probs = [], []
    for i, (questions, contexts, _) in enumerate([batches[0], *batches]):
        start = time.perf_counter()
        with autocast(backbone.device, bf16):
            scores = backbone.score(backbone.encode(questions, contexts))
        if i:
            seconds.append(time.perf_counter() - start)
            log_probs.append(scores.float().numpy())
    in_order = np.empty((len(frame), len(backbone.labels)), dtype=np.float32)
    in_order[order] = np.concatenate(log_probs)
    return seconds, in_order


def measured_agreement(agreement_file: dict | None, max_length: int, method: str, change: str) -> tuple[float | None,
                                                                                                         str]:
    """Item 3's label agreement for this row (cpu-bf16-agreement.json, at its max_length), and where it is from."""
    if agreement_file is None or agreement_file["max_length"] != max_length:
        return None, "not measured at this max_length"
    if method == "zero-shot":
        wanted = [r for r in agreement_file["rows"] if r["model"] == "zero-shot" and r["change"] == change
                  and r["items_from"].startswith("all")]
    elif method == "lora" and change == "bf16":
        wanted = [r for r in agreement_file["rows"] if r["model"].startswith("LoRA") and
                  r.get("what", "").startswith("trained and scored")]
    else:
        return None, "not measured (the agreement part trains LoRA under bf16 compute, not under length groups)"
    items = sum(r["items"] for r in wanted)
    agree = sum(r["label_agreement"] * r["items"] for r in wanted) / items
    return agree, f"cpu-bf16-agreement.json: {' + '.join(r['items_from'] for r in wanted)} ({items} items)"


def speed_rows(max_length: int, train: pd.DataFrame, test: pd.DataFrame, train_items: int,
               agreement_file: dict | None) -> list[dict]:
    """Every change against fp32 with today's batches at `max_length`: training per method, then zero-shot scoring."""
    rows = []
    sample = train.sample(n=train_items, random_state=SEED).reset_index(drop=True)
    for method in (*TRAINED, "zero-shot"):
        rates, answers = {}, {}  # change: (items/s, median step s, steps); change: zero-shot labels
        for dtype in ("float32", "bf16_compute"):
            params = study_params(max_length, f"model.dtype={dtype}")
            batch = params.train.batch_size
            set_seed(SEED)
            backbone = load_backbone(params.model, "base" if method == "zero-shot" else method, params.peft,
                                     params.prepare.labels, seed=SEED, device="cpu")
            frame = test if method == "zero-shot" else sample
            orders = batch_orders(backbone, frame, batch, SEED) if method != "zero-shot" else {
                False: np.arange(len(frame)), True: length_order(backbone.token_lengths(frame))}
            for change, (change_dtype, grouped) in CHANGES.items():
                if change_dtype != dtype:
                    continue
                progress(f"{max_length} tokens, {method}, {change}")
                bf16 = dtype == "bf16_compute"
                if method == "zero-shot":
                    seconds, log_probs = time_scoring(backbone, frame, orders[grouped], batch, bf16)
                    answers[change] = labels_from_log_probs(log_probs, backbone.labels)
                else:
                    seconds = time_training(backbone, frame, orders[grouped], batch, params.peft[method].lr, bf16)
                rates[change] = (len(frame) / sum(seconds), statistics.median(seconds), len(seconds))
            del backbone
        for change in ("bf16", "length_groups", "both"):
            agree, source = measured_agreement(agreement_file, max_length, method, change)
            row = {"max_length": max_length, "method": method, "change": change,
                   "items": len(test) if method == "zero-shot" else len(sample), "batch_size": batch,
                   "timed_steps": rates[change][2], "items_per_s_fp32": rates["fp32"][0],
                   "items_per_s": rates[change][0], "median_step_s_fp32": rates["fp32"][1],
                   "median_step_s": rates[change][1],
                   "train_speedup": None, "score_speedup": None, "label_agreement": agree,
                   "label_agreement_from": source}
            row["score_speedup" if method == "zero-shot" else "train_speedup"] = rates[change][0] / rates["fp32"][0]
            if method == "zero-shot":  # the bench's own 89 items, beside item 3's figure
                row["bench_items_label_agreement"] = float(np.mean(
                    [a == b for a, b in zip(answers["fp32"], answers[change])]))
            rows.append(row)
    return rows


def padding_rows(max_length: int, train: pd.DataFrame, test: pd.DataFrame) -> list[dict]:
    """Padded over real tokens at `max_length`: an epoch of train in batches of train.batch_size (today's shuffle,
    and length groups), and test scored in batches of evaluate.batch_size (file order, and length order)."""
    params = study_params(max_length)
    backbone = load_backbone(params.model, "base", params.peft, params.prepare.labels, seed=SEED, device="cpu")
    rows = []
    for split, frame, batch in (("train", train, params.train.batch_size), ("test", test, params.evaluate.batch_size)):
        lengths = np.asarray(backbone.token_lengths(frame))
        if split == "train":
            orders = batch_orders(backbone, frame, batch, params.train.seed + 1)  # epoch 1's order
        else:
            orders = {False: np.arange(len(frame)), True: length_order(lengths)}
        rows.append({"max_length": max_length, "split": split, "items": len(frame), "batch_size": batch,
                     "today": padding_share(lengths, orders[False], batch),
                     "grouped": padding_share(lengths, orders[True], batch)})
    return rows


# -----------------------------------------------------------------------------
# the command


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peftqa bench-cpu", description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("agreement", "seeds", "speed", "profile"))
    parser.add_argument("--json", type=Path, default=None, help="where to write (default: reports/bench/cpu-bf16*.*)")
    parser.add_argument("--train-items", type=int, default=128, help="agreement: LoRA's train items (default 128)")
    parser.add_argument("--speed-train-items", type=int, default=40,
                        help="speed: train items timed per method and change (default 40: 5 batches of 8)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N items of each split (a smoke run)")
    args = parser.parse_args(argv)
    if compute.cpu_bf16_support() == "none":
        compute.warn_if_emulated("cpu")
    command = " ".join(["peftqa bench-cpu", *map(shlex.quote, argv)])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    header = {"command": command, "commit": commit, "environment": describe_environment(torch.device("cpu")),
              "cpu_bf16": compute.cpu_bf16_support()}
    start = time.perf_counter()
    if args.part == "agreement":
        result = agreement(512, args.train_items, args.limit)
        path = args.json or BENCH_DIR / "cpu-bf16-agreement.json"
    elif args.part == "seeds":
        result = seed_noise(512, args.train_items, args.limit)
        path = args.json or BENCH_DIR / "cpu-bf16-seeds.json"
    elif args.part == "speed":
        agreement_path = BENCH_DIR / "cpu-bf16-agreement.json"
        agreement_file = json.loads(agreement_path.read_text()) if agreement_path.exists() else None
        train, test = read_split("train", args.limit), read_split("test", args.limit)
        rows, padding = [], []
        for max_length in (256, 512):
            padding += padding_rows(max_length, train, test)
            rows += speed_rows(max_length, train, test, args.speed_train_items, agreement_file)
        peer_params = study_params(PEER_MAX_LENGTH, "model.chat_template=none", "model.label_words=exact",
                                   "model.dtype=bf16_compute")
        with tempfile.TemporaryDirectory() as workdir:
            result = {"rows": rows, "padding": padding,
                      "peer": peer(read_split("test", args.limit), Path(workdir), peer_params, SEED, progress)}
        path = args.json or BENCH_DIR / "cpu-bf16.json"
    else:
        path = args.json or BENCH_DIR / "cpu-bf16-profile.md"
        profiles = [study_params(max_length, f"model.dtype={dtype}") for max_length in (256, 512)
                    for dtype in ("float32", "bf16_compute")]
        write_text_atomic(path, profile_report(profiles, read_split("train"), header, SEED, progress))
        progress(f"wrote {path}")
        return
    write_json_atomic(path, {**header, "seconds": round(time.perf_counter() - start), **result})
    progress(f"wrote {path}")
