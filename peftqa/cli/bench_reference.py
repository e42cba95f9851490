"""Benchmark (not a test, not a DVC stage): the reference's scale, measured without its weights.

Builds FLAN-T5-XL's shape from a T5Config in code (random weights, no download), wraps it with peft prompt
tuning and prefix tuning (50 virtual tokens each), runs AdamW steps on the adapter at batch 8 x 512 input
tokens with a 2-token decoder target (label word + eos), and prints per method: trainable parameters, seconds
per optimizer step, peak memory, model FLOPs utilisation, and the projected time for 712 items x 5 epochs.
On CPU it runs a scaled-down shape (`--shape small`) and says so.

It imports only torch, transformers, peft and the standard library (no MLflow, no DVC, no other stage), so it
runs on any machine that has those three.
Usage: peftqa bench-reference [--device auto|cpu|cuda] [--shape auto|full|small] [--steps N]
                              [--warmup N] [--peak-tflops X] [--json PATH]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import peft
import torch
import transformers
from peft import PeftConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import T5Config, T5ForConditionalGeneration

from peftqa import compute
from peftqa.studies.bench_tables import format_reference_table

# -----------------------------------------------------------------------------
# the reference setup
TRAIN_ITEMS = 712  # PubMedQA-L training items in the reference split
EPOCHS = 5  # the reference's epochs
NUM_VIRTUAL_TOKENS = 50  # the reference's prompt and prefix length
LABEL_IDS = (4273, 150)  # two fixed vocabulary ids as the label word (any ids time the same)
EOS_ID = 1  # T5's </s>
LR = 1e-3  # AdamW on the adapter; the step time does not depend on it
# dense bf16 peak of the tensor cores (datasheet, no sparsity), matched on the device name in this order
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                   ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12))


@dataclass(frozen=True)
class Shape:
    name: Literal["full", "small"]
    d_model: int
    d_ff: int
    num_layers: int  # per stack: encoder and decoder each have this many blocks
    num_heads: int
    d_kv: int
    batch_size: int
    input_tokens: int  # encoder input length per item, before any virtual tokens


SHAPES = {
    "full": Shape("full", d_model=2048, d_ff=5120, num_layers=24, num_heads=32, d_kv=64, batch_size=8,
                  input_tokens=512),
    "small": Shape("small", d_model=256, d_ff=512, num_layers=2, num_heads=4, d_kv=64, batch_size=2, input_tokens=128),
}

# Own builders rather than peftqa/methods/__init__.py: that registry reads typed params (and with them the pipeline's
# imports); this bench must run where only torch, transformers and peft are installed.
METHODS: dict[str, Callable[[], PeftConfig]] = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=NUM_VIRTUAL_TOKENS),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=NUM_VIRTUAL_TOKENS),
}


# -----------------------------------------------------------------------------
# model, batch, FLOPs


def build_t5_config(shape: Shape) -> T5Config:
    """FLAN-T5-XL's config (google/flan-t5-xl) with the shape's sizes; vocab, gating and untied head as the real one."""
    return T5Config(vocab_size=32128, d_model=shape.d_model, d_ff=shape.d_ff, d_kv=shape.d_kv,
                    num_layers=shape.num_layers, num_decoder_layers=shape.num_layers, num_heads=shape.num_heads,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=EOS_ID, use_cache=False)


def build_peft_model(config: T5Config, method: str, device: torch.device, seed: int) -> PeftModel:
    """Random-weight T5 created directly on `device` (fp32 weights), wrapped with the method's peft config."""
    torch.manual_seed(seed)
    with torch.device(device):
        base = T5ForConditionalGeneration(config)
    return get_peft_model(base, METHODS[method]()).to(device)


def make_batch(shape: Shape, vocab_size: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Random input ids (B, T_in), all-ones mask, labels (B, 2) = one label id + eos."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab_size, (shape.batch_size, shape.input_tokens), generator=generator)
    label_ids = torch.tensor(LABEL_IDS)[torch.arange(shape.batch_size) % len(LABEL_IDS)]
    labels = torch.stack([label_ids, torch.full_like(label_ids, EOS_ID)], dim=1)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {name: tensor.to(device) for name, tensor in batch.items()}


def count_matmul_params(base: T5ForConditionalGeneration) -> tuple[int, int]:
    """Linear weights applied once per encoder token and once per decoder token.

    The cross-attention k/v projections sit in the decoder but run over the encoder's output, so they count
    per encoder token; the untied lm_head counts per decoder token. Embeddings and norms do no matmul.
    """
    per_encoder_token = per_decoder_token = 0
    for name, module in base.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name.startswith("encoder.") or name.endswith(("EncDecAttention.k", "EncDecAttention.v")):
            per_encoder_token += module.weight.numel()
        else:
            per_decoder_token += module.weight.numel()
    return per_encoder_token, per_decoder_token


def watch_sequence_lengths(base: T5ForConditionalGeneration) -> dict[str, object]:
    """Hooks that record each stack's sequence length (virtual tokens included) and whether it needs a backward."""
    seen: dict[str, object] = {}

    def hook(stack: str) -> Callable:
        def record(module, inputs, output):  # output: (B, T, d_model)
            seen[f"{stack}_tokens"] = output.shape[1]
            seen[f"{stack}_grad"] = output.requires_grad
        return record

    base.encoder.final_layer_norm.register_forward_hook(hook("encoder"))
    base.decoder.final_layer_norm.register_forward_hook(hook("decoder"))
    return seen


def estimate_step_flops(config: T5Config, matmul_params: tuple[int, int], batch_size: int, seen: dict) -> float:
    """Model FLOPs of one training step with a frozen base.

    Linear layers: forward 2 x params x tokens; backward through a frozen weight needs only the input
    gradient, another 2 x params x tokens (the weight-gradient matmul of the usual 6N rule is skipped), so
    4N per token, or 2N for a stack that needs no backward. Attention (QK^T and AV): forward 4 x T_q x T_k x
    (heads x d_kv) per layer, backward twice that. Virtual tokens count as tokens; prefix keys (50) are left
    out of T_k. Element-wise work (norms, softmax, GELU) and the optimizer are not counted.
    """
    inner, layers = config.num_heads * config.d_kv, config.num_layers
    t_enc, t_dec = seen["encoder_tokens"], seen["decoder_tokens"]
    n_enc, n_dec = matmul_params
    enc_linear, dec_linear = 2 * n_enc * t_enc, 2 * n_dec * t_dec
    enc_attention = 4 * layers * inner * t_enc * t_enc
    dec_attention = 4 * layers * inner * (t_dec * t_dec + t_dec * t_enc)
    enc_pass = 2 if seen["encoder_grad"] else 1  # forward only when nothing trainable feeds the encoder
    per_item = (enc_linear * enc_pass + enc_attention * (3 if seen["encoder_grad"] else 1)
                + dec_linear * 2 + dec_attention * 3)
    return float(per_item * batch_size)


def find_peak_flops(device_name: str) -> float | None:
    """The datasheet's dense bf16 peak for a known GPU name, else None."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


# -----------------------------------------------------------------------------
# timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training_steps(model: PeftModel, batch: dict[str, torch.Tensor], steps: int, warmup: int,
                        bf16: bool) -> tuple[list[float], float]:
    """Seconds of each timed optimizer step (forward + backward + AdamW) after `warmup` steps, and the last loss."""
    device = batch["input_ids"].device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()
    seconds, loss = [], torch.tensor(float("nan"))
    for step in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds, float(loss.detach())


def read_peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in GiB and what it measures."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS of the process so far (ru_maxrss)"


def bench_method(shape: Shape, method: str, device: torch.device, steps: int, warmup: int, bf16: bool,
                 peak_flops: float | None, seed: int = 0) -> dict:
    """Build, time and measure one method; returns its figures."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config = build_t5_config(shape)
    model = build_peft_model(config, method, device, seed)
    base = model.get_base_model()
    seen = watch_sequence_lengths(base)
    seconds, loss = time_training_steps(model, make_batch(shape, config.vocab_size, device, seed), steps, warmup, bf16)
    step_s = statistics.median(seconds)
    flops = estimate_step_flops(config, count_matmul_params(base), shape.batch_size, seen)
    peak_memory_gib, memory_measure = read_peak_memory(device)
    steps_per_run = math.ceil(TRAIN_ITEMS / shape.batch_size) * EPOCHS
    figures = {
        "method": method,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "encoder_tokens_per_item": seen["encoder_tokens"], "decoder_tokens_per_item": seen["decoder_tokens"],
        "encoder_backward": seen["encoder_grad"],
        "step_s_median": step_s, "step_s_min": min(seconds), "step_s_max": max(seconds), "timed_steps": len(seconds),
        "last_loss": loss,
        "peak_memory_gib": peak_memory_gib, "memory_measure": memory_measure,
        "model_tflop_per_step": flops / 1e12, "achieved_tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / peak_flops if peak_flops else None,
        "steps_for_712x5": steps_per_run, "projected_712x5_s": steps_per_run * step_s,
    }
    del model, base
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return figures


# -----------------------------------------------------------------------------
# reporting


def describe_environment(device: torch.device) -> dict:
    """Library versions and the device, printed first and stored with the figures."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
                      f"{torch.get_num_threads()} torch threads"
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cuda": torch.version.cuda, "device": device_name,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return torch.device(requested)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="peftqa bench-reference", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bf16_compute"), default="auto",
                        help="compute, as model.dtype: auto = bf16 autocast on CUDA, fp32 on CPU (default auto)")
    parser.add_argument("--shape", choices=("auto", *SHAPES), default="auto",
                        help="auto: full on CUDA, small on CPU (default auto)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed optimizer steps per method (default 10 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak to divide by for MFU (default: by device name)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0 (got {args.steps}, {args.warmup})")

    device = choose_device(args.device)
    on_cuda = device.type == "cuda"
    shape = SHAPES[args.shape if args.shape != "auto" else ("full" if on_cuda else "small")]
    steps = args.steps or (10 if on_cuda else 3)
    # auto on CPU times fp32, as the committed CPU figures were made. bf16_compute there is about 1.6x faster per train
    # step on CPUs with native bf16 (avx512_bf16, AMX: see reports/bench/cpu-bf16.json) and slower without
    bf16 = compute.use_bf16(args.dtype, device)
    if bf16:
        compute.warn_if_emulated(device.type)
    environment = describe_environment(device)
    peak_flops = (args.peak_tflops * 1e12 if args.peak_tflops
                  else (find_peak_flops(environment["device"]) if on_cuda else None))

    print(" ".join(f"{key} {value}" for key, value in environment.items()))
    if shape.name != "full":
        print(f"SCALED-DOWN SHAPE '{shape.name}', not FLAN-T5-XL: {shape.num_layers}+{shape.num_layers} layers, "
              f"d_model {shape.d_model}, d_ff {shape.d_ff}, {shape.num_heads} heads, batch {shape.batch_size} x "
              f"{shape.input_tokens} tokens. Its figures time this machine, not the reference.")
    print(f"shape {asdict(shape)}; weights fp32, {'bf16 autocast' if bf16 else 'fp32 compute (no autocast)'}; "
          f"{args.warmup} warm-up + {steps} timed steps per method")
    print(f"MFU peak: {peak_flops / 1e12:.0f} TFLOP/s (dense bf16)" if peak_flops else
          "MFU peak: unknown for this device (pass --peak-tflops); MFU not computed")

    rows = []
    for method in METHODS:
        row = bench_method(shape, method, device, steps, args.warmup, bf16, peak_flops)
        rows.append(row)
        print(f"{method}: " + ", ".join(f"{key} {value}" for key, value in row.items() if key != "method"), flush=True)
    print("\nFLOPs: 4 x matmul params x tokens for linear layers (frozen base: no weight-gradient matmuls; 2x for a "
          "stack with no backward) + 3 x attention forward (4 x T_q x T_k x heads x d_kv per layer).\n")
    print(format_reference_table(rows))
    result = {"environment": environment, "shape": asdict(shape), "bf16_autocast": bf16, "weights": "fp32",
              "warmup_steps": args.warmup, "peak_flops": peak_flops,
              "command": " ".join(["peftqa bench-reference", *argv]),
              "methods": rows}
    if args.json:  # renamed into place whole; not peftqa.files' writer, which imports pandas
        args.json.parent.mkdir(parents=True, exist_ok=True)
        partial = args.json.with_name(f".{args.json.name}.tmp")
        partial.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, args.json)
    return result

