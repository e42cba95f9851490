"""The benches (source `measured`): reports/bench/*.json and reports/probe/truncation.json, each written by its
command's --json (`peftqa bench`, `bench-reference`, `bench-cpu`, `probe truncation`, and .ci/fresh-clone), each
record saying what measured it, where and when (`measured_on`). No run is copied in: copy_in is None. Every table is
drawn by the formatter that prints it on the command line, so the two cannot drift apart.
"""
from __future__ import annotations

from pathlib import Path

from peftqa.files import read_json
from peftqa.report.tables import markdown_table
from peftqa.studies.bench_tables import (
    format_bench_table,
    format_cpu_bf16_agreement,
    format_cpu_bf16_speed,
    format_reference_table,
)
from peftqa.studies.run_copy import duration, read_file
from peftqa.studies.shape import Study

BENCH_DIR = Path("reports")  # bench/<name>.json and probe/truncation.json


def measured_on(record: dict) -> str:
    env = record["environment"]
    return (f"Measured on {env['date_utc'][:10]} on {env['device']} (torch {env['torch']}, transformers "
            f"{env['transformers']}, peft {env['peft']}) by `{record['command']}`")


def bench_default(root: Path) -> str:
    record = read_file(root, "bench/default.json", read_json)
    return (f"{measured_on(record)}: `{record['model']}`, max_length {record['max_length']}, {record['items']} test "
            f"items, {record['train_batches']} timed optimizer steps per method, {record['torch_threads']} torch "
            f"thread(s).\n\n{format_bench_table(record['rows'])}")


def bench_reference(root: Path) -> str:
    blocks = []
    for path in sorted((root / "bench").glob("reference_*.json")):
        record = read_json(path)
        shape = record["shape"]
        scaled = "" if shape["name"] == "full" else (
            f" **Scaled-down shape `{shape['name']}`** ({shape['num_layers']} + {shape['num_layers']} layers, d_model "
            f"{shape['d_model']}, batch {shape['batch_size']} x {shape['input_tokens']} tokens): it shows the code "
            "runs, and times this machine, not the reference.")
        blocks.append(f"`{path.relative_to(root.parent)}`: {measured_on(record)}; {record['warmup_steps']} warm-up "
                      f"step(s), {'bf16 autocast' if record['bf16_autocast'] else 'fp32 compute'}.{scaled}\n\n"
                      f"{format_reference_table(record['methods'])}")
    return "\n\n".join(blocks)


def probe_truncation(root: Path) -> str:
    record = read_file(root, "probe/truncation.json", read_json)
    best = max(record["rows"], key=lambda row: row["val_macro_f1"])
    rows = [[row["truncation"], row["max_length"], f"{row['c']:g}",
             f"**{row['val_macro_f1']:.3f}**" if row is best else f"{row['val_macro_f1']:.3f}",
             f"{row['val_loss']:.3f}"] for row in record["rows"]]
    return (f"{measured_on(record)}, {record['wall_s'] // 60} min wall. **Bold**: the best val macro-F1.\n\n"
            + markdown_table(["truncation", "max_length", "C chosen", "val macro-F1", "val log-loss"], rows))


def fresh_clone(root: Path) -> str:
    """README's two commands on a fresh clone, in the order a new user may run them, each timed (.ci/fresh-clone)."""
    record = read_file(root, "bench/fresh_clone.json", read_json)
    rows = [[str(i), f"`{step['command']}`", duration(step["wall_s"]) if step["wall_s"] >= 90
             else f"{step['wall_s']} s", "exit 0" if step["exit"] == 0 else f"**exit {step['exit']}**", step["outcome"]]
            for i, step in enumerate(record["steps"], start=1)]
    chromium = "installed at the start" if record["chromium_at_start"] else "absent at the start"
    return (f"Measured by `{record['script']}` on {record['date_utc'][:10]}, from a fresh clone of commit "
            f"`{record['commit'][:7]}`, on {record['machine']}; Chromium {chromium}. Disk at the end: "
            + ", ".join(f"{name} {mb / 1024:.1f} GiB" if mb >= 1024 else f"{name} {mb} MB"
                        for name, mb in record["disk_mb"].items()) + ".\n\n"
            + markdown_table(["step", "command", "wall", "status", "what it printed"], rows))


def cpu_bf16_agreement(root: Path) -> str:
    """Do bf16 compute and length order change SmolLM2's answers? (peftqa bench-cpu agreement)"""
    record = read_file(root, "bench/cpu-bf16-agreement.json", read_json)
    seeds = read_file(root, "bench/cpu-bf16-seeds.json", read_json)
    return f"{measured_on(record)} at commit `{record['commit']}`, {duration(record['seconds'])}; " + \
        format_cpu_bf16_agreement(record, seeds)


def cpu_bf16_speed(root: Path) -> str:
    """bf16 compute and length groups against fp32 with today's batches (peftqa bench-cpu speed), and the peer."""
    record = read_file(root, "bench/cpu-bf16.json", read_json)
    return f"{measured_on(record)} at commit `{record['commit']}`, {duration(record['seconds'])} in all; " + \
        format_cpu_bf16_speed(record)


MEASURED = Study(name="measured", folder=BENCH_DIR, read=Path, provenance=None,  # each block says what measured it
                 blocks={"default": bench_default, "reference": bench_reference, "truncation": probe_truncation,
                         "fresh-clone": fresh_clone, "cpu-bf16-agreement": cpu_bf16_agreement,
                         "cpu-bf16": cpu_bf16_speed},
                 copy_in=None)
