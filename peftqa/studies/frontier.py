"""The methods frontier (reports/methods-cv5/): every method that serves the default model, each at the learning rate
chosen on the main split's val from a committed grid, then trained on 5 folds by the protocols stage. The readers
load a copy; the functions after them are pure: the table (one row per method: its size, its cost, its pooled
scores and its difference from the probe) and the figure (pooled macro-F1 against trainable parameters).
`peftqa frontier` copies an experiment's outputs into the folder and writes both.

The folder holds:
- grid.yaml, runs/run-<i>/, table.csv: the learning-rate grid and its runs (`peftqa pilot`), committed first;
- cv/: the protocols stage's outputs of the 5-fold experiment (cv_folds.csv, cv_preds.csv, cv_stats.csv,
  protocols_metrics.json, its params.yaml) and units/<method>/fold_<k>/, each training's summary and predictions
  (what the stage reuses: copied back into reports/protocols/runs/cv/, an interrupted run resumes there);
- run.json, exp_show.json: what made it; frontier.csv, frontier.md, frontier.png: the table and the figure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from peftqa.catalog import CV_FOLDS, CV_PREDS, CV_STATS, PROTOCOLS_METRICS, UNIT, Output
from peftqa.errors import PeftqaError, log
from peftqa.evaluation.stats import holm_adjust
from peftqa.params import Params, load_params
from peftqa.report.tables import markdown_table
from peftqa.studies.run_copy import duration, read_file
from peftqa.studies.shape import Study, copy_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FRONTIER_DIR = Path("reports/methods-cv5")
CV_DIR = "cv"  # the protocols stage's outputs, copied
UNITS_DIR = f"{CV_DIR}/units"  # <method>/fold_<k>/: one training each, as reports/protocols/runs/cv/ holds them
UNIT_FIGURES = ("trainable_params", "adapter_bytes", "train_seconds", "best_epoch", "best_val_macro_f1")
COLUMNS = ["method", "folds", "trainable_params", "adapter_bytes", "train_seconds_per_fold", "n", "accuracy",
           "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "delta_macro_f1", "delta_ci_low", "delta_ci_high",
           "p_bootstrap_holm", "mcnemar_b", "mcnemar_c", "p_mcnemar_holm", "kept_start"]
PROTOCOL_FILES = (*(str(output.path()) for output in (CV_FOLDS, CV_PREDS, CV_STATS, PROTOCOLS_METRICS)), "params.yaml")
WORKSPACE_UNITS = UNIT.path(protocol="cv", method="-", unit="-").parent.parent.parent  # reports/protocols/runs/cv


@dataclass(frozen=True)
class Frontier:
    root: Path
    params: Params  # the experiment's params.yaml: folds, labels, the stats settings, the baseline, the references
    preds: pd.DataFrame  # cv_preds.csv: method, fold, pmid, gold, pred, p_yes
    pooled: pd.DataFrame  # cv_folds.csv's pooled rows, by method: n, accuracy, macro_f1 over every item
    stats: pd.DataFrame  # cv_stats.csv: the protocols stage's paired tests on the pooled predictions
    units: pd.DataFrame  # one row per finished training: method, fold and its summary's figures


def read_units(folder: Path) -> pd.DataFrame:
    """Each finished training's summary (unit.json, written last by the protocols stage, so its presence means done)."""
    rows = []
    for path in sorted(folder.glob(f"*/fold_*/{UNIT.file}")):
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
        rows.append({"method": path.parent.parent.name, "fold": int(path.parent.name.removeprefix("fold_")),
                     **{key: summary.get(key) for key in UNIT_FIGURES}})
    return pd.DataFrame(rows, columns=["method", "fold", *UNIT_FIGURES])


def read_frontier(root: Path) -> Frontier:
    """The copy in `root` (FRONTIER_DIR): its params, predictions, pooled scores, paired tests and trainings."""
    def copied(output: Output) -> pd.DataFrame:  # the protocols stage's files, copied flat into CV_DIR
        return read_file(root, f"{CV_DIR}/{output.file}", lambda path: output.read(into=path.parent))

    folds = copied(CV_FOLDS)
    return Frontier(root=root, params=read_file(root, f"{CV_DIR}/params.yaml", load_params), preds=copied(CV_PREDS),
                    pooled=folds[folds["fold"].astype(str) == "pooled"].set_index("method"),
                    stats=copied(CV_STATS), units=read_units(root / UNITS_DIR))


def tests_against_baseline(frontier: Frontier) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(paired bootstrap on macro-F1, McNemar) rows of every method against the baseline, by method, each with
    `p_holm` adjusted over these methods alone (cv_stats.csv's own p_holm adjusts over every pair it tests)."""
    stats, baseline = frontier.stats, frontier.params.stats.baseline
    against = stats[stats["reference"] == baseline]
    boot = against[(against["test"] == "paired_bootstrap") & (against["metric"] == "macro_f1")].set_index("method")
    mcnemar = against[against["test"] == "mcnemar_exact"].set_index("method")
    if sorted(boot.index) != sorted(mcnemar.index) or boot.index.has_duplicates:
        raise PeftqaError(f"{CV_STATS.path(into=frontier.root / CV_DIR)}: expected one paired bootstrap (macro_f1) and "
                          f"one McNemar row per method against {baseline}, got {sorted(boot.index)} and "
                          f"{sorted(mcnemar.index)}; copy it again from the experiment")
    return (boot.assign(p_holm=holm_adjust(boot["p_value"].tolist())),
            mcnemar.assign(p_holm=holm_adjust(mcnemar["p_value"].tolist())))


def frontier_table(frontier: Frontier) -> pd.DataFrame:
    """One row per method, the baseline (the probe) first: its size and cost (means over its folds), its pooled
    scores with the bootstrap interval of macro-F1, the paired difference from the probe (Holm over the methods
    here) and in how many folds it kept its untrained start."""
    from peftqa.report.figures import performance_intervals

    params, baseline = frontier.params, frontier.params.stats.baseline
    boot, mcnemar = tests_against_baseline(frontier)
    methods = [baseline, *boot.index]
    missing = [m for m in methods if m not in frontier.pooled.index]
    if missing:
        raise PeftqaError(f"{CV_FOLDS.path(into=frontier.root / CV_DIR)}: no pooled row of {missing}")
    intervals = performance_intervals({m: frontier.preds[frontier.preds["method"] == m] for m in methods},
                                      params.prepare.labels, params.stats)
    rows = []
    for method in methods:
        units, pooled = frontier.units[frontier.units["method"] == method], frontier.pooled.loc[method]
        row = {"method": method, "folds": len(units), "trainable_params": units["trainable_params"].mean(),
               "adapter_bytes": units["adapter_bytes"].mean(), "train_seconds_per_fold": units["train_seconds"].mean(),
               "n": int(pooled["n"]), "accuracy": pooled["accuracy"], "macro_f1": pooled["macro_f1"],
               "macro_f1_ci_low": intervals[method]["macro_f1"][0],
               "macro_f1_ci_high": intervals[method]["macro_f1"][1]}
        if method != baseline:
            row.update(delta_macro_f1=boot.loc[method, "effect"], delta_ci_low=boot.loc[method, "ci_low"],
                       delta_ci_high=boot.loc[method, "ci_high"], p_bootstrap_holm=boot.loc[method, "p_holm"],
                       mcnemar_b=int(mcnemar.loc[method, "b"]), mcnemar_c=int(mcnemar.loc[method, "c"]),
                       p_mcnemar_holm=mcnemar.loc[method, "p_holm"], kept_start=int((units["best_epoch"] == 0).sum()))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def reference_scores(frontier: Frontier) -> dict[str, float]:
    """Pooled macro-F1 of the probe and of each reference row refitted per fold: the figure's horizontal lines."""
    names = (frontier.params.stats.baseline, *frontier.params.references.per_fold)
    return {name: float(frontier.pooled.loc[name, "macro_f1"]) for name in names if name in frontier.pooled.index}


def format_frontier(table: pd.DataFrame, params: Params) -> str:
    """The table as markdown: the baseline's row (the probe), then each method by pooled macro-F1."""
    level, baseline = f"{params.stats.confidence:.0%}", params.stats.baseline
    rows = []
    ordered = pd.concat([table[table["method"] == baseline],
                         table[table["method"] != baseline].sort_values("macro_f1", ascending=False)])
    for row in ordered.itertuples():
        probe = row.method == baseline
        rows.append([f"`{row.method}`" + (" (the probe)" if probe else ""), f"{row.trainable_params:,.0f}",
                     f"{row.adapter_bytes:,.0f}", f"{row.train_seconds_per_fold:.0f}", f"{row.accuracy:.3f}",
                     f"{row.macro_f1:.3f} [{row.macro_f1_ci_low:.3f}, {row.macro_f1_ci_high:.3f}]",
                     "" if probe else f"{row.delta_macro_f1:+.3f} [{row.delta_ci_low:+.3f}, {row.delta_ci_high:+.3f}]",
                     "" if probe else f"{row.p_bootstrap_holm:.3f}",
                     "" if probe else f"{int(row.mcnemar_b)} / {int(row.mcnemar_c)}, {row.p_mcnemar_holm:.3f}",
                     "" if probe else f"{int(row.kept_start)} of {int(row.folds)}"])
    return markdown_table(["method", "trainable params", "adapter bytes", "train s / fold", "pooled accuracy",
                           f"pooled macro-F1 [{level} CI]", f"Δ macro-F1 vs the probe [{level} CI]",
                           "p (bootstrap, Holm)", "McNemar b / c, p (Holm)",
                           f"kept its start (of {params.prepare.folds} folds)"], rows)


def plot_frontier(table: pd.DataFrame, references: dict[str, float], baseline: str, title: str) -> Figure:
    """Pooled macro-F1 with its interval against trainable parameters (log scale); the baseline (the probe) and the
    reference rows as horizontal lines."""
    import matplotlib.pyplot as plt

    from peftqa.report.figures import REFERENCE_COLORS
    from peftqa.report.palette import method_color

    fig, ax = plt.subplots(figsize=(10, 5.6), layout="constrained")
    points: dict[tuple[float, float], list[str]] = {}  # methods at one spot share a label
    for row in table[table["method"] != baseline].itertuples():
        ax.errorbar(row.trainable_params, row.macro_f1,
                    yerr=[[row.macro_f1 - row.macro_f1_ci_low], [row.macro_f1_ci_high - row.macro_f1]],
                    fmt="o", color=method_color(row.method), markeredgecolor="black", capsize=3, zorder=3)
        points.setdefault((row.trainable_params, row.macro_f1), []).append(row.method)
    probe = references.get(baseline)
    for i, ((x, y), names) in enumerate(sorted(points.items())):
        # a label on its point's side of the probe's line; on the line, above and below in turn (neighbours collide)
        above = y > probe if probe is not None and y != probe else i % 2 == 0
        ax.annotate(", ".join(names), (x, y), xytext=(5, 7 if above else -13), textcoords="offset points", fontsize=8)
    for name, score in references.items():
        probe = name == baseline
        ax.axhline(score, color="black" if probe else REFERENCE_COLORS.get(name, "0.5"), linestyle="--" if probe
                   else ":", linewidth=1.2, label=f"{f'the probe ({name})' if probe else name}: {score:.3f}")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale; the encoder's head included)", ylabel="pooled macro-F1",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


# -----------------------------------------------------------------------------
# the copy of the 5-fold experiment out of its workspace (`peftqa frontier copy`)


def finished_units(units: Path) -> dict[Path, Path]:
    """{<method>/fold_<k>: its folder} of every training under `units` with a unit.json (written last: finished)."""
    return {done.parent.relative_to(units): done.parent for done in sorted(units.glob(f"*/fold_*/{UNIT.file}"))}


def copy_from(workspace: Path, folder: Path) -> None:
    """The protocols stage's outputs in `workspace` into `folder`/cv/, flat, with every finished training under
    units/; an interrupted run copies the trainings it finished. A copy that would lose a finished training the
    folder holds is refused (restore it into the workspace first)."""
    units = finished_units(workspace / WORKSPACE_UNITS)
    if not units:
        raise PeftqaError(f"{workspace / WORKSPACE_UNITS}: no finished trainings of the 5-fold run here; run it in "
                          f"{workspace} first")
    lost = sorted(set(finished_units(folder / UNITS_DIR)) - set(units))
    if lost:
        raise PeftqaError(f"{folder / UNITS_DIR} holds finished trainings that {workspace} lacks (e.g. {lost[0]}); "
                          f"`peftqa frontier restore --workspace {workspace}` first, so the copy loses none")
    tables = {Path(name).name: workspace / name for name in PROTOCOL_FILES
              if (workspace / name).exists()}  # an interrupted run wrote the trainings, not yet the tables
    copy_run({**tables, **{Path(UNITS_DIR).relative_to(CV_DIR) / relative: unit for relative, unit in units.items()}},
             folder / CV_DIR)
    log.info("copied %d finished trainings into %s", len(units), folder / CV_DIR)


# -----------------------------------------------------------------------------
# docs blocks (the study `methods-cv5`): from the committed copy, never recomputed


@dataclass(frozen=True)
class FrontierCopy:
    root: Path
    run: dict  # run.json: the commands, the commit, when and where the grid and the 5-fold run ran
    grid: pd.DataFrame  # table.csv: `peftqa pilot table` of the grid, each method's chosen rate marked
    table: pd.DataFrame  # frontier.csv
    params: Params  # the 5-fold experiment's


def read_copy(root: Path) -> FrontierCopy:
    from peftqa.files import read_json

    return FrontierCopy(root=root, run=read_file(root, "run.json", read_json),
                        grid=read_file(root, "table.csv", pd.read_csv),
                        table=read_file(root, "frontier.csv", pd.read_csv),
                        params=read_file(root, f"{CV_DIR}/params.yaml", load_params))


def time_span(started: str, finished: str) -> str:
    """'2026-12-03 07:04 to 08:05 UTC', with the end's date too when it is another day."""
    end = finished[11:16] if finished[:10] == started[:10] else finished[:16].replace("T", " ")
    return f"{started[:16].replace('T', ' ')} to {end} UTC"


def provenance(copy: FrontierCopy) -> str:
    run = copy.run
    steps = "\n".join(f"{step['command']}   # {time_span(step['started'], step['finished'])}, "
                      f"{duration(step['wall_s'])}" for step in run["steps"])
    return (f"From commit `{run['commit']}`, run on {run['steps'][0]['started'][:10]} in a workspace clone, on "
            f"{run['machine']}: {run['trainings']} trainings in all. The outputs are copied in "
            f"[`reports/{copy.root.name}/`](../reports/{copy.root.name}/README.md). Commands:\n\n```bash\n{steps}\n```")


def grid_table(copy: FrontierCopy) -> str:
    from peftqa.studies.pilot import format_table

    return format_table(copy.grid)


FRONTIER = Study(name="methods-cv5", folder=FRONTIER_DIR, read=read_copy, provenance=provenance,
                 blocks={"grid": grid_table, "frontier": lambda copy: format_frontier(copy.table, copy.params)},
                 copy_in=copy_from)
