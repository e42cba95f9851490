"""DVC experiments as data: `dvc exp show --json` (DVC 3.x) parsed into one record per experiment, with its params
flattened to dotted keys (peft.lora.r) and its metrics keyed by file. Pure functions: running `dvc exp show` is the
caller's job (`peftqa ablation`); the sweep's grid keys (`peftqa sweep`) are dotted the same way."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peftqa.errors import PeftqaError

PARAMS_FILE = "params.yaml"  # the params file whose keys are written without a "<file>:" prefix
Kind = Literal["workspace", "baseline", "experiment"]


@dataclass(frozen=True)
class ExpRecord:
    """One row of `dvc exp show`: its params flattened to dotted keys and its metrics keyed by file path."""
    name: str  # experiment name; the branch (or short rev) for a baseline; "workspace"
    rev: str  # short commit, or "workspace"
    kind: Kind
    params: dict[str, object] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)


def flatten_params(nested: dict, prefix: str = "") -> dict[str, object]:
    """{"peft": {"lora": {"r": 8}}} -> {"peft.lora.r": 8}; lists and scalars are leaves. The one reader of dotted
    params keys: the experiments' params here, the sweep's grid keys in peftqa.cli.sweep."""
    flat = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


# -----------------------------------------------------------------------------
# parsing `dvc exp show --json` (DVC 3.x): a list of baselines, each with its experiments' revs nested inside


def _record(entry: dict, kind: Kind, fallback_name: str) -> ExpRecord:
    data = entry.get("data") or {}
    params = {}
    for file, content in (data.get("params") or {}).items():
        prefix = "" if file == PARAMS_FILE else f"{file}:"
        params.update(flatten_params((content or {}).get("data") or {}, prefix=prefix))
    metrics = {file.replace("\\", "/"): content["data"] for file, content in (data.get("metrics") or {}).items()
               if isinstance(content, dict) and isinstance(content.get("data"), dict)}
    rev = str(entry.get("rev") or "")
    short_rev = rev if rev == "workspace" else rev[:7]
    return ExpRecord(name=entry.get("name") or fallback_name or short_rev, rev=short_rev, kind=kind,
                     params=params, metrics=metrics)


def _error_text(entry: dict) -> str | None:
    """Why an entry has no usable data (an `error` DVC reported, or no data at all: queued or running); else None."""
    error = entry.get("error")
    if error:
        return error.get("msg", str(error)) if isinstance(error, dict) else str(error)
    if not (entry.get("data") or {}).get("params"):
        return "no params (queued, running or failed)"
    return None


def parse_exp_show(entries: list) -> tuple[list[ExpRecord], list[str]]:
    """Records in `dvc exp show` order (workspace, then each baseline followed by its experiments), and one
    "<name>: <why>" note per entry skipped because DVC reported an error or no data for it.

    The workspace is kept only when it differs from every committed row: after `dvc exp run` it is a copy of the last
    experiment, and listing it twice would count that experiment twice in the majority that flags confounds.
    """
    if not isinstance(entries, list):
        raise PeftqaError(f"`dvc exp show --json` gave a {type(entries).__name__}, expected a list of baselines "
                          "(is this DVC 3?)")
    records, skipped = [], []
    for entry in entries:
        kind = "workspace" if entry.get("rev") == "workspace" else "baseline"
        candidates = [(entry, kind, "workspace" if kind == "workspace" else "")]
        for experiment in entry.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state")
            for rev in experiment.get("revs") or []:
                if state in ("queued", "running"):  # its metrics are still the baseline's copy: not a result yet
                    skipped.append(f"{experiment.get('name') or str(rev.get('rev'))[:7]}: still {state}")
                else:
                    candidates.append((rev, "experiment", experiment.get("name") or ""))
        for candidate, candidate_kind, fallback in candidates:
            why = _error_text(candidate)
            if why is None:
                records.append(_record(candidate, candidate_kind, fallback))
            elif candidate_kind != "workspace":  # an empty workspace (nothing run yet) is not worth a note
                skipped.append(f"{candidate.get('name') or fallback or str(candidate.get('rev'))[:7]}: {why}")
    committed = [(r.params, r.metrics) for r in records if r.kind != "workspace"]
    records = [r for r in records if r.kind != "workspace" or (r.params, r.metrics) not in committed]
    return records, skipped

