"""A recipe pilot: a committed grid of learning rates per method, run as a few DVC experiments on a short profile,
and its table (val macro-F1 and best epoch per method and rate) from the copies of each run's outputs.

The grid file (reports/smollm2-pilot/grid.yaml) holds `profile` (the params every run sets) and `lr` (per method,
its rates; run i takes every method's i-th rate). Pure functions: `peftqa pilot` runs the experiments, copies their
outputs and writes the table.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import yaml

from peftqa.common import PeftqaError
from peftqa.methods import METHODS
from peftqa.metrics import classification_metrics
from peftqa.references import choose_offset, margins_from_p_yes, predict_with_offset

BASELINE = "base"  # trained by no run, evaluated once; for a language model, base_calibrated is its val-chosen offset
CALIBRATED = "base_calibrated"


@dataclasses.dataclass(frozen=True)
class PilotGrid:
    profile: dict[str, object]  # dotted params key -> value, set in every run
    lr: dict[str, list[float]]  # method -> its learning rates, run i takes the i-th

    @property
    def runs(self) -> int:
        return len(next(iter(self.lr.values())))

    def settings(self, run: int) -> dict[str, object]:
        """Every `dvc exp run -S` setting of run `run` (0-based): the profile, the methods, each method's rate."""
        return {**self.profile, "methods": [BASELINE, *self.lr],
                **{f"peft.{method}.lr": rates[run] for method, rates in self.lr.items()}}

    def targets(self) -> list[str]:
        """The stages a run reproduces: each method's training (its per-epoch val scores are the pilot's table) and
        evaluate@base (the zero-shot val scores that base_calibrated's offset is chosen on). No tuned method is scored
        on test. The references stage is not a target: it waits for every evaluate@<method>."""
        return [f"train@{method}" for method in self.lr] + [f"evaluate@{BASELINE}"]


def load_pilot_grid(path: Path) -> PilotGrid:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftqaError(f"{path}: no pilot grid here; commit one before running the pilot") from None
    if not isinstance(data, dict) or set(data) != {"profile", "lr"}:
        raise PeftqaError(f"{path}: expected exactly the keys profile and lr, got {sorted(data or {})}")
    profile, lr = data["profile"], data["lr"]
    if not isinstance(profile, dict) or not isinstance(lr, dict) or not lr:
        raise PeftqaError(f"{path}: profile must map params keys to values, lr methods to lists of rates")
    for method, rates in lr.items():
        if method not in METHODS or method == BASELINE:
            tuned = [m for m in METHODS if m != BASELINE]
            raise PeftqaError(f"{path}: lr.{method}: not a tuned method; known: {tuned}")
        if not isinstance(rates, list) or not rates or not all(isinstance(r, (int, float)) and r > 0 for r in rates):
            raise PeftqaError(f"{path}: lr.{method}: expected a non-empty list of positive rates, got {rates!r}")
    lengths = {method: len(rates) for method, rates in lr.items()}
    if len(set(lengths.values())) > 1:
        raise PeftqaError(f"{path}: every method needs as many rates as the others (run i takes the i-th): {lengths}")
    return PilotGrid(profile=dict(profile), lr={m: [float(r) for r in rates] for m, rates in lr.items()})


def run_folder(root: Path, run: int) -> Path:
    return root / "runs" / f"run-{run + 1}"


def copied_files(grid: PilotGrid) -> list[str]:
    """What is copied from the workspace after each run (paths relative to the repo root)."""
    per_method = [f"models/{m}/{name}" for m in [BASELINE, *grid.lr]
                  for name in ("train_summary.json", "history.csv", "resolved_config.json")]
    return per_method + ["reports/eval/base/metrics_val.json", "reports/eval/base/preds_val.csv"]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftqaError(f"{path}: missing; run `peftqa pilot run` (it copies each run's outputs here)") from None


def method_rows(grid: PilotGrid, root: Path) -> list[dict]:
    """One row per method and rate: val macro-F1 at the start (epoch 0) and after the epoch, and the best epoch."""
    rows = []
    for method, rates in grid.lr.items():
        for run, rate in enumerate(rates):
            folder = run_folder(root, run)
            summary = _read_json(folder / "models" / method / "train_summary.json")
            history = pd.read_csv(folder / "models" / method / "history.csv").set_index("epoch")
            best = int(summary["best_epoch"])
            rows.append({"method": method, "lr": rate, "val_macro_f1": summary["best_val_macro_f1"],
                         "val_accuracy": float(history.loc[best, "val_accuracy"]), "best_epoch": best,
                         "start_val_macro_f1": float(history.loc[0, "val_macro_f1"]),
                         "last_val_macro_f1": float(history["val_macro_f1"].iloc[-1]),
                         "kept_its_start": best == 0, "train_seconds": summary.get("train_seconds")})
    return rows


def reference_rows(root: Path) -> list[dict]:
    """The base on val, and for a language model base_calibrated: its zero-shot val margins plus the offset chosen on
    those same val items (peftqa.references, as the references stage chooses it), so its val figure is the best the
    prior alone reaches there, an optimistic one. The encoder's base is the trained linear probe, every method's
    start, which no offset calibrates (the references stage defines no base_calibrated for it either). From the
    first run: no run changes base."""
    folder = run_folder(root, 0) / "reports" / "eval" / "base"
    base = _read_json(folder / "metrics_val.json")
    row = {"method": BASELINE, "val_macro_f1": base["macro_f1"], "val_accuracy": base["accuracy"]}
    if _read_json(run_folder(root, 0) / "models" / BASELINE / "resolved_config.json")["family"] == "encoder":
        return [{**row, "probe": True}]
    preds = pd.read_csv(folder / "preds_val.csv", dtype={"pmid": str})
    labels = ("yes", "no")
    margins = margins_from_p_yes(preds["p_yes"])
    offset = choose_offset(margins, preds["gold"].astype(str).tolist(), labels)
    calibrated = classification_metrics(preds["gold"].astype(str).tolist(),
                                        predict_with_offset(margins, offset["delta"]), labels)
    return [row, {"method": CALIBRATED, "val_macro_f1": calibrated["macro_f1"], "val_accuracy": calibrated["accuracy"],
                  "offset": offset["delta"]}]


def pilot_table(grid: PilotGrid, root: Path) -> pd.DataFrame:
    """Reference rows, then every method and rate, each method's chosen rate marked: the best val macro-F1 (at the
    best epoch), ties to the better last epoch, then the smaller rate."""
    table = pd.DataFrame(reference_rows(root) + method_rows(grid, root))
    table["chosen"] = False
    tuned = table[table["lr"].notna()] if "lr" in table else table.iloc[:0]
    for _, rows in tuned.groupby("method", sort=False):
        ranked = rows.sort_values(["val_macro_f1", "last_val_macro_f1", "lr"], ascending=[False, False, True])
        table.loc[ranked.index[0], "chosen"] = True
    return table


def reference_note(row: dict) -> str:
    if row.get("probe") is True:
        return "the linear probe on the frozen features: every method's start (epoch 0)"
    if pd.notna(row.get("offset")):
        return f"offset {row['offset']:+.3f} on log p(yes) − log p(no), chosen on val"
    return "zero-shot"


def format_table(table: pd.DataFrame) -> str:
    lines = ["| method | lr | val macro-F1 | val accuracy | best epoch | val macro-F1 at the start / after the epoch |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for row in table.to_dict("records"):
        if pd.isna(row.get("lr")):
            lines.append(f"| {row['method']} | | {row['val_macro_f1']:.3f} | {row['val_accuracy']:.3f} | | "
                         f"{reference_note(row)} |")
            continue
        flag = " (kept its start)" if row["kept_its_start"] else ""
        name = f"**{row['method']}**" if row["chosen"] else row["method"]
        lines.append(f"| {name} | {row['lr']:g} | {row['val_macro_f1']:.3f} | {row['val_accuracy']:.3f} | "
                     f"{int(row['best_epoch'])}{flag} | "
                     f"{row['start_val_macro_f1']:.3f} / {row['last_val_macro_f1']:.3f} |")
    return "\n".join(lines) + "\n"
