"""The committed results other than the SmolLM2 study, as docs blocks: the default run, its protocol copies, the
sweeps, the pilot and the benches.

Each source is a folder of committed outputs, read once per rendering (peftqa.studies.docs.SOURCES):
- `default`: the project root, the `make run` that `dvc.lock` records (models/, reports/eval, reports/stats, ...);
- `cv5`, `seeds3`: reports/cv5/ and reports/seeds3/, copies of the protocols stage's tables from two experiments;
- `ablation`: reports/ablation/, the sweeps' tables and the `dvc exp show --json` they were made from;
- `pilot`: reports/smollm2-pilot/, the SmolLM2 recipe pilot's table;
- `official-pilot`: reports/smollm2-official-pilot/, the decisive study's pilot: its phases' tables and choices;
- `bench`: reports/bench/*.json, reports/probe/truncation.json (`peftqa bench|bench-reference|probe ... --json`);
- `matrix`: peftqa/methods/support.py, the family x method data test_learning runs, with the method registry.
Every table is drawn by the code that prints it elsewhere (the report's sections, the study's blocks, the bench's and
the pilot's formatters), so a docs table and its command's output cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import pandas as pd
import yaml

from peftqa import catalog
from peftqa.catalog import Output
from peftqa.files import read_json
from peftqa.params import Params, YamlLoader, parse_params
from peftqa.report.inputs import ProtocolResults
from peftqa.report.sections import cv_section, seeds_section
from peftqa.report.tables import markdown_table
from peftqa.studies import study as studies
from peftqa.studies.bench_tables import (
    format_bench_table,
    format_cpu_bf16_agreement,
    format_cpu_bf16_speed,
    format_reference_table,
)
from peftqa.studies.study import Study, read_file

DEFAULT_DIR, CV5_DIR, SEEDS3_DIR = Path("."), Path("reports/cv5"), Path("reports/seeds3")
ABLATION_DIR, PILOT_DIR = Path("reports/ablation"), Path("reports/smollm2-pilot")
OFFICIAL_PILOT_DIR = Path("reports/smollm2-official-pilot")  # the decisive study's pilot, with phases
BENCH_DIR = Path("reports")  # bench/<name>.json and probe/truncation.json
SWEPT = ("prompt_tuning", "prefix_tuning", "lora")  # the methods reports/ablation/ has a table of


# -----------------------------------------------------------------------------
# default: the committed make run


def default_provenance(study: Study) -> str:
    """What the default tables come from: the run dvc.lock records, its model and settings, and its lock."""
    params, base = study.params, study.summary[study.baseline]
    config = catalog.RESOLVED_CONFIG.read(study.root, method=study.baseline)
    recipes = ", ".join([f"{study.baseline} C = {base['probe_c']:g}"]
                        + [f"{m} lr {params.peft[m].lr:g}" for m in study.tuned])
    size = f"{base['total_params'] / 1e6:.1f}M parameters"
    return (f"From the committed `dvc.lock` and outputs of one `make run` of the default `params.yaml` (the commit "
            f"that holds them: `git log -1 -- dvc.lock`): `{params.model.name_or_path}` ({size}, "
            f"{base['family']} family, {params.model.pooling} pooling), max_length "
            f"{params.model.max_length}, truncation {params.model.truncation}, class weighting "
            f"{params.train.class_weighting}, {params.train.epochs} epoch(s) after the validated start; recipes "
            f"{recipes}; the environment of `requirements/{config['env.lock']}.txt` (sha256 "
            f"`{config['env.lock_sha256'][:12]}…`, `env.lock_sha256` in each `{catalog.RESOLVED_CONFIG.file}`).")


def splits(study: Study) -> str:
    rows = [[split, int(row.n), int(row.yes), int(row.no)] for split, row in study.split_stats.iterrows()]
    return markdown_table(["split", "items", "yes", "no"], rows)


def references(study: Study) -> str:
    """Each reference row, what it chose on val, and its scores."""
    choices = catalog.REFERENCE_CHOICES.read(study.root)

    def chose(row: str) -> str:
        choice = choices[row]
        if "chosen" in choice:
            c = choice["chosen"]
            grams = "word unigrams" if c["ngram_max"] == 1 else f"word 1- to {c['ngram_max']}-grams"
            return f"{grams}, C = {c['c']:g}, class weighting {c['class_weighting']}"
        if "delta" in choice:
            return f"offset δ = {choice['delta']:+.3f}"
        counts = choice["train_counts"]
        return f"always \"{choice['label']}\" ({counts[choice['label']]} of {sum(counts.values())} train items)"

    rows = [[row, chose(row), f"{study.metrics['val'][row]['macro_f1']:.3f}",
             f"{study.metrics['test'][row]['accuracy']:.3f}", f"{study.metrics['test'][row]['macro_f1']:.3f}"]
            for row in study.references]
    return markdown_table(["reference", "chosen on val", "val macro-F1", "test accuracy", "test macro-F1"], rows)


def per_class(study: Study) -> str:
    """Test F1 per class, and speed: items per second batched, and one item at a time (mean and p95)."""
    test = study.metrics["test"]
    rows = [[m, f"{test[m]['f1_no']:.3f}", f"{test[m]['f1_yes']:.3f}", f"{test[m]['examples_per_s']:.1f}",
             f"{test[m]['latency_mean_s']:.4f} / {test[m]['latency_p95_s']:.4f}"] for m in study.methods]
    rows += [[r, f"{test[r]['f1_no']:.3f}", f"{test[r]['f1_yes']:.3f}", "n/a", "n/a"] for r in study.references]
    return markdown_table(["row", "test F1 (no)", "test F1 (yes)", "items/s (batched)",
                           "one item at a time: mean / p95 (s)"], rows)


DEFAULT_BLOCKS: dict[str, Callable[[Study], str]] = {
    "provenance": default_provenance, "splits": splits, "training": studies.training,
    "performance": studies.performance, "comparisons": studies.verdict_detail, "detectable": studies.detectable,
    "references": references, "per-class": per_class,
}


# -----------------------------------------------------------------------------
# cv5, seeds3: the protocols stage's tables, copied out of their experiments


@dataclass(frozen=True)
class ProtocolCopy:
    root: Path
    run: dict  # run.json: the experiment, its commit and command, when and where it ran
    params: Params
    results: ProtocolResults


def read_protocol_copy(root: Path) -> ProtocolCopy:
    """A copy's params.yaml (without its `peft` section, written in a format older than today's parser; the protocol
    tables need none of it), run.json and whichever protocol tables it holds (the others empty)."""
    def params_of(path: Path) -> Params:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=YamlLoader)
        data.pop("peft", None)
        return parse_params(data, str(path))

    def table(output: Output) -> pd.DataFrame:  # the protocols stage's tables, copied flat into `root`
        return pd.read_csv(output.path(into=root)) if output.exists(into=root) else pd.DataFrame()

    return ProtocolCopy(root=root, run=read_file(root, studies.RUN_JSON, read_json),
                        params=read_file(root, "params.yaml", params_of),
                        results=ProtocolResults(*map(table, (catalog.SEEDS_TEST, catalog.SEEDS_SUMMARY,
                                                             catalog.CV_FOLDS, catalog.CV_STATS))))


def protocol_provenance(copy: ProtocolCopy) -> str:
    run = copy.run
    return (f"From the DVC experiment `{run['experiment']}` (commit `{run['commit']}`, queued from the default run's "
            f"commit `{run['baseline_commit']}`), run on {run['started'][:10]} ({run['started'][11:16]} to "
            f"{run['finished'][11:16]}, {studies.duration(run['wall_s'])} wall, {run['trainings']} trainings) on "
            f"{run['machine']}; the tables are copied in [`reports/{copy.root.name}/`]"
            f"(../reports/{copy.root.name}/README.md). Command:"
            f"\n\n```bash\n{run['command']}\n```")


def without_heading(section: str) -> str:
    return section.split("\n\n", 1)[1]


def cv_pooled(copy: ProtocolCopy) -> str:
    """The report's cross-validation section without its heading and its all-pairs tests (cv_comparisons)."""
    results = ProtocolResults(**{**copy.results.__dict__, "cv_stats": pd.DataFrame()})
    return without_heading(cv_section(results, copy.params))


def cv_comparisons(copy: ProtocolCopy) -> str:
    """The pooled paired tests that answer the question: each tuned method against the baseline, and every method
    against each reference row (the stats stage's effect = method − other)."""
    stats, baseline = copy.results.cv_stats, copy.params.stats.baseline
    confidence = f"{copy.params.stats.confidence:.0%}"
    wanted = stats[(stats["reference"] == baseline) | stats["reference"].isin(copy.params.references.names)]
    rows = []
    for (method, other), pair in wanted.groupby(["method", "reference"], sort=False):
        mcnemar = pair[pair["test"] == "mcnemar_exact"].iloc[0]
        boot = {row.metric: row for row in pair[pair["test"] == "paired_bootstrap"].itertuples()}
        rows.append([method, other, studies.effect_ci(boot["accuracy"]), f"{int(mcnemar.b)} / {int(mcnemar.c)}",
                     f"{mcnemar.p_holm:.3f}", studies.effect_ci(boot["macro_f1"])])
    return markdown_table(["method", "against", f"Δ accuracy [{confidence} CI]", "McNemar b / c",
                           "McNemar p (Holm)", f"Δ macro-F1 [{confidence} CI]"], rows)


PROTOCOL_BLOCKS: dict[str, Callable[[ProtocolCopy], str]] = {
    "provenance": protocol_provenance, "cv": cv_pooled, "cv-comparisons": cv_comparisons,
    "seeds": lambda copy: without_heading(seeds_section(copy.results, copy.params)),
}


# -----------------------------------------------------------------------------
# ablation: the sweeps on a committed grid


@dataclass(frozen=True)
class Sweeps:
    tables: dict[str, pd.DataFrame]  # {method: reports/ablation/<method>.csv}
    summaries: dict[str, dict]  # {rev: the train_summary.json of the swept method, from exp_show.json}
    baseline_rev: str


def read_sweeps(root: Path) -> Sweeps:
    exp_show = read_file(root, "exp_show.json", read_json)
    baseline = next(entry for entry in exp_show if entry["rev"] != "workspace")
    revs = [baseline] + [rev for exp in baseline["experiments"] for rev in exp["revs"]]
    summaries = {rev["rev"]: {path: data["data"] for path, data in rev["data"]["metrics"].items()} for rev in revs}
    return Sweeps(tables={m: read_file(root, f"{m}.csv", pd.read_csv) for m in SWEPT}, summaries=summaries,
                  baseline_rev=baseline["rev"])


def sweep_table(sweeps: Sweeps, method: str) -> str:
    """One row per grid point of `method`: its swept values, val and test scores, the kept epoch, and the val
    choice (test is shown, never chosen on)."""
    table = sweeps.tables[method]
    swept = [column for column in table.columns if column.startswith(f"peft.{method}.")]
    rows = []
    for row in table.sort_values(swept).to_dict("records"):
        rev = next(rev for rev in sweeps.summaries if rev.startswith(row["rev"]))
        summary = sweeps.summaries[rev][str(catalog.TRAIN_SUMMARY.path(method=method))]
        rows.append([*(format_value(row[column]) for column in swept), f"{row['val_macro_f1']:.3f}",
                     f"{row['test_accuracy']:.3f}", f"{row['test_macro_f1']:.3f}", summary["best_epoch"],
                     f"{summary['train_seconds']:.0f}", "yes" if row["chosen"] else ""])
    return markdown_table([*(column.rsplit(".", 1)[1] for column in swept), "val macro-F1", "test accuracy",
                           "test macro-F1", "best epoch", "train seconds", "chosen (val)"], rows)


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def sweeps_provenance(sweeps: Sweeps) -> str:
    points, experiments = sum(len(table) for table in sweeps.tables.values()), len(sweeps.summaries) - 1
    return (f"From `reports/ablation/exp_show.json`: the `dvc exp show --json` of the sweep's experiments, all queued "
            f"from commit `{sweeps.baseline_rev[:7]}`, which also committed the grid; {points} grid points in "
            f"{experiments} experiments (the baseline's own values are a point of each table). Rebuild the tables "
            "without the experiment refs: `peftqa ablation "
            f"--grid reports/ablation/grid.yaml --json-file reports/ablation/exp_show.json --rev "
            f"{sweeps.baseline_rev[:7]}`.")


ABLATION_BLOCKS: dict[str, Callable[[Sweeps], str]] = {
    "provenance": sweeps_provenance, **{m: (lambda sweeps, m=m: sweep_table(sweeps, m)) for m in SWEPT},
}


# -----------------------------------------------------------------------------
# pilot, benches and the truncation probe: tables their commands print, from the JSON or CSV they wrote


def read_pilot(root: Path) -> pd.DataFrame:
    return read_file(root, "table.csv", pd.read_csv)


def pilot_table(table: pd.DataFrame) -> str:
    from peftqa.studies.pilot import format_table

    return format_table(table)


def read_official_pilot(root: Path) -> tuple[object, Path]:
    from peftqa.studies.pilot import load_pilot_grid
    return load_pilot_grid(root / "grid.yaml"), root


def official_pilot_tables(pilot: tuple[object, Path]) -> str:
    from peftqa.studies.pilot import pilot_markdown
    return pilot_markdown(*pilot)


def official_pilot_choices(pilot: tuple[object, Path]) -> str:
    from peftqa.studies.pilot import format_settings, full_run_settings
    return format_settings(full_run_settings(*pilot))


OFFICIAL_PILOT_BLOCKS = {"tables": official_pilot_tables, "choices": official_pilot_choices}


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
    rows = [[str(i), f"`{step['command']}`", studies.duration(step["wall_s"]) if step["wall_s"] >= 90
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
    return f"{measured_on(record)} at commit `{record['commit']}`, {studies.duration(record['seconds'])}; " + \
        format_cpu_bf16_agreement(record, seeds)


def cpu_bf16_speed(root: Path) -> str:
    """bf16 compute and length groups against fp32 with today's batches (peftqa bench-cpu speed), and the peer."""
    record = read_file(root, "bench/cpu-bf16.json", read_json)
    return f"{measured_on(record)} at commit `{record['commit']}`, {studies.duration(record['seconds'])} in all; " + \
        format_cpu_bf16_speed(record)

MEASURED_BLOCKS: dict[str, Callable[[Path], str]] = {
    "default": bench_default, "reference": bench_reference, "truncation": probe_truncation, "fresh-clone": fresh_clone,
    "cpu-bf16-agreement": cpu_bf16_agreement, "cpu-bf16": cpu_bf16_speed,
}


# -----------------------------------------------------------------------------
# matrix: peftqa/methods/support.py, the family x method data test_learning runs, and the registry


def read_matrix(folder: Path) -> ModuleType:
    """peftqa/methods/support.py, loaded by path from the folder rendered (the docs check renders copies)."""
    path = folder / "support.py"
    spec = importlib.util.spec_from_file_location("method_support", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matrix_cell(matrix: ModuleType, family: str, method: str) -> str:
    if (family, method) in matrix.REFUSED:
        return f"refused: {matrix.REFUSED[family, method][1]}"
    lr, epochs = matrix.RECIPES[family][method]
    recipe = f"lr {lr:g}, {epochs} epochs"
    return f"xfail ({recipe})" if (family, method) in matrix.CANNOT_LEARN else f"learns ({recipe})"


def matrix_table(matrix: ModuleType) -> str:
    families = list(matrix.KINDS)
    header = ["method", *(f"{family} ({kind})" for family, kind in matrix.KINDS.items())]
    rows = [[f"`{method}`", *(matrix_cell(matrix, family, method) for family in families)]
            for method in matrix.TRAINED_METHODS]
    return markdown_table(header, rows)


def methods_table(matrix: ModuleType) -> str:
    """One row per registered method: its paper, what it trains, its knobs, where it comes from and the families
    the matrix shows it serving."""
    from peftqa.methods import registry as methods
    from peftqa.methods.shared import build_no_adapter

    def knobs(entry: methods.Method) -> str:
        names = [f.name for f in dataclasses.fields(entry.knobs) if f.name not in ("lr", "head_lr")]
        return ", ".join(f"`{name}`" for name in names) or "(lr only)"

    def source(entry: methods.Method) -> str:
        if entry.native is not None:
            return "peftqa (native)"
        return "peftqa (no adapter)" if entry.build is build_no_adapter else "peft"

    def serves(name: str) -> str:
        if name not in matrix.TRAINED_METHODS:
            return "all"
        return ", ".join(family for family in matrix.KINDS if (family, name) not in matrix.REFUSED)

    rows = [[f"`{name}`", entry.paper or "", entry.describe(has_head=True).split(": ", 1)[-1], knobs(entry),
             source(entry), serves(name)] for name, entry in methods.REGISTRY.items()]
    return markdown_table(["method", "paper", "what trains", "knobs (besides lr, head_lr)", "from", "families"], rows)


MATRIX_DIR = Path("peftqa/methods")
MATRIX_BLOCKS: dict[str, Callable[[ModuleType], str]] = {"table": matrix_table, "methods": methods_table}
