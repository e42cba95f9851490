"""Compare two runs' pipeline outputs: `python tests/compare_outputs.py OLD_ROOT NEW_ROOT`.

Each root is a project checkout after `dvc repro` (or `make run`). Every file of every out its dvc.lock records is
compared byte for byte, apart from the fields that change from run to run whatever the code does (timings, MLflow
ids, dates), named in IGNORED_* below. Prints one line per file (`same`, `same apart from ignored fields: ...` or
`DIFFERENT: <the first difference>`), the files present on one side only, then a summary; exits 0 when everything
is the same apart from ignored fields, 1 otherwise.
"""
from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pandas as pd
import yaml

IGNORED_COLUMNS = {  # CSV columns dropped before comparing -> why
    "latency_s": "wall-clock seconds per item (evaluate's and references' preds_*.csv)",
    "seconds": "wall-clock seconds per epoch (models/*/history.csv)",
    "train_seconds": "wall-clock seconds of a training (reports/protocols/seeds_test.csv)",
    "mlflow_run_id": "a new MLflow run each training (reports/protocols/seeds_test.csv)",
}
IGNORED_KEYS = {  # JSON keys deleted at any depth before comparing -> why (and any key with `latency` in it)
    "latency_mean_s": "wall-clock latency (metrics_*.json)", "latency_p50_s": "wall-clock latency",
    "latency_p95_s": "wall-clock latency",
    "examples_per_s": "items per wall-clock second (metrics_*.json, train_summary.json)",
    "seconds": "wall-clock seconds of embedding (data/features/features.json)",
    "train_seconds": "wall-clock seconds of a training (train_summary.json)",
    "mlflow_run_id": "a new MLflow run each training (train_summary.json)",
    "mlflow_experiment_id": "depends on the MLflow store the run used",
    "mlflow_model_id": "a new logged model each training",
    "cpu_bf16": "the CPU's bf16 instructions (resolved_config.json): the machine, not the run",
    "date_utc": "a date (no pipeline output has one today)", "timestamp_ms": "a timestamp (none today either)",
}
UNORDERED_KEYS = {  # JSON lists compared as sets (sorted first) -> why
    "target_modules": "peft holds them as a set and writes them in string-hash order, which changes from process to "
                      "process (adapter_config.json): the same modules in another order are the same adapter",
}
IGNORED_VALUES = {  # a JSON string or a report.md word that matches -> masked wherever it stands, why
    "MLflow model id": re.compile(r"\bm-[0-9a-f]{32}\b"),  # first: a model id's digits also look like a run id
    "MLflow run id": re.compile(r"\b[0-9a-f]{32}\b"),  # parent_runs.json's values, report.md's provenance table
}
REPORT_COLUMNS = {  # markdown table columns (report.md) masked by their header -> why
    "Latency mean / p95 (s)": "wall-clock latency", "Train time (s)": "wall-clock seconds of a training",
    "Examples/s": "items per wall-clock second", "MLflow run id": "a new run each training",
    "MLflow logged model id": "a new model each training", "MLflow experiment id": "depends on the store",
}
EXISTENCE_ONLY = {  # figures that draw timings: compared for existence only -> why
    "reports/figures/latency_bar_test.png": "bars of the measured latencies",
    "reports/figures/efficiency_panel.png": "its right panel puts macro-F1 against train time (s)",
}
Units = list[tuple[str, str]]  # (where, value) in file order: what is compared
Ignored = set[tuple[str, str, str]]  # (where, field, value): what was left out of the comparison


def output_files(root: Path) -> set[str]:
    """Every file of every out in root's dvc.lock (dvc.yaml's outs, metrics and plots, foreach stages resolved), as
    posix paths relative to root: a folder out gives the files below it, dot files (.gitignore) left out."""
    lock = root / "dvc.lock"
    stages = yaml.safe_load(lock.read_text(encoding="utf-8")).get("stages", {}) if lock.is_file() else {}
    outs = [root / out["path"] for stage in stages.values() for out in stage.get("outs", [])]
    files = [path for out in outs for path in ([out] if out.is_file() else out.rglob("*"))]
    return {path.relative_to(root).as_posix() for path in files if path.is_file() and not path.name.startswith(".")}


def ignored_key(key: str) -> bool:
    return key in IGNORED_KEYS or "latency" in key


def json_units(value, where: str, units: Units, ignored: Ignored) -> None:
    """Flatten a JSON value into units (dict order kept): ignored keys left out, IGNORED_VALUES masked."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            if ignored_key(key):
                ignored.add((f"{where}.{key}", key, json.dumps(item)))
            elif key in UNORDERED_KEYS and isinstance(item, list):  # its members compared, their order ignored
                ignored.add((f"{where}.{key}", key, json.dumps(item)))
                json_units(sorted(item, key=json.dumps), f"{where}.{key}", units, ignored)
            else:
                json_units(item, f"{where}.{key}", units, ignored)
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            json_units(item, f"{where}[{i}]", units, ignored)
    elif isinstance(value, str) and any(p.fullmatch(value) for p in IGNORED_VALUES.values()):
        ignored.add((where, next(n for n, p in IGNORED_VALUES.items() if p.fullmatch(value)), value))
        units.append((where, "<ignored>"))  # the key stays: a protocol's parent run appearing is a difference
    else:
        units.append((where or "the top", json.dumps(value)))


def csv_units(text: str, units: Units, ignored: Ignored) -> None:
    """Every cell as text (no float parsing), row by row, ignored columns left out."""
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False) if text.strip() else pd.DataFrame()
    kept = [c for c in frame.columns if c not in IGNORED_COLUMNS and "latency" not in c]
    units.append(("the header", ",".join(kept)))
    for i, row in enumerate(frame.to_dict("records")):
        units += [(f"row {i + 1} column {c}", row[c]) for c in kept]
        ignored |= {(f"row {i + 1}", c, row[c]) for c in frame.columns if c not in kept}


def markdown_units(text: str, units: Units, ignored: Ignored) -> None:
    """Line by line, with the REPORT_COLUMNS cells of each table and every IGNORED_VALUES match masked."""
    masked: list[int] = []  # the current table's masked column indexes
    for number, line in enumerate(text.splitlines(), start=1):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            masked = []
        elif not masked and not set("".join(cells)) <= set("-: "):
            masked = [i for i, cell in enumerate(cells) if cell in REPORT_COLUMNS] or [-1]  # -1: a table, none
            header = cells
        elif not set("".join(cells)) <= set("-: ") and masked != [-1]:
            for i in (i for i in masked if i < len(cells)):
                ignored.add((f"line {number}", header[i], cells[i]))
                cells[i] = "<ignored>"
            line = "| " + " | ".join(cells) + " |"
        for name, pattern in IGNORED_VALUES.items():
            ignored |= {(f"line {number}", name, found) for found in pattern.findall(line)}
            line = pattern.sub("<ignored>", line)
        units.append((f"line {number}", line))


def compare_file(old: Path, new: Path, name: str) -> tuple[bool, str]:
    """(same apart from ignored fields, the line to print)."""
    old_bytes, new_bytes = old.read_bytes(), new.read_bytes()
    if old_bytes == new_bytes:
        return True, "same"
    if name in EXISTENCE_ONLY:
        return True, f"same apart from ignored fields: the whole figure ({EXISTENCE_ONLY[name]})"
    readers = {".json": lambda t, u, i: json_units(json.loads(t), "", u, i), ".csv": csv_units, ".md": markdown_units}
    if Path(name).suffix not in readers:
        offset = next((i for i, (a, b) in enumerate(zip(old_bytes, new_bytes)) if a != b), None)
        offset = min(len(old_bytes), len(new_bytes)) if offset is None else offset
        return False, f"DIFFERENT: byte {offset} (sizes {len(old_bytes)} and {len(new_bytes)})"
    sides = []
    for data in (old_bytes, new_bytes):
        units: Units = []
        ignored: Ignored = set()
        readers[Path(name).suffix](data.decode("utf-8"), units, ignored)
        sides.append((units, ignored))
    (old_units, old_ignored), (new_units, new_ignored) = sides
    for (where_old, value_old), (where_new, value_new) in zip(old_units, new_units):
        if (where_old, value_old) != (where_new, value_new):
            where = where_old if where_old == where_new else f"{where_old} / {where_new}"
            return False, f"DIFFERENT: {where}: {value_old[:80]!r} vs {value_new[:80]!r}"
    if len(old_units) != len(new_units):
        longer, side = (old_units, "OLD") if len(old_units) > len(new_units) else (new_units, "NEW")
        where, value = longer[min(len(old_units), len(new_units))]
        return False, f"DIFFERENT: {where}: {value[:80]!r} only in {side}"
    fields = sorted({field for _, field, _ in old_ignored ^ new_ignored})
    if not fields:
        return False, "DIFFERENT: formatting only (the same values, other bytes)"
    return True, f"same apart from ignored fields: {', '.join(fields)}"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all(Path(root).is_dir() for root in argv):
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    old_root, new_root = Path(argv[0]), Path(argv[1])
    old_files, new_files = output_files(old_root), output_files(new_root)
    if not old_files | new_files:
        print(f"no outputs in {old_root} nor {new_root}: has `dvc repro` run there?")
        return 1
    counts = {"same": 0, "ignored": 0, "different": 0, "one side": 0}
    for name in sorted(old_files | new_files):
        if name not in old_files or name not in new_files:
            counts["one side"] += 1
            print(f"{name}: only in {'OLD' if name in old_files else 'NEW'}")
            continue
        same, verdict = compare_file(old_root / name, new_root / name, name)
        counts["different" if not same else "same" if verdict == "same" else "ignored"] += 1
        print(f"{name}: {verdict}")
    print(f"{len(old_files | new_files)} files: {counts['same']} same, {counts['ignored']} same apart from ignored "
          f"fields, {counts['different']} different, {counts['one side']} on one side only")
    return 0 if counts["different"] == counts["one side"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
