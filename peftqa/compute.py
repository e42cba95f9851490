"""The precision a model computes in (model.dtype) and what the CPU offers for it.

float32: fp32 weights and compute. bfloat16: the weights themselves in bf16 (the adapter trains in bf16 too).
bf16_compute: fp32 weights, gradients and optimizer state, the matmuls under bf16 autocast, on CPU as on CUDA; the
output head at the positions read (an LM's vocabulary projection, the encoder's classification head) and the label
log-probabilities stay fp32. auto: bf16_compute on CUDA, float32 on CPU; the hardware never picks bf16 on a CPU.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# /proc/cpuinfo flags of native bf16 matmuls: AVX512-BF16 (Zen 4, Cooper Lake and later Xeons) and AMX (Sapphire
# Rapids). Without them, oneDNN emulates bf16 in fp32 and bf16 compute is slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def use_bf16(dtype: str, device: torch.device) -> bool:
    """Whether the model runs under bf16 autocast: bf16_compute anywhere, auto on CUDA (as the reference trained
    FLAN-T5-XL), and bfloat16 (bf16 weights) as it always did."""
    return dtype in ("bf16_compute", "bfloat16") or (dtype == "auto" and device.type == "cuda")


def fp32_weights_bf16_compute(dtype: str, device: torch.device) -> bool:
    """bf16 autocast over fp32 weights: where the output head is kept in fp32 (bf16 weights keep theirs)."""
    return use_bf16(dtype, device) and dtype != "bfloat16"


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def describe(dtype: str, device: torch.device) -> str:
    """What a run records as its compute: fp32 | bf16 autocast, fp32 weights | bf16 weights."""
    if dtype == "bfloat16":
        return "bf16 weights"
    return "bf16 autocast, fp32 weights" if use_bf16(dtype, device) else "fp32"


@functools.cache
def cpu_bf16_support(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's native bf16 instructions, as /proc/cpuinfo names them ("amx_bf16,avx512_bf16"), or "none"."""
    try:
        flags = set(cpuinfo.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return "none"
    return ",".join(flag for flag in BF16_CPU_FLAGS if flag in flags) or "none"


@functools.cache
def warn_if_emulated(device_type: str) -> None:
    """Once per process: bf16 compute on a CPU without native bf16 runs, but slower than fp32."""
    if device_type == "cpu" and cpu_bf16_support() == "none":
        log.warning("model.dtype: bf16_compute on a CPU without native bf16 (no %s in /proc/cpuinfo): it runs, "
                    "emulated, and slower than float32; set model.dtype: float32 on this machine",
                    " or ".join(BF16_CPU_FLAGS))


class FP32Linear(torch.nn.Linear):
    """A Linear (weights fp32) that computes in fp32 under autocast: its input is cast up and autocast is off inside
    it. keep_in_fp32 turns a model's output head into one in place (its weights, ties and hooks kept)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return F.linear(hidden.float(), self.weight, self.bias)


def keep_in_fp32(head: torch.nn.Module) -> None:
    """Make an output head compute in fp32 under autocast. With logits_to_keep an LM head runs at the read positions
    only, so this costs next to nothing, and bf16 rounding of the logits (which moved answers of SmolLM2's zero-shot:
    docs/models.md) is gone. A head that is no plain Linear (an adapter on lm_head) stays under autocast, said once."""
    if type(head) is torch.nn.Linear:
        head.__class__ = FP32Linear
    elif not isinstance(head, FP32Linear):
        log.warning("model.dtype bf16_compute: the output head is a %s, not a Linear; it stays under bf16 autocast",
                    type(head).__name__)
