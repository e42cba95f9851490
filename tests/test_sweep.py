"""Tests for peftqa.cli.sweep: the committed grid expands to one queued experiment per point, the baseline point is not
queued, names are valid git refs that `dvc exp run -S` values parse back to the grid's values."""
from __future__ import annotations

import re

import pytest
import yaml

from peftqa.cli.sweep import GRID_FILE, load_grid, queue_commands
from peftqa.errors import PeftqaError
from peftqa.files import project_root

PARAMS = {"peft": {"lora": {"lr": 5e-4, "r": 8}, "prefix_tuning": {"lr": 1e-2, "prefix_projection": False}}}


def test_every_point_but_the_baseline_is_queued_with_values_yaml_reads_back():
    grid = {"prefix_tuning": {"peft.prefix_tuning.lr": [1e-3, 1e-2],
                              "peft.prefix_tuning.prefix_projection": [False, True]},
            "lora": {"peft.lora.lr": [1e-4, 5e-4]}}
    commands = queue_commands(grid, PARAMS)
    assert len(commands) == 4 + 2 - 2  # the baseline point of each table is the baseline row itself
    names = [command[command.index("-n") + 1] for command in commands]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n) for n in names)
    points = []
    for command in commands:
        sets = [command[i + 1] for i, word in enumerate(command) if word == "-S"]
        points.append({s.split("=", 1)[0]: yaml.safe_load(s.split("=", 1)[1]) for s in sets})
    assert {"peft.prefix_tuning.lr": 1e-3, "peft.prefix_tuning.prefix_projection": True} in points
    assert {"peft.lora.lr": 1e-4} in points
    assert {"peft.prefix_tuning.lr": 1e-2, "peft.prefix_tuning.prefix_projection": False} not in points


def test_grid_errors_name_the_problem(tmp_path):
    with pytest.raises(PeftqaError, match="no key peft.lora.rank"):
        queue_commands({"lora": {"peft.lora.rank": [4, 8]}}, PARAMS)
    with pytest.raises(PeftqaError, match="not a table"):
        queue_commands({"lora": {"peft.lora.r": [4]}}, PARAMS, only=["dora"])
    bad = tmp_path / "grid.yaml"
    bad.write_text("lora:\n  peft.lora.r: 4\n", encoding="utf-8")
    with pytest.raises(PeftqaError, match="non-empty list"):
        load_grid(bad)


def test_the_committed_grid_sweeps_each_tuned_default_method_with_three_learning_rates():
    root = project_root()
    grid = load_grid(root / GRID_FILE)
    methods = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))["methods"]
    assert {m for m in methods if m != "base"} <= set(grid)
    for method, axes in grid.items():
        assert len(axes[f"peft.{method}.lr"]) >= 3
        assert all(key.startswith(f"peft.{method}.") for key in axes)
    assert set(grid["prompt_tuning"]["peft.prompt_tuning.init"]) == {"random", "text"}
    assert set(grid["prefix_tuning"]["peft.prefix_tuning.prefix_projection"]) == {False, True}
