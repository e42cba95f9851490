"""The recipe pilot's grid and table (peftqa/pilot.py, `peftqa pilot`): the committed grid parses into one DVC
experiment per rate index, bad grids are refused by name, and the table marks each method's val-chosen rate and
flags a training that kept its start."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from peftqa.cli.pilot import GRID_FILE, experiment_command
from peftqa.common import PeftqaError
from peftqa.pilot import format_table, load_pilot_grid, pilot_table, run_folder

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_grid_is_one_experiment_per_rate_index():
    grid = load_pilot_grid(ROOT / GRID_FILE)
    assert grid.runs == 2 and set(grid.lr) == {"prompt_tuning", "prefix_tuning", "lora"}
    command = experiment_command(grid, 1, "pilot-2")
    assert f"peft.prompt_tuning.lr={grid.lr['prompt_tuning'][1]}" in command
    assert 'methods=["base", "prompt_tuning", "prefix_tuning", "lora"]' in command
    assert command[-4:] == ["train@prompt_tuning", "train@prefix_tuning", "train@lora", "evaluate@base"]
    assert not any(target.startswith("evaluate@") and target != "evaluate@base" for target in command)


@pytest.mark.parametrize("grid, message", [
    ({"profile": {}, "lr": {"lora": [1e-3], "prompt_tuning": [1e-2, 1e-1]}}, "as many rates"),
    ({"profile": {}, "lr": {"base": [1e-3]}}, "lr.base: not a tuned method"),
    ({"profile": {}, "lr": {"lora": []}}, "lr.lora: expected a non-empty list"),
    ({"lr": {"lora": [1e-3]}}, "exactly the keys profile and lr"),
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
    (run_folder(tmp_path, 0) / "models/base/resolved_config.json").write_text(json.dumps({"family": family}))
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
