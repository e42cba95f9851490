"""A copied run (`RunCopy`), and the tables and verdict that `peftqa docs` renders from it.

A whole pipeline run copied out of its DVC experiment into a folder laid out like the project root (reports/smollm2/:
params.yaml, dvc.lock, run.json, models/<method>/..., reports/...; peftqa.studies.shape.copy_whole_run), so that its
numbers outlive the workspace that made them. This module reads such a folder and renders the tables every study of a
whole run shares (smollm2, official, default); it never recomputes what the pipeline wrote, except each row's own
bootstrap interval, drawn as the report's performance bars draw it (the stats stage's resamples and seed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from peftqa import catalog
from peftqa.catalog import Output
from peftqa.errors import PeftqaError
from peftqa.evaluation.stats import (
    ADD_ONE_NOTE,
    defined_references,
    holm_family_size,
    mcnemar_detectable_difference,
    mcnemar_exact_floor,
    with_add_one_bootstrap_p,
)
from peftqa.files import read_json
from peftqa.params import FEW_SHOT, Params, load_params
from peftqa.report.figures import performance_intervals
from peftqa.report.findings import DETECT_ALPHA, DETECT_POWER, dominant_prediction, format_detectable, stats_row
from peftqa.report.tables import markdown_table, p_clause, reference_label

RUN_JSON = "run.json"  # what made the study: the command, the commit, the machine, when and how long
CV_FOLDS = 5  # what would decide: the k-fold protocol tests every one of the 890 items once


@dataclass(frozen=True)
class RunCopy:
    """One copied run: its params and run record, and per row (method or reference row) what the pipeline wrote."""
    root: Path
    run: dict  # run.json; {} where there is none
    params: Params
    metrics: dict[str, dict[str, dict]]  # {split: {row: metrics_<split>.json}}
    preds: dict[str, pd.DataFrame]  # {row: preds_test.csv}
    summary: dict[str, dict]  # {method: train_summary.json}
    history: dict[str, pd.DataFrame]  # {method: history.csv}
    stats: pd.DataFrame
    references: tuple[str, ...]  # the reference rows the run defined
    split_stats: pd.DataFrame  # data/processed/split_stats.csv: n per split

    @property
    def methods(self) -> tuple[str, ...]:
        return self.params.methods

    @property
    def baseline(self) -> str:
        return self.params.stats.baseline

    @property
    def tuned(self) -> list[str]:
        return [m for m in self.methods if m != self.baseline]

    @property
    def n_test(self) -> int:
        return int(self.metrics["test"][self.baseline]["n"])

    def n_split(self, split: str) -> int:
        return int(self.split_stats.loc[split, "n"])


def read_file(root: Path, relative: str | Path, reader: Callable[[Path], object]) -> object:
    """One file of the study; a missing one names the study and the file (the copy is incomplete)."""
    path = root / relative
    try:
        return reader(path)
    except FileNotFoundError:
        raise PeftqaError(f"study {root}: {relative} is missing; copy it from the experiment's workspace "
                          f"(see {root / 'README.md'})") from None


def read_output(root: Path, output: Output, **fields: object) -> object:
    """One pipeline output of the study, read by the catalog; a missing one names the study and the file."""
    return read_file(root, output.path(**fields), lambda path: output.read(root, **fields))


def read_run_copy(root: str | Path) -> RunCopy:
    """Read a copied run: params.yaml, run.json (optional: the project root's own run has none; dvc.lock and git
    record it), and every method's and reference row's outputs."""
    root = Path(root)
    params = read_file(root, "params.yaml", load_params)
    references = tuple(defined_references(params.references.names, read_output(root, catalog.REFERENCE_CHOICES)))
    rows = [*params.methods, *references]
    def of_row(row: str, output: Output, reference_output: Output, split: str) -> object:  # a method's or reference's
        kind, output = ("reference", reference_output) if row in references else ("method", output)
        return read_output(root, output, split=split, **{kind: row})

    return RunCopy(
        root=root, run=read_file(root, RUN_JSON, read_json) if (root / RUN_JSON).exists() else {}, params=params,
        metrics={split: {row: of_row(row, catalog.METRICS, catalog.REFERENCE_METRICS, split) for row in rows}
                 for split in catalog.SCORED_SPLITS},
        preds={row: of_row(row, catalog.PREDS, catalog.REFERENCE_PREDS, "test") for row in rows},
        summary={m: read_output(root, catalog.TRAIN_SUMMARY, method=m) for m in params.methods},
        history={m: read_output(root, catalog.HISTORY, method=m) for m in params.methods},
        stats=read_stats(root, params), references=references,
        split_stats=read_output(root, catalog.SPLIT_STATS).set_index("split"))


def read_stats(root: Path, params: Params) -> pd.DataFrame:
    """The stats stage's table; one written before the add-one mend of bootstrap p-values (its prose says so: the
    note is not in its markdown twin) gets them as the stage now computes them (with_add_one_bootstrap_p)."""
    table = read_output(root, catalog.STATS)
    if ADD_ONE_NOTE in read_output(root, catalog.STATS_MD):
        return table
    return with_add_one_bootstrap_p(table, params.stats.n_bootstrap)


# -----------------------------------------------------------------------------
# the blocks: each a function of the study, returning markdown


def row_label(study: RunCopy, row: str) -> str:
    if row in study.references:
        return reference_label(row)
    return f"{row} (zero-shot)" if row == study.baseline and not study.summary[row]["trainable_params"] else row


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def provenance(study: RunCopy) -> str:
    """Which run the tables come from, and its settings that a reader must know to read them."""
    run, params = study.run, study.params
    lrs = ", ".join(f"{m} {params.peft[m].lr:g}" for m in study.tuned)
    limit = params.train.limit_train or "all"
    return (f"From the DVC experiment `{run['experiment']}`, run from commit `{run['commit'][:7]}` on "
            f"{run['started'][:10]} ({run['started'][11:16]} to {run['finished'][11:16]} UTC, "
            f"{duration(run['wall_s'])} wall) on {run['machine']}: `{params.model.name_or_path}`, "
            f"train.limit_train {params.train.limit_train} ({limit} train items), evaluate.limit_items "
            f"{params.evaluate.limit_items} ({study.metrics['val'][study.baseline]['n']} val and {study.n_test} test "
            f"items), {params.train.epochs} epoch(s) after the validated start, max_length {params.model.max_length}, "
            f"batch {params.train.batch_size}, learning rates {lrs}. Command:\n\n```bash\n{run['command']}\n```")


def performance(study: RunCopy) -> str:
    """Test accuracy and macro-F1 with each row's bootstrap interval, val macro-F1, and what each method trained."""
    intervals = performance_intervals(study.preds, study.params.prepare.labels, study.params.stats)
    level = f"{study.params.stats.confidence:.0%}"

    def scored(row: str, metric: str) -> str:
        low, high = intervals[row][metric]
        return f"{study.metrics['test'][row][metric]:.3f} [{low:.3f}, {high:.3f}]"

    rows = []
    for row in [*study.methods, *study.references]:
        summary = study.summary.get(row)
        label, share = dominant_prediction(study.preds[row])
        rows.append([row_label(study, row), f"{summary['trainable_params']:,}" if summary else "—",
                     summary["best_epoch"] if summary else "—", f"{study.metrics['val'][row]['macro_f1']:.3f}",
                     scored(row, "accuracy"), scored(row, "macro_f1"), f"{label} {share:.0%}"])
    return markdown_table(["row", "trainable params", "best epoch", "val macro-F1", f"test accuracy [{level} CI]",
                           f"test macro-F1 [{level} CI]", "its most frequent test answer"], rows)


def answer(boot: pd.Series, confidence: float, short: bool = False) -> str:
    """'lift' / 'below' only when the paired bootstrap CI of the difference excludes 0, else 'undecidable at this
    size (n=…)' ('undecidable' when `short`); Holm's caveat where the adjusted p is not below 1 - confidence."""
    if boot.ci_low <= 0 <= boot.ci_high:
        return "undecidable" if short else f"undecidable at this size (n={int(boot.n)})"
    word = "lift" if boot.ci_low > 0 else "below"
    return word + (" (suggestive only after Holm)" if boot.p_holm >= 1 - confidence else "")


def comparators(study: RunCopy) -> list[str]:
    return [study.baseline, *study.references]


def verdict_summary(study: RunCopy) -> str:
    """One row per tuned method, one column per comparator: the answer on macro-F1, then on accuracy."""
    confidence = study.params.stats.confidence

    def cell(method: str, other: str) -> str:
        f1, accuracy = (answer(stats_row(study.stats, method, other, "paired_bootstrap", metric), confidence, True)
                        for metric in ("macro_f1", "accuracy"))
        return f"{f1} / {accuracy}"

    rows = [[method, *(cell(method, other) for other in comparators(study))] for method in study.tuned]
    return markdown_table(["method (macro-F1 / accuracy)", *(f"over {row_label(study, other)}"
                                                            for other in comparators(study))], rows)


def effect_ci(row: pd.Series) -> str:
    return f"{row.effect:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"


def verdict_detail(study: RunCopy) -> str:
    """Every tuned method against the baseline and each reference row. The answer is decided on macro-F1 by the
    paired bootstrap (its CI, and its Holm p for the caveat), so that p stands beside it; accuracy's columns, with
    McNemar's p, follow, each column naming its metric."""
    confidence = study.params.stats.confidence
    rows = []
    for method in study.tuned:
        for other in comparators(study):
            boot = stats_row(study.stats, method, other, "paired_bootstrap", "macro_f1")
            accuracy = stats_row(study.stats, method, other, "paired_bootstrap", "accuracy")
            mcnemar = stats_row(study.stats, method, other, "mcnemar_exact", "accuracy")
            rows.append([method, row_label(study, other), effect_ci(boot), p_clause(boot.p_value, boot.p_holm),
                         answer(boot, confidence), effect_ci(accuracy), f"{int(mcnemar.b)} / {int(mcnemar.c)}",
                         p_clause(mcnemar.p_value, mcnemar.p_holm)])
    level = f"{confidence:.0%}"
    table = markdown_table(["method", "against", f"Δ macro-F1 [{level} CI]", "macro-F1: bootstrap p (Holm)",
                            "answer, on macro-F1", f"Δ accuracy [{level} CI]", "accuracy: b / c",
                            "accuracy: McNemar exact p (Holm)"], rows)
    return (f"{table}\n\nThe answer is decided on macro-F1: the paired bootstrap's {level} CI, and its Holm p. Holm "
            f"adjusts within each (test, metric) family: the {holm_family_size(study.stats)} comparisons of one test "
            "on one metric that the stats stage made (this table shows the tuned methods' rows of them).")


def detectable(study: RunCopy) -> str:
    """What the test items can decide: the exact McNemar floor, and per comparison the smallest accuracy difference
    the exact test finds with 80% power at its observed discordance, alone and at Holm's strictest step, on this test
    split and on all items under k-fold CV."""
    n, n_all = study.n_test, int(study.split_stats["n"].sum())  # k-fold CV tests every item once
    floor, family = mcnemar_exact_floor(DETECT_ALPHA), holm_family_size(study.stats)
    strictest = DETECT_ALPHA / family

    def smallest(items: int, rate: float, alpha: float) -> str:
        return format_detectable(mcnemar_detectable_difference(items, rate, alpha, DETECT_POWER))

    rows = []
    for method in study.tuned:
        for other in comparators(study):
            row = stats_row(study.stats, method, other, "mcnemar_exact", "accuracy")
            rate = (row.b + row.c) / n
            boot = stats_row(study.stats, method, other, "paired_bootstrap", "macro_f1")
            rows.append([method, row_label(study, other), f"{rate:.3f}", smallest(n, rate, DETECT_ALPHA),
                         smallest(n, rate, strictest), smallest(n_all, rate, DETECT_ALPHA),
                         f"{boot.ci_high - boot.ci_low:.3f}"])
    table = markdown_table(["method", "against", "discordance (b+c)/n",
                            f"smallest detectable Δ accuracy, n={n}", f"the same at Holm's strictest step, n={n}",
                            f"the same, n={n_all} ({CV_FOLDS}-fold CV)", "width of the Δ macro-F1 CI"], rows)
    cost = (f" and trains every method {CV_FOLDS} times: about {CV_FOLDS} × this run's "
            f"{duration(study.run['wall_s'])}, {duration(CV_FOLDS * study.run['wall_s'])} on the same machine"
            if "wall_s" in study.run else f" and trains every method {CV_FOLDS} times")
    return (f"The exact McNemar test at α = {DETECT_ALPHA:.2f} needs at least {floor} discordant items, all one "
            f"way, to call any difference: on n = {n} that is an accuracy gap of {floor / n:.3f} at the very least. "
            f"The table gives, per comparison, the smallest accuracy difference the two-sided exact McNemar test "
            f"detects with {DETECT_POWER:.0%} power at the discordance observed here (its exact power, summed over "
            f"every count and split of discordant items; 'none': not even a method winning every discordant item): "
            f"at α = {DETECT_ALPHA:.2f}, at Holm's strictest step over the family's {family} comparisons "
            f"(α / {family} = {strictest:.4f}), and on all {n_all} items.\n\n{table}\n\n"
            f"{CV_FOLDS}-fold cross-validation (`prepare.folds: {CV_FOLDS}`) tests all {n_all} items once{cost}.")


def scored_rows(study: RunCopy) -> dict[str, dict[str, dict]]:
    """{row: {split: metrics}} of every row a model scored: the methods (evaluate's metrics) and the reference rows
    with a stage of their own (few_shot's, with its throughput and greedy answers)."""
    rows = {m: {split: study.metrics[split][m] for split in ("val", "test")} for m in study.methods}
    if FEW_SHOT in study.references:
        rows[FEW_SHOT] = {split: read_output(study.root, catalog.FEW_SHOT_METRICS, split=split)
                          for split in catalog.SCORED_SPLITS}
    return rows


def generate(study: RunCopy) -> str:
    """The greedy answers: the share that map to a label, and the share that agree with the verbalizer."""
    def share(metrics: dict, key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    rows = [[row_label(study, row), *(share(by_split[split], key) for split in ("val", "test")
                                      for key in ("generate_parse_rate", "generate_agreement"))]
            for row, by_split in scored_rows(study).items()]
    return markdown_table(["row", "val parse rate", "val agreement", "test parse rate", "test agreement"], rows)


def training(study: RunCopy) -> str:
    """Per method: val macro-F1 at the start and at the kept epoch, a flag where the start was kept, and time. An
    epoch's seconds in history.csv include its val pass; epoch 0's are that pass alone, so the training itself is
    the difference, per item of the train split."""
    n_train = study.params.train.limit_train or study.n_split("train")
    rows = []
    for method in study.methods:
        summary, history = study.summary[method], study.history[method].set_index("epoch")
        val_seconds = history.loc[0, "seconds"]
        trained = history.loc[history.index > 0, "seconds"]
        per_item = f"{(trained.mean() - val_seconds) / n_train:.2f}" if len(trained) else "—"
        kept_start = summary["best_epoch"] == 0 and summary["epochs_run"] > 0
        rows.append([method, summary["epochs_run"], f"{history.loc[0, 'val_macro_f1']:.3f}",
                     f"{summary['best_val_macro_f1']:.3f}", summary["best_epoch"],
                     "**kept its untrained start**" if kept_start else "", f"{summary['train_seconds']:.0f}",
                     f"{val_seconds:.0f}", per_item])
    return markdown_table(["method", "epochs run", "val macro-F1 at the start", "best val macro-F1", "best epoch",
                           "note", "train seconds", "one val pass (s)", "s per trained item"], rows)


def speed(study: RunCopy) -> str:
    """Seconds per item scored: batched (the whole split) and one at a time (the timed first items; few_shot times
    none)."""
    def latency(metrics: dict, key: str) -> str:
        return f"{metrics[key]:.2f}" if key in metrics else "n/a"

    rows = [[row_label(study, row), *(f"{1 / by_split[split]['examples_per_s']:.2f}" for split in ("val", "test")),
             latency(by_split["test"], "latency_mean_s"), latency(by_split["test"], "latency_p95_s")]
            for row, by_split in scored_rows(study).items()]
    return markdown_table(["row", "val s/item (batched)", "test s/item (batched)", "one at a time: mean (s)",
                           "p95 (s)"], rows)


def shell_lines(command: str) -> str:
    """A long command as a bash code block, continued before each `-S` that would pass the README's width."""
    lines = [""]
    for part in re.split(r" (?=-S )", command):
        if lines[-1] and len(lines[-1]) + len(part) > 100:
            lines.append("  ")
        lines[-1] += ("" if lines[-1].strip() == "" else " ") + part
    return "```bash\n" + " \\\n".join(lines) + "\n```"




RUN_BLOCKS: dict[str, Callable[[RunCopy], str]] = {  # a whole run's blocks, by the name after its study's prefix
    "performance": performance, "verdict": verdict_summary, "verdict-detail": verdict_detail,
    "detectable": detectable, "generate": generate, "training": training, "speed": speed,
}
