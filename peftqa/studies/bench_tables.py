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


# the targets of the CPU bf16 issue: "both" (bf16 compute and length groups) against fp32 with today's batches
CPU_BF16_TARGETS = {(256, "train_speedup"): 1.5, (256, "score_speedup"): 1.7, (512, "train_speedup"): 1.8}
PEER_TARGETS = {"fp32, length order": 1.0, "bf16 compute, length order": 1.5}  # peftqa's speed over lm-eval's


def target_note(value: float, target: float | None) -> str:
    if target is None:
        return ""
    return f" (target {target:g}x: met)" if value >= target else f" (target {target:g}x: **missed**)"


def format_cpu_bf16_agreement(record: dict, seeds: dict) -> str:
    """reports/bench/cpu-bf16-agreement.json as a sentence and a table, each change's answers against fp32; then
    cpu-bf16-seeds.json's rows, the same fp32 training with another seed, which the trained rows are read against."""
    from peftqa.report.tables import markdown_table  # imports pandas: only where the docs render
    rows = [[row["model"] + (f": {row['what']}" if row.get("what") else ""), row["items_from"], row["change"],
             f"{row['label_agreement']:.1%} ({row['labels_differing']} of {row['items']} differ)",
             f"{row['median_abs_delta_p_yes']:.4f} / {row['max_abs_delta_p_yes']:.4f}",
             f"{row['macro_f1_fp32']:.3f}", f"{row['macro_f1']:.3f}",
             f"{row['macro_f1'] - row['macro_f1_fp32']:+.3f}"] for row in [*record["rows"], *seeds["rows"]]]
    return (f"SmolLM2-135M-Instruct with its chat template at max_length {record['max_length']}, against fp32 in file "
            f"order (the last {len(seeds['rows'])} rows: `{seeds['command']}` at commit `{seeds['commit']}`, "
            f"{seeds['environment']['date_utc'][:10]}, against the fp32 training with train.seed 42). CPU bf16 "
            f"instructions: {record['cpu_bf16']}. A target of the issue: labels equal on at least 97% of the items "
            "and macro-F1 within 0.01.\n\n"
            + markdown_table(["model", "items", "change", "labels equal to fp32", "median / max |Δ p_yes|",
                              "macro-F1, fp32", "macro-F1, changed", "Δ macro-F1"], rows))


def format_cpu_bf16_speed(record: dict) -> str:
    """reports/bench/cpu-bf16.json: each change's speed-up against fp32 with today's batches, training and scoring,
    the padding they remove, and the lm-evaluation-harness peer."""
    from peftqa.report.tables import markdown_table  # imports pandas: only where the docs render
    rows = []
    for row in record["rows"]:
        kind = "score_speedup" if row["score_speedup"] is not None else "train_speedup"
        target = CPU_BF16_TARGETS.get((row["max_length"], kind)) if row["change"] == "both" else None
        agreement = "" if row["label_agreement"] is None else f"{row['label_agreement']:.1%}"
        rows.append([row["max_length"], row["method"] + (" (scoring)" if kind == "score_speedup" else " (training)"),
                     row["change"], f"{row[kind]:.2f}x" + target_note(row[kind], target),
                     f"{row['items_per_s_fp32']:.2f} → {row['items_per_s']:.2f}",
                     f"{row['median_step_s_fp32']:.2f} → {row['median_step_s']:.2f}", agreement])
    padding = [[row["max_length"], f"{row['split']} ({row['items']} items, batches of {row['batch_size']})",
                f"{row['today']:.3f}", f"{row['grouped']:.3f}"] for row in record["padding"]]
    peer = record["peer"]
    peer_rows = []
    for row in peer["rows"]:
        target = next((t for name, t in PEER_TARGETS.items() if name in row["scorer"]), None)
        peer_rows.append([row["scorer"], f"{row['items_per_s']:.2f}", f"{row['vs_lm_eval']:.2f}x"
                          + target_note(row["vs_lm_eval"], target), f"{row['label_agreement']:.1%}",
                          f"{row['max_abs_margin_difference']:.1e}"])
    first = record["rows"][0]
    return (f"CPU bf16 instructions: {record['cpu_bf16']}. Training: {first['items']} real train items per row, in "
            f"batches of {first['batch_size']}, {first['timed_steps']} timed optimizer steps after a warm-up step; "
            "scoring: the zero-shot model on the test items, in batches of the same size. A speed-up is items per "
            "second over the same items against fp32 with today's batches, measured in the same run (length groups "
            "change which items share a batch, so the whole pass is compared; the median step is shown too). "
            "Label agreement: the agreement part's figure for that change (above), where it measured one.\n\n"
            + markdown_table(["max_length", "what", "change", "speed-up", "items/s, fp32 → changed",
                              "median step (s), fp32 → changed", "labels equal to fp32"], rows)
            + "\n\nPadding: padded tokens over real tokens (1.000 is none), today's batches against batches of "
            "similar length; train in epoch 1's order.\n\n"
            + markdown_table(["max_length", "batches", "today", "length groups"], padding)
            + f"\n\nThe peer, in the same run: zero-shot scoring of the same {peer['items']} test items with the "
            f"same {peer['template']} prompt, whole (max_length {peer['max_length']}, nothing cut); lm-evaluation-"
            f"harness in its own venv (requirements/lm-eval.txt; its model load, {peer['lm_eval_load_seconds']:.0f} s, "
            "not counted), each a single timed pass.\n\n"
            + markdown_table(["scorer", "items/s", "against lm-eval", "labels equal to lm-eval's",
                              "max |Δ margin|"], peer_rows))

