"""The methods frontier (reports/methods-cv5/): every method that serves the default model, each at the learning rate
chosen on the main split's val from a committed grid, then trained on 5 folds by the protocols stage. Pure functions:
the table (one row per method: its size, its cost, its pooled scores and its difference from the probe) and the
figure (pooled macro-F1 against trainable parameters). `peftqa frontier` copies an experiment's outputs here and
writes both.

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

import pandas as pd

from peftqa.common import PeftqaError
from peftqa.metrics import classification_metrics
from peftqa.report.tables import markdown_table
from peftqa.stats import bootstrap_interval, holm_adjust
from peftqa.study import read_file

FRONTIER_DIR = Path("reports/methods-cv5")
CV_DIR = "cv"  # the protocols stage's outputs, copied
UNITS_DIR = "cv/units"  # <method>/fold_<k>/: one training each, as reports/protocols/runs/cv/ holds them
BASELINE = "base"  # the encoder family's linear probe on the frozen features: every method starts from it
COLUMNS = ["method", "folds", "trainable_params", "adapter_bytes", "train_seconds_per_fold", "n", "accuracy",
           "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "delta_macro_f1", "delta_ci_low", "delta_ci_high",
           "p_bootstrap_holm", "mcnemar_b", "mcnemar_c", "p_mcnemar_holm", "kept_start"]


@dataclass(frozen=True)
class Frontier:
    root: Path
    preds: pd.DataFrame  # cv_preds.csv: method, fold, pmid, gold, pred, p_yes
    stats: pd.DataFrame  # cv_stats.csv: the protocols stage's paired tests on the pooled predictions
    units: pd.DataFrame  # one row per finished training: method, fold and its summary's figures
    folds: int  # prepare.folds of the experiment
    references: tuple[str, ...]  # the reference rows refitted per fold (majority, tfidf_lr)
    n_bootstrap: int
    seed: int
    confidence: float


def read_units(folder: Path) -> pd.DataFrame:
    """Each finished training's summary (unit.json, written last by the protocols stage, so its presence means done)."""
    rows = []
    for path in sorted(folder.glob("*/fold_*/unit.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
        rows.append({"method": path.parent.parent.name, "fold": int(path.parent.name.removeprefix("fold_")),
                     **{key: summary.get(key) for key in ("trainable_params", "adapter_bytes", "train_seconds",
                                                          "best_epoch", "best_val_macro_f1")}})
    return pd.DataFrame(rows, columns=["method", "fold", "trainable_params", "adapter_bytes", "train_seconds",
                                       "best_epoch", "best_val_macro_f1"])


def read_frontier(root: Path) -> Frontier:
    import yaml

    params = read_file(root, f"{CV_DIR}/params.yaml", lambda p: yaml.safe_load(p.read_text(encoding="utf-8")))
    stats_params = params.get("stats", {})
    preds = read_file(root, f"{CV_DIR}/cv_preds.csv", lambda p: pd.read_csv(p, dtype={"pmid": str}))
    refitted = [name for name in params.get("references", {}).get("names", []) if name in set(preds["method"])]
    return Frontier(root=root, preds=preds, stats=read_file(root, f"{CV_DIR}/cv_stats.csv", pd.read_csv),
                    units=read_units(root / UNITS_DIR), folds=int(params["prepare"]["folds"]),
                    references=tuple(refitted),
                    n_bootstrap=int(stats_params.get("n_bootstrap", 5000)), seed=int(stats_params.get("seed", 0)),
                    confidence=float(stats_params.get("confidence", 0.95)))


def frontier_table(frontier: Frontier) -> pd.DataFrame:
    """One row per method, the probe first: its size and cost (means over its folds), its pooled scores with the
    bootstrap interval of macro-F1, and the paired difference from the probe, Holm-adjusted over the methods here
    (not over every pair the protocols stage tests), and in how many folds it kept its untrained start."""
    stats = frontier.stats
    against = stats[stats["reference"] == BASELINE]
    methods = [BASELINE, *dict.fromkeys(against["method"])]
    missing = [m for m in methods if m not in set(frontier.preds["method"])]
    if missing:
        raise PeftqaError(f"{frontier.root / CV_DIR / 'cv_preds.csv'}: no predictions of {missing}")
    boot = against[(against["test"] == "paired_bootstrap") & (against["metric"] == "macro_f1")].set_index("method")
    mcnemar = against[against["test"] == "mcnemar_exact"].set_index("method")
    tuned = list(boot.index)
    holm_boot = dict(zip(tuned, holm_adjust(boot.loc[tuned, "p_value"].tolist())))
    holm_mcnemar = dict(zip(tuned, holm_adjust(mcnemar.loc[tuned, "p_value"].tolist())))
    labels = tuple(sorted(set(frontier.preds["gold"].astype(str)), key=["yes", "no"].index))
    rows = []
    for method in methods:
        pooled = frontier.preds[frontier.preds["method"] == method]
        gold = pooled["gold"].astype(str).tolist()
        pred = [p if isinstance(p, str) else None for p in pooled["pred"]]
        scores = classification_metrics(gold, pred, labels)
        low, high = bootstrap_interval(gold, pred, labels, frontier.n_bootstrap, frontier.seed,
                                       frontier.confidence)["macro_f1"]
        units = frontier.units[frontier.units["method"] == method]
        row = {"method": method, "folds": len(units), "trainable_params": units["trainable_params"].mean(),
               "adapter_bytes": units["adapter_bytes"].mean(), "train_seconds_per_fold": units["train_seconds"].mean(),
               "n": len(pooled), "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
               "macro_f1_ci_low": low, "macro_f1_ci_high": high,
               "kept_start": int((units["best_epoch"] == 0).sum()) if method != BASELINE else None}
        if method != BASELINE:
            row.update(delta_macro_f1=boot.loc[method, "effect"], delta_ci_low=boot.loc[method, "ci_low"],
                       delta_ci_high=boot.loc[method, "ci_high"], p_bootstrap_holm=holm_boot[method],
                       mcnemar_b=int(mcnemar.loc[method, "b"]), mcnemar_c=int(mcnemar.loc[method, "c"]),
                       p_mcnemar_holm=holm_mcnemar[method])
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def reference_scores(frontier: Frontier) -> dict[str, float]:
    """Pooled macro-F1 of the probe and of each reference row refitted per fold: the figure's horizontal lines."""
    scores = {}
    for name in (BASELINE, *frontier.references):
        pooled = frontier.preds[frontier.preds["method"] == name]
        if len(pooled):
            labels = tuple(sorted(set(pooled["gold"].astype(str)), key=["yes", "no"].index))
            scores[name] = classification_metrics(pooled["gold"].astype(str).tolist(),
                                                  [p if isinstance(p, str) else None for p in pooled["pred"]],
                                                  labels)["macro_f1"]
    return scores


def format_frontier(table: pd.DataFrame, folds: int, confidence: float) -> str:
    """The table as markdown: the probe's row, then each method by pooled macro-F1."""
    level = f"{confidence:.0%}"
    rows = []
    ordered = pd.concat([table[table["method"] == BASELINE],
                         table[table["method"] != BASELINE].sort_values("macro_f1", ascending=False)])
    for row in ordered.itertuples():
        probe = row.method == BASELINE
        rows.append([f"`{row.method}`" + (" (the probe)" if probe else ""), f"{row.trainable_params:,.0f}",
                     f"{row.adapter_bytes:,.0f}", f"{row.train_seconds_per_fold:.0f}", f"{row.accuracy:.3f}",
                     f"{row.macro_f1:.3f} [{row.macro_f1_ci_low:.3f}, {row.macro_f1_ci_high:.3f}]",
                     "" if probe else f"{row.delta_macro_f1:+.3f} [{row.delta_ci_low:+.3f}, {row.delta_ci_high:+.3f}]",
                     "" if probe else f"{row.p_bootstrap_holm:.3f}",
                     "" if probe else f"{int(row.mcnemar_b)} / {int(row.mcnemar_c)}, {row.p_mcnemar_holm:.3f}",
                     "" if probe else f"{int(row.kept_start)} of {int(row.folds)}"])
    return markdown_table(["method", "trainable params", "adapter bytes", "train s / fold", "pooled accuracy",
                           f"pooled macro-F1 [{level} CI]", f"Δ macro-F1 vs the probe [{level} CI]",
                           "p (bootstrap, Holm)", "McNemar b / c, p (Holm)", f"kept its start (of {folds} folds)"],
                          rows)


def plot_frontier(table: pd.DataFrame, references: dict[str, float], title: str):
    """Pooled macro-F1 with its interval against trainable parameters (log scale); the probe and the reference rows
    as horizontal lines. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from peftqa.figures import method_color
    from peftqa.report.figures import REFERENCE_COLORS

    tuned = table[table["method"] != BASELINE]
    fig, ax = plt.subplots(figsize=(9, 5.2), layout="constrained")
    for row in tuned.itertuples():
        ax.errorbar(row.trainable_params, row.macro_f1,
                    yerr=[[row.macro_f1 - row.macro_f1_ci_low], [row.macro_f1_ci_high - row.macro_f1]],
                    fmt="o", color=method_color(row.method), markeredgecolor="black", capsize=3, zorder=3)
        ax.annotate(row.method, (row.trainable_params, row.macro_f1), xytext=(6, 4), textcoords="offset points",
                    fontsize=8)
    for name, score in references.items():
        label = "the probe (base)" if name == BASELINE else name
        ax.axhline(score, color="black" if name == BASELINE else REFERENCE_COLORS.get(name, "0.5"),
                   linestyle="--" if name == BASELINE else ":", linewidth=1.2, label=f"{label}: {score:.3f}")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale; the encoder's head included)", ylabel="pooled macro-F1",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


# -----------------------------------------------------------------------------
# docs blocks (peftqa.docs.SOURCES["methods-cv5"]): from the committed copy, never recomputed


@dataclass(frozen=True)
class FrontierCopy:
    root: Path
    run: dict  # run.json: the commands, the commit, when and where the grid and the 5-fold run ran
    grid: pd.DataFrame  # table.csv: `peftqa pilot table` of the grid, each method's chosen rate marked
    table: pd.DataFrame  # frontier.csv
    folds: int
    confidence: float


def read_copy(root: Path) -> FrontierCopy:
    import yaml

    from peftqa.report.inputs import read_json

    params = read_file(root, f"{CV_DIR}/params.yaml", lambda p: yaml.safe_load(p.read_text(encoding="utf-8")))
    return FrontierCopy(root=root, run=read_file(root, "run.json", read_json),
                        grid=read_file(root, "table.csv", pd.read_csv),
                        table=read_file(root, "frontier.csv", pd.read_csv), folds=int(params["prepare"]["folds"]),
                        confidence=float(params.get("stats", {}).get("confidence", 0.95)))


def provenance(copy: FrontierCopy) -> str:
    from peftqa.study import duration

    run = copy.run
    steps = "\n".join(f"{step['command']}   # {step['started'][:16].replace('T', ' ')} to "
                      f"{step['finished'][11:16]} UTC, {duration(step['wall_s'])}" for step in run["steps"])
    return (f"From commit `{run['commit']}`, run on {run['steps'][0]['started'][:10]} in a workspace clone, alone, on "
            f"{run['machine']}: {run['trainings']} trainings in all. The outputs are copied in "
            f"[`reports/{copy.root.name}/`](../reports/{copy.root.name}/README.md). Commands:\n\n```bash\n{steps}\n```")


def grid_table(copy: FrontierCopy) -> str:
    """The pilot's table without its base_calibrated row: on the encoder, base is the trained probe, not a zero-shot
    model whose label prior an offset would correct (the references stage defines no such row for it either)."""
    from peftqa.pilot import CALIBRATED, format_table

    return format_table(copy.grid[copy.grid["method"] != CALIBRATED],
                        baseline_note="the linear probe on the frozen features: every method's start (epoch 0)")


BLOCKS = {"provenance": provenance, "grid": grid_table,
          "frontier": lambda copy: format_frontier(copy.table, copy.folds, copy.confidence)}
