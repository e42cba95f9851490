"""A recipe pilot: a committed grid of settings per method, run as a few DVC experiments on a short profile, and
its table (val macro-F1 and best epoch per method and setting) from the copies of each run's outputs.

The grid file (e.g. reports/smollm2-official-pilot/grid.yaml) holds
- `profile`: the params every run sets;
- `lr`: per method, its learning rates; lr run i takes every method's i-th rate (folder runs/run-<i>);
- optional `primary`: the study's primary comparison, named before any run (`PRIMARY_KEYS`);
- optional `context`: a first phase, one method at one rate under each of a few model settings (`options`); the
  lr runs use the option with the best val macro-F1 (folders runs/context-<i>);
- optional `variants`: a last phase, per method a params key and its values, the first being the value the lr runs
  used; each other value is trained at the method's chosen rate (folders runs/variant-<i>);
- optional `full_run`: what the full study sets on top of the profile and the pilot's choices (`full_run_settings`).
Every choice is made on val. Pure functions: `peftqa pilot` runs the experiments, copies their outputs and writes the
table.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import yaml

from peftqa.catalog import HISTORY, METRICS, PREDS, RESOLVED_CONFIG, TRAIN_SUMMARY
from peftqa.errors import PeftqaError
from peftqa.evaluation.metrics import classification_metrics
from peftqa.evaluation.references import (
    base_calibrated_undefined,
    choose_offset,
    margins_from_p_yes,
    predict_with_offset,
)
from peftqa.params.knobs import METHODS
from peftqa.params.traits import traits

BASELINE = "base"  # trained by no run, evaluated once; for a language model, base_calibrated is its val-chosen offset
CALIBRATED = "base_calibrated"
CHOICES_JSON = "choices.json"  # the full run's settings, as `peftqa pilot table` writes them: not a pipeline output
GRID_KEYS = {"profile", "lr"}
OPTIONAL_KEYS = {"primary", "context", "variants", "full_run"}
PRIMARY_KEYS = {"method", "against", "metric", "split", "alpha"}


@dataclasses.dataclass(frozen=True)
class Context:
    """The first phase: `method` at `lr` under each of `options` (params settings); the best val macro-F1 wins."""
    method: str
    lr: float
    options: list[dict[str, object]]


@dataclasses.dataclass(frozen=True)
class PilotGrid:
    profile: dict[str, object]  # dotted params key -> value, set in every run
    lr: dict[str, list[float]]  # method -> its learning rates, run i takes the i-th
    primary: dict[str, object] = dataclasses.field(default_factory=dict)
    context: Context | None = None
    variants: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)  # method -> {key: values}
    full_run: dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def runs(self) -> int:
        return len(next(iter(self.lr.values())))

    def settings(self, run: int, context: dict[str, object] | None = None) -> dict[str, object]:
        """Every `dvc exp run -S` setting of lr run `run` (0-based): the profile, the context chosen in the first
        phase, the methods, each method's rate."""
        return {**self.profile, **(context or {}), "methods": [BASELINE, *self.lr],
                **{f"peft.{method}.lr": rates[run] for method, rates in self.lr.items()}}

    def targets(self) -> list[str]:
        """The stages an lr run reproduces: each method's training (its per-epoch val scores are the pilot's table)
        and train@base (the base the zero-shot val scores come from, `peftqa pilot` scoring val alone: no test item
        is scored). The references stage is not a target: it waits for every evaluate@<method>."""
        return [f"train@{method}" for method in self.lr] + [f"train@{BASELINE}"]

    def context_settings(self, option: int) -> dict[str, object]:
        assert self.context is not None
        method = self.context.method
        return {**self.profile, **self.context.options[option], "methods": [BASELINE, method],
                f"peft.{method}.lr": self.context.lr}

    def variant_runs(self) -> list[tuple[str, str, object]]:
        """(method, key, value) of every variant run: each value but the first (the one the lr runs used)."""
        return [(method, key, value) for method, keys in self.variants.items()
                for key, values in keys.items() for value in values[1:]]

    def variant_settings(self, variant: int, choices: dict[str, object]) -> dict[str, object]:
        method, key, value = self.variant_runs()[variant]
        return {**self.profile, **choices, "methods": [BASELINE, method], key: value}


def _require_map(path: Path, name: str, value: object) -> dict:
    if not isinstance(value, dict) or not value:
        raise PeftqaError(f"{path}: {name} must map params keys to values, got {value!r}")
    return dict(value)


def _tuned_method(path: Path, where: str, method: object) -> str:
    if method not in METHODS or method == BASELINE:
        tuned = [m for m in METHODS if m != BASELINE]
        raise PeftqaError(f"{path}: {where}: {method!r} is not a tuned method; known: {tuned}")
    return str(method)


def _load_context(path: Path, data: object) -> Context:
    if not isinstance(data, dict) or set(data) != {"method", "lr", "options"}:
        raise PeftqaError(f"{path}: context: expected exactly the keys method, lr and options, got "
                          f"{sorted(data) if isinstance(data, dict) else data!r}")
    method = _tuned_method(path, "context.method", data["method"])
    options = data["options"]
    if not isinstance(options, list) or len(options) < 2:
        raise PeftqaError(f"{path}: context.options: expected a list of at least two settings, got {options!r}")
    parsed = [_require_map(path, f"context.options[{i}]", option) for i, option in enumerate(options)]
    if not isinstance(data["lr"], (int, float)) or data["lr"] <= 0:
        raise PeftqaError(f"{path}: context.lr: expected a positive rate, got {data['lr']!r}")
    return Context(method=method, lr=float(data["lr"]), options=parsed)


def _load_variants(path: Path, data: object) -> dict[str, dict[str, list]]:
    variants = {}
    for method, keys in _require_map(path, "variants", data).items():
        method = _tuned_method(path, f"variants.{method}", method)
        for key, values in _require_map(path, f"variants.{method}", keys).items():
            if not key.startswith(f"peft.{method}.") or key.endswith(".lr"):
                raise PeftqaError(f"{path}: variants.{method}.{key}: a variant is one of the method's own settings "
                                  f"(peft.{method}.<name>, not its lr)")
            if not isinstance(values, list) or len(values) < 2:
                raise PeftqaError(f"{path}: variants.{method}.{key}: expected the lr runs' value, then the others "
                                  f"(at least two), got {values!r}")
        variants[method] = dict(keys)
    return variants


def _load_primary(path: Path, data: object) -> dict[str, object]:
    primary = _require_map(path, "primary", data)
    if set(primary) != PRIMARY_KEYS:
        raise PeftqaError(f"{path}: primary: expected exactly the keys {sorted(PRIMARY_KEYS)}, got {sorted(primary)}")
    return primary


def load_pilot_grid(path: Path) -> PilotGrid:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftqaError(f"{path}: no pilot grid here; commit one before running the pilot") from None
    if not isinstance(data, dict) or not GRID_KEYS <= set(data) <= GRID_KEYS | OPTIONAL_KEYS:
        raise PeftqaError(f"{path}: expected the keys profile and lr, and optionally {sorted(OPTIONAL_KEYS)}; got "
                          f"{sorted(data or {})}")
    profile, lr = data["profile"], data["lr"]
    if not isinstance(profile, dict) or not isinstance(lr, dict) or not lr:
        raise PeftqaError(f"{path}: profile must map params keys to values, lr methods to lists of rates")
    for method, rates in lr.items():
        _tuned_method(path, f"lr.{method}", method)
        if not isinstance(rates, list) or not rates or not all(isinstance(r, (int, float)) and r > 0 for r in rates):
            raise PeftqaError(f"{path}: lr.{method}: expected a non-empty list of positive rates, got {rates!r}")
    lengths = {method: len(rates) for method, rates in lr.items()}
    if len(set(lengths.values())) > 1:
        raise PeftqaError(f"{path}: every method needs as many rates as the others (run i takes the i-th): {lengths}")
    variants = _load_variants(path, data["variants"]) if "variants" in data else {}
    for method, keys in variants.items():
        if method not in lr:
            raise PeftqaError(f"{path}: variants.{method}: the method has no rates in lr to choose first")
        for key, values in keys.items():
            if profile.get(key, values[0]) != values[0]:
                raise PeftqaError(f"{path}: variants.{method}.{key}: the first value is the lr runs' own "
                                  f"({profile[key]!r} in profile), got {values[0]!r}")
    return PilotGrid(profile=dict(profile), lr={m: [float(r) for r in rates] for m, rates in lr.items()},
                     primary=_load_primary(path, data["primary"]) if "primary" in data else {},
                     context=_load_context(path, data["context"]) if "context" in data else None,
                     variants=variants,
                     full_run=_require_map(path, "full_run", data["full_run"]) if "full_run" in data else {})


def run_folder(root: Path, run: int) -> Path:
    return root / "runs" / f"run-{run + 1}"


def context_folder(root: Path, option: int) -> Path:
    return root / "runs" / f"context-{option + 1}"


def variant_folder(root: Path, variant: int) -> Path:
    return root / "runs" / f"variant-{variant + 1}"


def copied_files(methods: list[str]) -> list[str]:
    """What is copied from the workspace after each run (paths relative to the repo root); base's val predictions
    and metrics are written by `peftqa pilot` itself."""
    return [str(output.path(method=m)) for m in methods for output in (TRAIN_SUMMARY, HISTORY, RESOLVED_CONFIG)]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftqaError(f"{path}: missing; run `peftqa pilot run` (it copies each run's outputs here)") from None


def training_row(folder: Path, method: str) -> dict:
    """One training's val figures: macro-F1 at the start (epoch 0), after the last epoch and at the best epoch."""
    summary = _read_json(TRAIN_SUMMARY.path(folder, method=method))
    history = pd.read_csv(HISTORY.path(folder, method=method)).set_index("epoch")  # the val columns alone
    best = int(summary["best_epoch"])
    return {"method": method, "val_macro_f1": summary["best_val_macro_f1"],
            "val_accuracy": float(history.loc[best, "val_accuracy"]), "best_epoch": best,
            "start_val_macro_f1": float(history.loc[0, "val_macro_f1"]),
            "last_val_macro_f1": float(history["val_macro_f1"].iloc[-1]),
            "kept_its_start": best == 0, "train_seconds": summary.get("train_seconds")}


def ranked(rows: pd.DataFrame, last: str) -> pd.Index:
    """Rows best first: the best val macro-F1 (at the best epoch), ties to the better last epoch, then `last`
    ascending (the smaller rate, the cheaper setting)."""
    return rows.sort_values(["val_macro_f1", "last_val_macro_f1", last], ascending=[False, False, True]).index


def context_rows(grid: PilotGrid, root: Path) -> pd.DataFrame:
    """The first phase, one row per option, the chosen one marked; empty without a context phase."""
    if grid.context is None:
        return pd.DataFrame()
    rows = [{**training_row(context_folder(root, i), grid.context.method), "lr": grid.context.lr,
             "setting": ", ".join(f"{k}={v}" for k, v in option.items()), "option": i}
            for i, option in enumerate(grid.context.options)]
    table = pd.DataFrame(rows)
    table["chosen"] = False
    # ties go to the earlier option (the grid lists the one it prefers first)
    table.loc[ranked(table, "option")[0], "chosen"] = True
    return table


def chosen_context(grid: PilotGrid, root: Path) -> dict[str, object]:
    if grid.context is None:
        return {}
    table = context_rows(grid, root)
    return dict(grid.context.options[int(table.loc[table["chosen"], "option"].iloc[0])])


def method_rows(grid: PilotGrid, root: Path) -> list[dict]:
    """One row per method and rate: val macro-F1 at the start (epoch 0) and after the epoch, and the best epoch."""
    return [{**training_row(run_folder(root, run), method), "lr": rate}
            for method, rates in grid.lr.items() for run, rate in enumerate(rates)]


def reference_rows(root: Path) -> list[dict]:
    """The base on val, and where the references stage would define it, base_calibrated: base's zero-shot val
    margins plus the offset chosen on those same val items (peftqa.evaluation.references, as that stage chooses it),
    so its val figure is the best the prior alone reaches there, an optimistic one. The encoder's base is the trained
    linear probe, every method's start, which no offset calibrates. From the first run: no run changes base."""
    first = run_folder(root, 0)
    base = _read_json(METRICS.path(first, method=BASELINE, split="val"))
    row = {"method": BASELINE, "val_macro_f1": base["macro_f1"], "val_accuracy": base["accuracy"]}
    config = _read_json(RESOLVED_CONFIG.path(first, method=BASELINE))
    labels = tuple(config["prepare.labels"].split(","))
    if base_calibrated_undefined([BASELINE], labels, config["model.scoring"], config["family"]):
        return [{**row, "probe": traits(config["family"]).has_probe}]
    preds = PREDS.read(first, method=BASELINE, split="val")
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
        table.loc[ranked(rows, "lr")[0], "chosen"] = True
    return table


def chosen_rates(grid: PilotGrid, root: Path) -> dict[str, float]:
    table = pilot_table(grid, root)
    return {row["method"]: float(row["lr"]) for row in table[table["chosen"]].to_dict("records")}


def variant_rows(grid: PilotGrid, root: Path) -> pd.DataFrame:
    """The last phase: per variant key, the lr runs' value at the chosen rate, then each other value; the chosen
    value marked. Empty without variants."""
    if not grid.variants:
        return pd.DataFrame()
    rates = chosen_rates(grid, root)
    runs = grid.variant_runs()
    rows = []
    for method, keys in grid.variants.items():
        chosen_run = grid.lr[method].index(rates[method])
        for key, values in keys.items():
            rows.append({**training_row(run_folder(root, chosen_run), method), "lr": rates[method], "key": key,
                         "value": values[0], "setting": f"{key.rsplit('.', 1)[-1]}={values[0]}", "order": 0})
            for order, value in enumerate(values[1:], start=1):
                folder = variant_folder(root, runs.index((method, key, value)))
                rows.append({**training_row(folder, method), "lr": rates[method], "key": key, "value": value,
                             "setting": f"{key.rsplit('.', 1)[-1]}={value}", "order": order})
    table = pd.DataFrame(rows)
    table["chosen"] = False
    for _, group in table.groupby("key", sort=False):  # ties to the lr runs' value, then the grid's order
        table.loc[ranked(group, "order")[0], "chosen"] = True
    return table


def pilot_choices(grid: PilotGrid, root: Path) -> dict[str, object]:
    """Every setting the pilot chose on val, as dotted params keys: the context, each method's rate, each variant."""
    choices = {**chosen_context(grid, root),
               **{f"peft.{method}.lr": rate for method, rate in chosen_rates(grid, root).items()}}
    variants = variant_rows(grid, root)
    for row in variants[variants["chosen"]].to_dict("records") if len(variants) else []:
        choices[row["key"]] = row["value"]
    return choices


def full_run_settings(grid: PilotGrid, root: Path) -> dict[str, object]:
    """The full study's settings: the profile, the pilot's choices, then `full_run` (which replaces the pilot's
    short-profile keys, such as train.limit_train)."""
    return {**grid.profile, **pilot_choices(grid, root), "methods": [BASELINE, *grid.lr], **grid.full_run}


def reference_note(row: dict) -> str:
    if row.get("probe") is True:
        return "the linear probe on the frozen features: every method's start (epoch 0)"
    if pd.notna(row.get("offset")):
        return f"offset {row['offset']:+.3f} on log p(yes) − log p(no), chosen on val"
    return "zero-shot"


def _training_cells(row: dict) -> str:
    flag = " (kept its start)" if row["kept_its_start"] else ""
    return (f"{row['val_macro_f1']:.3f} | {row['val_accuracy']:.3f} | {int(row['best_epoch'])}{flag} | "
            f"{row['start_val_macro_f1']:.3f} / {row['last_val_macro_f1']:.3f} |")


def format_table(table: pd.DataFrame) -> str:
    lines = ["| method | lr | val macro-F1 | val accuracy | best epoch | val macro-F1 at the start / after the epoch |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for row in table.to_dict("records"):
        if pd.isna(row.get("lr")):
            lines.append(f"| {row['method']} | | {row['val_macro_f1']:.3f} | {row['val_accuracy']:.3f} | | "
                         f"{reference_note(row)} |")
            continue
        name = f"**{row['method']}**" if row["chosen"] else row["method"]
        lines.append(f"| {name} | {row['lr']:g} | {_training_cells(row)}")
    return "\n".join(lines) + "\n"


def format_phase(table: pd.DataFrame) -> str:
    """A context or variant phase's table: one row per setting, the chosen one in bold."""
    lines = ["| method | lr | setting | val macro-F1 | val accuracy | best epoch | "
             "val macro-F1 at the start / after the epoch |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for row in table.to_dict("records"):
        setting = f"**{row['setting']}**" if row["chosen"] else str(row["setting"])
        lines.append(f"| {row['method']} | {row['lr']:g} | {setting} | {_training_cells(row)}")
    return "\n".join(lines) + "\n"


def pilot_markdown(grid: PilotGrid, root: Path) -> str:
    """The pilot's tables as `peftqa pilot table` prints them: a grid with phases gets a section per phase (the
    context, the rates with the reference rows, the variants); a plain grid its one table."""
    if grid.context is None and not grid.variants:
        return format_table(pilot_table(grid, root))
    sections = []
    if grid.context is not None:
        sections.append(f"### Context: {grid.context.method} at lr {grid.context.lr:g}\n\n"
                        f"{format_phase(context_rows(grid, root))}")
    sections.append(f"### Learning rates, at the chosen context\n\n{format_table(pilot_table(grid, root))}")
    if grid.variants:
        sections.append(f"### Variants, at the chosen rate\n\n{format_phase(variant_rows(grid, root))}")
    return "\n".join(sections)


def format_settings(settings: dict[str, object]) -> str:
    """The full run's settings as a table: each params key and its value, as `dvc exp run -S` would set it."""
    lines = ["| params key | value |", "| --- | --- |"]
    lines += [f"| `{key}` | `{json.dumps(value)}` |" for key, value in settings.items()]
    return "\n".join(lines) + "\n"
