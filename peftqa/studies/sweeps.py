"""The sweeps (source `ablation`): reports/ablation/, one table per swept method on the grid committed before the
sweep ran (grid.yaml), and the `dvc exp show --json` its tables were made from (exp_show.json). No run is copied in:
`peftqa ablation --grid reports/ablation/grid.yaml --json-file ...` writes the folder from the experiments.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from peftqa import catalog
from peftqa.files import read_json
from peftqa.report.tables import markdown_table
from peftqa.studies.run_copy import read_file
from peftqa.studies.shape import Study

ABLATION_DIR = Path("reports/ablation")
SWEPT = ("prompt_tuning", "prefix_tuning", "lora")  # the methods reports/ablation/ has a table of


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


ABLATION = Study(name="ablation", folder=ABLATION_DIR, read=read_sweeps, provenance=sweeps_provenance,
                 blocks={m: (lambda sweeps, m=m: sweep_table(sweeps, m)) for m in SWEPT}, copy_in=None)
