"""The decisive SmolLM2 study (reports/smollm2-official/): PubMedQA's official test split, its recipe pilot's
choices, its primary comparison, and what changed since the first study (reports/smollm2/). Its other blocks are
peftqa.studies.run_copy's; `peftqa docs` renders them all (study `official`) and refuses a study whose params are not
what its pilot chose on val.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from peftqa.catalog import RESOLVED_CONFIG
from peftqa.errors import PeftqaError
from peftqa.evaluation.stats import mcnemar_detectable_difference
from peftqa.files import read_json
from peftqa.params import YamlLoader
from peftqa.report.findings import DETECT_ALPHA, DETECT_POWER, format_detectable, stats_row
from peftqa.report.tables import markdown_table
from peftqa.studies.pilot import CHOICES_JSON, load_pilot_grid
from peftqa.studies.run_copy import (
    RUN_BLOCKS,
    RUN_JSON,
    RunCopy,
    duration,
    effect_ci,
    provenance,
    read_file,
    read_output,
    read_run_copy,
    row_label,
    shell_lines,
)
from peftqa.studies.shape import Study, copy_whole_run
from peftqa.studies.smollm2 import SMOLLM2_DIR, read_result

OFFICIAL_DIR = Path("reports/smollm2-official")  # the decisive study: PubMedQA's official test split, 445 items
METRIC_NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy"}  # as the tables write them


def project_root_of(study: RunCopy) -> Path:
    """The checkout a committed study sits in (studies live at reports/<name>/)."""
    return study.root.parents[1]


def pilot_folder(study: RunCopy) -> Path:
    if "pilot" not in study.run:
        raise PeftqaError(f"study {study.root}: {RUN_JSON} names no pilot (key 'pilot': the grid's folder)")
    return project_root_of(study) / study.run["pilot"]


def dotted(data: dict, key: str) -> object:
    for part in key.split("."):
        data = data[part]
    return data


def require_pilot_choices(study: RunCopy) -> None:
    """The study's params.yaml must hold every setting the pilot's choices give the full run
    (reports/<pilot>/choices.json, written by `peftqa pilot table` from its runs): what ran is what val chose."""
    wanted = read_file(pilot_folder(study), CHOICES_JSON, read_json)["full_run"]
    held = yaml.load((study.root / "params.yaml").read_text(encoding="utf-8"), Loader=YamlLoader)
    differ = {key: (dotted(held, key), value) for key, value in wanted.items() if dotted(held, key) != value}
    if differ:
        listed = "; ".join(f"{key}: {got!r}, the pilot chose {want!r}" for key, (got, want) in differ.items())
        raise PeftqaError(f"study {study.root}: params.yaml differs from the pilot's choices for the full run "
                          f"({listed}): run the study with `peftqa pilot command --grid "
                          f"{study.run['pilot']}/grid.yaml`")


def best_val_method(study: RunCopy) -> str:
    """The tuned method with the best val macro-F1 at its kept epoch (ties: the earlier in methods)."""
    return max(study.tuned, key=lambda m: (study.summary[m]["best_val_macro_f1"], -study.tuned.index(m)))


def primary(study: RunCopy) -> str:
    """The primary comparison, as the pilot's grid named it before any run: the effect, its interval and unadjusted
    bootstrap p, the answer, and what the test split can detect at that comparison's discordance."""
    spec = load_pilot_grid(pilot_folder(study) / "grid.yaml").primary
    method = best_val_method(study) if spec["method"] == "best_val" else str(spec["method"])
    against, metric = str(spec["against"]), str(spec["metric"])
    shown = METRIC_NAMES.get(metric, metric)
    confidence = study.params.stats.confidence
    if abs(1 - confidence - float(spec["alpha"])) > 1e-12:
        raise PeftqaError(f"study {study.root}: the primary comparison's alpha {spec['alpha']} needs stats.confidence "
                          f"{1 - float(spec['alpha']):.2f}, the run used {confidence}")
    boot = stats_row(study.stats, method, against, "paired_bootstrap", metric)
    accuracy = stats_row(study.stats, method, against, "paired_bootstrap", "accuracy")
    mcnemar = stats_row(study.stats, method, against, "mcnemar_exact", "accuracy")
    n = study.n_test
    rate = (mcnemar.b + mcnemar.c) / n
    smallest = format_detectable(mcnemar_detectable_difference(n, rate, DETECT_ALPHA, DETECT_POWER))
    picked = (f", the tuned method with the best val macro-F1 ({study.summary[method]['best_val_macro_f1']:.3f})"
              if spec["method"] == "best_val" else "")
    if boot.ci_low > 0 or boot.ci_high < 0:
        verdict = (f"{method} {'beats' if boot.ci_low > 0 else 'is below'} {row_label(study, against)} on test "
                   f"{shown}: the interval excludes 0")
    else:
        verdict = f"undecidable at n = {n}: the interval contains 0"
    level = f"{confidence:.0%}"
    return (f"**The primary comparison**, named in `{study.run['pilot']}/grid.yaml` before the pilot "
            f"ran: **{method}**{picked}, against **{row_label(study, against)}**, on test "
            f"{shown} (n = {n}, α = {spec['alpha']}, unadjusted: it is the one primary "
            f"comparison). Δ {shown} = {effect_ci(boot)} ({level} paired bootstrap interval), "
            f"bootstrap p = {boot.p_value:.4f}: **{verdict}**. On accuracy, Δ = {effect_ci(accuracy)}, b / c = "
            f"{int(mcnemar.b)} / {int(mcnemar.c)}, exact McNemar p = {mcnemar.p_value:.4f}. At this comparison's "
            f"discordance ({rate:.3f}) the exact McNemar test detects an accuracy difference of {smallest} with "
            f"{DETECT_POWER:.0%} power at n = {n}.")


def settings_row(study: RunCopy) -> dict[str, str]:
    """What a study's run was, in the terms the two SmolLM2 studies differ in."""
    params, n = study.params, study.split_stats["n"]
    config = read_output(study.root, RESOLVED_CONFIG, method=study.tuned[0])
    epochs = ", ".join(f"{m} {study.summary[m]['best_epoch']}" for m in study.tuned)
    protocol = ("PubMedQA's official test split (its 500 PMIDs), val drawn from the rest"
                if params.prepare.protocol == "official" else f"random, stratified, seed {params.prepare.seed}")
    return {"protocol": protocol,
            "items train / val / test": f"{int(n['train'])} / {int(n['val'])} / {int(n['test'])}",
            "context": f"max_length {params.model.max_length}, truncation {params.model.truncation}",
            "epochs": f"up to {params.train.epochs} (patience {params.train.patience}); best: {epochs}",
            "compute": f"{params.model.dtype} ({config.get('compute', 'fp32')})",
            "batches": "of similar length" if params.train.length_groups else "shuffled",
            "learning rates": ", ".join(f"{m} {params.peft[m].lr:g}" for m in study.tuned),
            "prefix projection": str(params.peft["prefix_tuning"].prefix_projection).lower(),
            "reference rows": ", ".join(study.references),
            "wall time": duration(study.run["wall_s"]) if "wall_s" in study.run else "n/a"}


def changes(study: RunCopy) -> str:
    """The first SmolLM2 study beside this one: what changed between them."""
    first = read_run_copy(project_root_of(study) / SMOLLM2_DIR)
    before, after = settings_row(first), settings_row(study)
    return markdown_table(["", f"first study (`{SMOLLM2_DIR}/`)", f"this study (`{OFFICIAL_DIR}/`)"],
                          [[key, before[key], after[key]] for key in before])


def official_commands(study: RunCopy) -> str:
    """The pilot's command and the study's, with the study's wall time."""
    pilot, run = study.run["pilot"], study.run
    lines = [f"The recipe pilot, from its committed grid (demo scale: 128 train items, 1 epoch; "
             f"[its README](../{pilot}/README.md)):", "", "```bash", f"peftqa pilot run --grid {pilot}/grid.yaml",
             "```", "", f"The study, as it made `{OFFICIAL_DIR}/`: the profile, the pilot's choices and the grid's "
             f"`full_run` (`peftqa pilot command` prints it); {duration(run['wall_s'])} on {run['machine']}.", "",
             shell_lines(run["command"])]
    return "\n".join(lines)


def read_official(folder: Path) -> RunCopy:
    """The decisive study: a result, whose params are what its pilot chose on val."""
    study = read_result(folder)
    require_pilot_choices(study)
    return study


OFFICIAL = Study(name="official", folder=OFFICIAL_DIR, read=read_official, provenance=provenance,
                 blocks={**RUN_BLOCKS, "primary": primary, "changes": changes, "commands": official_commands},
                 copy_in=copy_whole_run)  # the decisive study's blocks: no demo, no reference study beside it
