"""`peftqa bench-cpu profile`: where a SmolLM2 LoRA training step goes, as torch.profiler's top operators."""
from __future__ import annotations

import pandas as pd
import torch

from peftqa.evaluation.scoring import autocast
from peftqa.methods.attach import load_backbone
from peftqa.params import Params
from peftqa.training.loop import set_seed

ATTENTION_OPS = ("scaled_dot_product", "_flash_attention")  # SDPA's CPU kernels, forward and backward


def profile_step(params: Params, train: pd.DataFrame, seed: int) -> tuple[str, dict]:
    """torch.profiler's top operators (self CPU time) of one LoRA training step, batch 8 of real train items,
    after a warm-up step; and the step's shares: matmuls, attention, LoRA's dropout, the rest."""
    from torch.profiler import ProfilerActivity, profile

    set_seed(seed)
    backbone = load_backbone(params.model, "lora", params.peft, params.prepare.labels, seed=seed, device="cpu")
    rows = train.sample(n=params.train.batch_size, random_state=seed)
    bf16 = params.model.dtype == "bf16_compute"
    optimizer = torch.optim.AdamW(backbone.trainable_parameters(), lr=params.peft.lora.lr)
    backbone.model.train()

    def step() -> None:
        with autocast(backbone.device, bf16):
            loss = backbone.loss(backbone.encode(rows["question"].tolist(), rows["context"].tolist(),
                                                 rows["label"].tolist()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    averages = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    share = {"matmul (aten::mm, addmm, bmm)": sum(e.self_cpu_time_total for e in averages
                                                  if e.key in ("aten::mm", "aten::addmm", "aten::bmm")),
             "attention (SDPA flash kernels, fwd + bwd)": sum(e.self_cpu_time_total for e in averages
                                                             if any(op in e.key for op in ATTENTION_OPS)),
             "LoRA dropout (aten::bernoulli_)": sum(e.self_cpu_time_total for e in averages
                                                  if e.key == "aten::bernoulli_")}
    share["everything else"] = total - sum(share.values())
    shares = {name: value / total for name, value in share.items()}
    table = averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60)
    return table, {"max_length": params.model.max_length, "dtype": params.model.dtype, "step_s": total / 1e6,
                   "shares": shares, "attention_implementation": backbone.model.config._attn_implementation}


def profile_report(profiles: list[Params], train: pd.DataFrame, header: dict, seed: int, progress) -> str:
    """One profiled step per profile (max_length x model.dtype), the shares first, then each operator table."""
    parts, summary = [], []
    for params in profiles:
        max_length, dtype = params.model.max_length, params.model.dtype
        progress(f"profiling a LoRA step, {max_length} tokens, {dtype}")
        table, found = profile_step(params, train, seed)
        summary.append(found)
        parts.append(f"## {max_length} tokens, model.dtype {dtype}\n\nSelf CPU time of the step's operators "
                     f"(one step of {params.train.batch_size} train items after a warm-up; attention: "
                     f"`{found['attention_implementation']}`):\n\n```\n{table}```\n")
    shares = pd.DataFrame([{"max_length": f["max_length"], "dtype": f["dtype"], "step (s)": round(f["step_s"], 2),
                            **{name: f"{value:.1%}" for name, value in f["shares"].items()}} for f in summary])
    return (f"# Where a SmolLM2 LoRA training step goes (`{header['command']}`)\n\n"
            f"Written at commit `{header['commit']}` on {header['environment']['date_utc']} UTC, "
            f"{header['environment']['device']}, CPU bf16: {header['cpu_bf16']}; "
            f"torch {header['environment']['torch']}."
            f"\n\n## Shares of the step\n\n{shares.to_markdown(index=False)}\n\n" + "\n".join(parts))
