"""The benches' tables: printed by `peftqa bench` and `peftqa bench-reference`, and rendered by `peftqa docs` from the
JSON files they write (reports/bench/), so the docs show what the command printed. It imports nothing heavy: the
docs render without torch, and bench-reference runs without pandas.
"""
from __future__ import annotations


def format_bench_table(rows: list[dict]) -> str:
    """The bench's markdown table: one row per measurement, its rates, latencies and ratios (blank where none; a
    column no row has, such as "before" outside the causal family, is left out)."""
    import pandas as pd  # here, not at the top: bench-reference imports this module, and never pandas

    names = {"what": "measurement", "examples_per_s": "examples/s", "before_examples_per_s": "before (examples/s)",
             "speedup": "speed-up", "latency_mean_s": "latency mean (s)", "latency_p95_s": "latency p95 (s)",
             "vs_batched": "speed vs batched"}
    table = pd.DataFrame(rows).dropna(axis=1, how="all").rename(columns=names)
    return table.astype(object).where(table.notna(), None).to_markdown(index=False, floatfmt=".3f", missingval="")


def format_reference_table(rows: list[dict]) -> str:
    """`peftqa bench-reference`'s markdown table of the headline figures, one row per method."""
    header = ("| method | trainable params | s / step (median) | peak memory (GiB) | model TFLOP / step "
              "| TFLOP/s | MFU | projected 712 x 5 epochs |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = [header]
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        lines.append(f"| {row['method']} | {row['trainable_params']:,} | {row['step_s_median']:.4f} "
                     f"| {row['peak_memory_gib']:.2f} | {row['model_tflop_per_step']:.4g} "
                     f"| {row['achieved_tflops']:.3g} | {mfu} "
                     f"| {row['projected_712x5_s'] / 60:.1f} min ({row['steps_for_712x5']} steps) |")
    return "\n".join(lines)
