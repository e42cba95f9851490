"""The recipe pilot's grid and table (peftqa/studies/pilot.py, `peftqa pilot`): the committed grid parses into one DVC
experiment per rate index, bad grids are refused by name, and the table marks each method's val-chosen rate and
flags a training that kept its start."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from peftqa.cli.pilot_run import GRID_FILE, context_runs, experiment_command, lr_runs, variant_runs
from peftqa.errors import PeftqaError
from peftqa.studies.pilot import (
    context_folder,
    format_table,
    full_run_settings,
    load_pilot_grid,
    pilot_choices,
    pilot_markdown,
    pilot_table,
    run_folder,
    variant_folder,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_grids_plan_their_runs():
    """The first pilot: one experiment per rate index. The decisive study's: its context phase first, LoRA alone at
    one rate, and no run scores a test item (train@base, never evaluate@)."""
    old = load_pilot_grid(ROOT / "reports/smollm2-pilot/grid.yaml")
    assert old.runs == 2 and set(old.lr) == {"prompt_tuning", "prefix_tuning", "lora"} and old.context is None
    grid = load_pilot_grid(ROOT / GRID_FILE)
    assert grid.runs == 3 and grid.primary["against"] == "base_calibrated" and grid.primary["split"] == "test"
    assert grid.profile["prepare.labels"] == ["yes", "no"]
    contexts = context_runs(grid, ROOT / GRID_FILE.parent)
    assert [run.targets for run in contexts] == [["train@lora"]] * 3
    command = experiment_command(contexts[1], "pilot-context-2")
    assert "model.max_length=512" in command and 'model.truncation="start"' in command
    assert 'methods=["base", "lora"]' in command and "peft.lora.lr=0.01" in command
    assert grid.targets() == ["train@prompt_tuning", "train@prefix_tuning", "train@lora", "train@base"]
    assert grid.variant_runs() == [("prefix_tuning", "peft.prefix_tuning.prefix_projection", False)]


@pytest.mark.parametrize("grid, message", [
    ({"profile": {}, "lr": {"lora": [1e-3], "prompt_tuning": [1e-2, 1e-1]}}, "as many rates"),
    ({"profile": {}, "lr": {"base": [1e-3]}}, "lr.base: .base. is not a tuned method"),
    ({"profile": {}, "lr": {"lora": []}}, "lr.lora: expected a non-empty list"),
    ({"lr": {"lora": [1e-3]}}, "expected the keys profile and lr"),
    ({"profile": {}, "lr": {"lora": [1e-3]}, "primary": {"method": "lora"}}, "primary: expected exactly the keys"),
    ({"profile": {}, "lr": {"lora": [1e-3]}, "context": {"method": "lora", "lr": 1e-2, "options": [{}]}},
     "context.options"),
    ({"profile": {}, "lr": {"lora": [1e-3]}, "variants": {"lora": {"peft.lora.r": [8]}}}, "at least two"),
    ({"profile": {}, "lr": {"lora": [1e-3]}, "variants": {"lora": {"train.epochs": [1, 2]}}}, "own settings"),
    ({"profile": {"peft.lora.r": 4}, "lr": {"lora": [1e-3]}, "variants": {"lora": {"peft.lora.r": [8, 16]}}},
     "the first value is the lr runs' own"),
])
def test_a_bad_grid_is_refused_by_name(tmp_path, grid, message):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(PeftqaError, match=message):
        load_pilot_grid(path)


def write_run(root: Path, run: int, method: str, history: list[float], best: int) -> None:
    folder = run_folder(root, run) / "models" / method
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": range(len(history)), "val_macro_f1": history,
                  "val_accuracy": [0.5] * len(history)}).to_csv(folder / "history.csv", index=False)
    (folder / "train_summary.json").write_text(json.dumps({"best_epoch": best, "best_val_macro_f1": history[best]}))


@pytest.mark.parametrize("family", ["causal", "encoder"])
def test_the_table_marks_the_val_chosen_rate_and_flags_a_kept_start(tmp_path, family):
    """A language model's base gets its calibrated row; the encoder's base is the trained probe, which gets none."""
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"profile": {}, "lr": {"lora": [1e-3, 1e-2]}}))
    grid = load_pilot_grid(path)
    write_run(tmp_path, 0, "lora", [0.40, 0.35], best=0)  # got worse: the start is kept
    write_run(tmp_path, 1, "lora", [0.40, 0.55], best=1)
    evaluation = run_folder(tmp_path, 0) / "reports" / "eval" / "base"
    evaluation.mkdir(parents=True)
    (evaluation / "metrics_val.json").write_text(json.dumps({"macro_f1": 0.40, "accuracy": 0.45}))
    # zero-shot says no to all but the surest item; an offset near +2.3 turns the three likeliest into yes
    pd.DataFrame({"pmid": ["1", "2", "3", "4", "5"], "gold": ["yes", "yes", "yes", "no", "no"],
                  "p_yes": [0.6, 0.2, 0.15, 0.05, 0.01]}).to_csv(evaluation / "preds_val.csv", index=False)
    (run_folder(tmp_path, 0) / "models/base").mkdir(parents=True)
    (run_folder(tmp_path, 0) / "models/base/resolved_config.json").write_text(json.dumps(
        {"family": family, "prepare.labels": "yes,no", "model.scoring": "verbalizer"}))
    table = pilot_table(grid, tmp_path)
    if family == "encoder":
        assert table["method"].tolist() == ["base", "lora", "lora"]
        assert "| base | | 0.400 | 0.450 | | the linear probe on the frozen features" in format_table(table)
        return
    assert table["method"].tolist() == ["base", "base_calibrated", "lora", "lora"]
    tuned = table[table["method"] == "lora"]
    assert tuned["kept_its_start"].tolist() == [True, False]
    assert tuned["chosen"].tolist() == [False, True]
    markdown = format_table(table)
    assert "| 0 (kept its start) |" in markdown and "| **lora** | 0.01 | 0.550 |" in markdown
    calibrated = table.set_index("method").loc["base_calibrated"]
    assert calibrated["val_macro_f1"] == 1.0
    assert 1.735 < calibrated["offset"] < 2.944  # between -logit(0.15) and -logit(0.05)
    assert "offset +" in markdown


# -----------------------------------------------------------------------------
# a grid with phases: the context chosen first, the rates at it, the variants at the chosen rates

PHASED = {"profile": {"train.limit_train": 128, "peft.prefix_tuning.prefix_projection": True},
          "lr": {"prefix_tuning": [1e-3, 3e-3], "lora": [3e-3, 1e-2]},
          "context": {"method": "lora", "lr": 1e-2, "options": [{"model.max_length": 768},
                                                                 {"model.max_length": 512}]},
          "variants": {"prefix_tuning": {"peft.prefix_tuning.prefix_projection": [True, False]}},
          "full_run": {"train.limit_train": 0, "train.epochs": 3}}


def write_training(folder: Path, method: str, history: list[float]) -> None:
    (folder / "models" / method).mkdir(parents=True, exist_ok=True)
    best = max(range(len(history)), key=lambda i: (history[i], -i))
    pd.DataFrame({"epoch": range(len(history)), "val_macro_f1": history, "val_accuracy": [0.5] * len(history)}
                 ).to_csv(folder / "models" / method / "history.csv", index=False)
    (folder / "models" / method / "train_summary.json").write_text(json.dumps(
        {"best_epoch": best, "best_val_macro_f1": history[best]}))


def write_phases(root: Path, context: list[float], lora: list[float], prefix: list[float], variant: float) -> None:
    for i, score in enumerate(context):
        write_training(context_folder(root, i), "lora", [0.3, score])
    for run, (lora_score, prefix_score) in enumerate(zip(lora, prefix)):
        write_training(run_folder(root, run), "lora", [0.3, lora_score])
        write_training(run_folder(root, run), "prefix_tuning", [0.3, prefix_score])
    write_training(variant_folder(root, 0), "prefix_tuning", [0.3, variant])
    evaluation = run_folder(root, 0) / "reports" / "eval" / "base"
    evaluation.mkdir(parents=True)
    (evaluation / "metrics_val.json").write_text(json.dumps({"macro_f1": 0.3, "accuracy": 0.4}))
    pd.DataFrame({"pmid": ["1", "2"], "gold": ["yes", "no"], "p_yes": [0.6, 0.2]}).to_csv(
        evaluation / "preds_val.csv", index=False)
    (run_folder(root, 0) / "models/base").mkdir(parents=True)
    (run_folder(root, 0) / "models/base/resolved_config.json").write_text(json.dumps(
        {"family": "causal", "prepare.labels": "yes,no", "model.scoring": "verbalizer"}))


@pytest.mark.parametrize(("context", "variant", "length", "projection"), [
    ([0.40, 0.45], 0.50, 512, True),   # 512 wins; the variant ties the projection's 0.50: the lr runs' value stays
    ([0.45, 0.45], 0.55, 768, False),  # a tie goes to the first option; the variant beats it
])
def test_the_phases_choose_on_val_and_make_the_full_runs_settings(tmp_path, context, variant, length, projection):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(PHASED, sort_keys=False))
    grid = load_pilot_grid(path)
    write_phases(tmp_path, context, lora=[0.40, 0.60], prefix=[0.50, 0.45], variant=variant)
    assert pilot_choices(grid, tmp_path) == {"model.max_length": length, "peft.lora.lr": 1e-2,
                                             "peft.prefix_tuning.lr": 1e-3,
                                             "peft.prefix_tuning.prefix_projection": projection}
    settings = full_run_settings(grid, tmp_path)
    assert settings["train.limit_train"] == 0 and settings["train.epochs"] == 3  # full_run replaces the profile's
    assert settings["methods"] == ["base", "prefix_tuning", "lora"]
    lr_run = lr_runs(grid, tmp_path)[1]
    assert lr_run.settings["model.max_length"] == length and lr_run.score_base is False
    assert variant_runs(grid, tmp_path)[0].settings["peft.prefix_tuning.lr"] == 1e-3
    markdown = pilot_markdown(grid, tmp_path)
    assert markdown.count("### ") == 3 and f"**model.max_length={length}**" in markdown


def test_the_study_must_hold_the_pilots_choices(tmp_path):
    """require_pilot_choices reads the pilot's choices.json; a params.yaml that differs in one setting is refused by
    name (the negative control), one that holds them all passes."""
    from types import SimpleNamespace

    from peftqa.studies.official import require_pilot_choices

    pilot = tmp_path / "reports" / "pilot"
    pilot.mkdir(parents=True)
    (pilot / "choices.json").write_text(json.dumps({"full_run": {"peft.lora.lr": 0.01, "prepare.labels": ["yes",
                                                                                                         "no"]}}))
    study_root = tmp_path / "reports" / "study"
    study_root.mkdir()
    study = SimpleNamespace(root=study_root, run={"pilot": "reports/pilot"})
    (study_root / "params.yaml").write_text("peft:\n  lora:\n    lr: 0.01\nprepare:\n  labels: [yes, no]\n")
    require_pilot_choices(study)
    (study_root / "params.yaml").write_text("peft:\n  lora:\n    lr: 0.003\nprepare:\n  labels: [yes, no]\n")
    with pytest.raises(PeftqaError, match=r"peft.lora.lr: 0.003, the pilot chose 0.01"):
        require_pilot_choices(study)
