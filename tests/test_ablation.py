"""Tests for `peftqa ablation` (peftqa/studies/experiments.py, peftqa/studies/ablation.py,
peftqa/cli/ablation_table.py): pure tests on a hand-made `dvc exp show --json` (the DVC 3.67 shape), one error-path test
per failure mode, and one run against a real throwaway git + DVC repo with three `dvc exp run -S peft.lora.r=...`."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pandas as pd
import pytest

from peftqa.cli.ablation_table import main, read_exp_show
from peftqa.errors import PeftqaError
from peftqa.studies.ablation import build_ablation, format_markdown, metrics_path, plot_ablation
from peftqa.studies.experiments import parse_exp_show

BASE_PARAMS = {"peft": {"lora": {"lr": 1e-3, "r": 8, "alpha": 16}, "prompt_tuning": {"init": "random"}},
               "train": {"epochs": 4, "seed": 42}}


def set_dotted(params: dict, dotted: str, value: object) -> dict:
    params = copy.deepcopy(params)
    *parents, leaf = dotted.split(".")
    node = params
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value
    return params


def eval_metrics(val_f1: float, test_f1: float, test_accuracy: float = 0.6, method: str = "lora") -> dict:
    """The `metrics` of one exp-show entry: evaluate@<method>'s two files, as DVC reports them."""
    return {metrics_path(method, "val"): {"data": {"n": 89, "accuracy": 0.6, "macro_f1": val_f1}},
            metrics_path(method, "test"): {"data": {"n": 89, "accuracy": test_accuracy, "macro_f1": test_f1}}}


def rev_entry(rev: str, name: str | None, params: dict, metrics: dict, error: dict | None = None) -> dict:
    """One rev as `dvc exp show --json` (DVC 3.67) writes it."""
    return {"rev": rev, "name": name, "error": error, "experiments": None,
            "data": {"rev": rev, "timestamp": "2025-01-01T00:00:00", "params": {"params.yaml": {"data": params}},
                     "metrics": metrics, "deps": {}, "outs": {}, "meta": {}}}


def exp_show(experiments: dict[str, tuple[dict, dict]], baseline: tuple[dict, dict] | None = None,
             workspace: tuple[dict, dict] | None = None) -> list:
    """[workspace, baseline with its experiments]; each experiment {name: (params overrides, metrics)}."""
    base_params, base_metrics = baseline or ({}, eval_metrics(0.50, 0.48))
    params = BASE_PARAMS
    for dotted, value in base_params.items():
        params = set_dotted(params, dotted, value)
    entries = []
    if workspace is not None:
        ws_params = params
        for dotted, value in workspace[0].items():
            ws_params = set_dotted(ws_params, dotted, value)
        entries.append(rev_entry("workspace", None, ws_params, workspace[1]))
    baseline_entry = rev_entry("a" * 40, "main", params, base_metrics)
    baseline_entry["experiments"] = []
    for i, (name, (overrides, metrics)) in enumerate(experiments.items()):
        exp_params = params
        for dotted, value in overrides.items():
            exp_params = set_dotted(exp_params, dotted, value)
        revs = [rev_entry(f"{i}" * 40, name, exp_params, metrics)]
        baseline_entry["experiments"].append({"revs": revs, "executor": None, "name": name})
    return entries + [baseline_entry]


RANK_SWEEP = {  # val peaks at r=4, test at r=16: selection must follow val
    "r2": ({"peft.lora.r": 2}, eval_metrics(0.52, 0.47, 0.55)),
    "r4": ({"peft.lora.r": 4}, eval_metrics(0.61, 0.50, 0.58)),
    "r16": ({"peft.lora.r": 16}, eval_metrics(0.55, 0.57, 0.62)),
}


def ablation(entries: list, param: str = "peft.lora.r", method: str = "lora", **kwargs) -> tuple[pd.DataFrame, list]:
    records, errored = parse_exp_show(entries)
    table, skipped = build_ablation(records, param, method, **kwargs)
    return table, errored + skipped


# -----------------------------------------------------------------------------
# parsing


def test_parse_exp_show_flattens_params_and_drops_a_workspace_that_repeats_an_experiment():
    entries = exp_show(RANK_SWEEP, workspace=({"peft.lora.r": 16}, RANK_SWEEP["r16"][1]))
    records, skipped = parse_exp_show(entries)
    assert [(r.name, r.kind) for r in records] == [("main", "baseline"), ("r2", "experiment"), ("r4", "experiment"),
                                                    ("r16", "experiment")]
    assert records[0].rev == "aaaaaaa" and skipped == []
    assert records[1].params["peft.lora.r"] == 2 and records[1].params["peft.prompt_tuning.init"] == "random"
    assert records[2].metrics[metrics_path("lora", "val")]["macro_f1"] == 0.61


def test_parse_exp_show_keeps_a_workspace_with_uncommitted_changes():
    entries = exp_show(RANK_SWEEP, workspace=({"peft.lora.r": 32}, eval_metrics(0.4, 0.4)))
    records, _ = parse_exp_show(entries)
    assert records[0].name == "workspace" and records[0].params["peft.lora.r"] == 32


def test_parse_exp_show_skips_entries_dvc_reports_an_error_for():
    entries = exp_show(RANK_SWEEP)
    entries[0]["experiments"][0]["revs"][0]["error"] = {"type": "ReproductionError", "msg": "failed to reproduce 'x'"}
    entries[0]["experiments"][1]["revs"][0]["data"] = {}  # queued: no data yet
    records, skipped = parse_exp_show(entries)
    assert [r.name for r in records] == ["main", "r16"]
    assert skipped == ["r2: failed to reproduce 'x'", "r4: no params (queued, running or failed)"]


# -----------------------------------------------------------------------------
# the table


def test_rows_are_sorted_by_the_swept_value_and_carry_val_and_test_metrics():
    table, skipped = ablation(exp_show(RANK_SWEEP))
    assert skipped == []
    assert table["peft.lora.r"].tolist() == [2, 4, 8, 16]
    assert table["experiment"].tolist() == ["r2", "r4", "main", "r16"]
    assert table["val_macro_f1"].tolist() == [0.52, 0.61, 0.50, 0.55]
    assert table["test_macro_f1"].tolist() == [0.47, 0.50, 0.48, 0.57]
    assert table["test_accuracy"].tolist() == [0.55, 0.58, 0.6, 0.62]
    assert table["test_n"].tolist() == [89] * 4


def test_the_chosen_row_has_the_best_val_metric_not_the_best_test_metric():
    table, _ = ablation(exp_show(RANK_SWEEP))
    assert table.loc[table["chosen"], "experiment"].tolist() == ["r4"]
    on_test, _ = ablation(exp_show(RANK_SWEEP), select_on="test")
    assert on_test.loc[on_test["chosen"], "experiment"].tolist() == ["r16"]


def test_a_tie_on_val_goes_to_the_smallest_value():
    tied = {**RANK_SWEEP, "r16": ({"peft.lora.r": 16}, eval_metrics(0.61, 0.70))}
    table, _ = ablation(exp_show(tied))
    assert table.loc[table["chosen"], "peft.lora.r"].tolist() == [4]


def test_an_experiment_that_changes_another_param_is_flagged_as_confounded():
    confounded = {**RANK_SWEEP, "r16": ({"peft.lora.r": 16, "peft.lora.alpha": 32, "train.epochs": 8},
                                        RANK_SWEEP["r16"][1])}
    table, _ = ablation(exp_show(confounded))
    flags = dict(zip(table["experiment"], table["other_changes"]))
    assert flags == {"r2": "", "r4": "", "main": "", "r16": "peft.lora.alpha, train.epochs"}
    assert "other_changes:" in format_markdown(table, "peft.lora.r", "macro_f1", "val", [])


def test_an_experiment_without_metrics_is_skipped_with_a_note():
    broken = dict(RANK_SWEEP)
    test_path = metrics_path("lora", "test")
    broken["r2"] = ({"peft.lora.r": 2}, {test_path: RANK_SWEEP["r2"][1][test_path],
                                         metrics_path("lora", "val"): {"error": {"type": "FileNotFoundError",
                                                                                 "msg": "no such file"}}})
    broken["r4"] = ({"peft.lora.r": 4}, eval_metrics(0.61, 0.50))
    del broken["r4"][1][metrics_path("lora", "test")]["data"]["macro_f1"]
    table, skipped = ablation(exp_show(broken))
    assert table["experiment"].tolist() == ["main", "r16"]
    assert skipped == [f"r2: no {metrics_path('lora', 'val')}",
                       f"r4: no {metrics_path('lora', 'test')} key 'macro_f1'"]
    assert "2 skipped: r2: no" in format_markdown(table, "peft.lora.r", "macro_f1", "val", skipped)


def test_a_string_param_sorts_as_text_and_reads_its_method_from_the_key():
    sweep = {"text": ({"peft.prompt_tuning.init": "text"}, eval_metrics(0.6, 0.55, method="prompt_tuning"))}
    table, _ = ablation(exp_show(sweep, baseline=({}, eval_metrics(0.5, 0.5, method="prompt_tuning"))),
                        param="peft.prompt_tuning.init", method="prompt_tuning")
    assert table["peft.prompt_tuning.init"].tolist() == ["random", "text"]
    assert table.loc[table["chosen"], "experiment"].tolist() == ["text"]


def test_the_markdown_names_the_chosen_value_and_its_test_score():
    table, _ = ablation(exp_show(RANK_SWEEP))
    markdown = format_markdown(table, "peft.lora.r", "macro_f1", "val", [])
    assert "chosen by val macro-F1: r=4 (test macro-F1 0.500)." in markdown
    assert markdown.splitlines()[0].startswith("| experiment")
    assert "other_changes:" not in markdown


@pytest.mark.parametrize("values, log_x", [([2, 4, 8, 16], True), ([4, 8], False), ([0, 4, 32], False)])
def test_the_figure_uses_a_log_axis_only_for_positive_values_spanning_8x(values, log_x):
    sweep = {f"r{v}": ({"peft.lora.r": v}, eval_metrics(0.5 + v / 100, 0.5)) for v in values if v != 8}
    table, _ = ablation(exp_show(sweep))
    fig = plot_ablation(table, "peft.lora.r", "macro_f1", "lora")
    assert (fig.axes[0].get_xscale() == "log") is log_x


def test_a_text_param_gets_a_categorical_axis():
    sweep = {"text": ({"peft.prompt_tuning.init": "text"}, eval_metrics(0.6, 0.55))}
    table, _ = ablation(exp_show(sweep), param="peft.prompt_tuning.init")
    axis = plot_ablation(table, "peft.prompt_tuning.init", "macro_f1", "lora").axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["random", "text"]


# -----------------------------------------------------------------------------
# one test per failure mode


@pytest.mark.parametrize("param, method, message", [
    ("peft.lora.rank", "lora",
     "peft.lora.rank is not a param of any experiment in `dvc exp show`; did you mean peft.lora.r"),
    ("peft.lora.alpha", "lora",
     "no experiment in `dvc exp show` sets peft.lora.alpha (every row has peft.lora.alpha=16); "
     "run e.g. `dvc exp run -S peft.lora.alpha=32` first"),
])
def test_build_ablation_rejects_an_unknown_or_unvaried_param(param, method, message):
    with pytest.raises(PeftqaError) as err:
        ablation(exp_show(RANK_SWEEP), param=param, method=method)
    assert message in str(err.value)


def test_build_ablation_fails_when_no_experiment_has_metrics():
    sweep = {"r4": ({"peft.lora.r": 4}, {})}
    with pytest.raises(PeftqaError,
                       match=r"no experiment that sets peft.lora.r has reports/eval/lora/metrics_val.json"):
        ablation(exp_show(sweep, baseline=({}, {})))


@pytest.mark.parametrize("argv, message", [
    (["--param", "train.epochs"], "train.epochs is not under peft.<method>"),
    (["--param", "peft.lora.r", "--method", "ia3"], "--method ia3 contradicts --param peft.lora.r"),
    (["--param", "peft.nope.r"], "'nope' is not a PEFT method"),
    (["--param", "peft.lora.r", "--json-file", "missing.json"], "--json-file missing.json: not found"),
])
def test_main_rejects_bad_arguments(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PeftqaError) as err:
        main(argv)
    assert message in str(err.value)


def test_read_exp_show_rejects_a_file_that_is_not_json(tmp_path):
    (tmp_path / "dump.json").write_text("WARNING: something\n[", encoding="utf-8")
    with pytest.raises(PeftqaError, match="not JSON"):
        read_exp_show(tmp_path / "dump.json", tmp_path)
    with pytest.raises(PeftqaError, match="expected a list of baselines"):
        parse_exp_show({"workspace": {}})


# -----------------------------------------------------------------------------
# the command, on a saved dump and on a real DVC repo


def test_main_writes_csv_markdown_and_png(tmp_path, monkeypatch, capsys):
    dump = tmp_path / "exp_show.json"
    dump.write_text(json.dumps(exp_show(RANK_SWEEP)), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    main(["--param", "peft.lora.r", "--json-file", str(dump), "--out", str(tmp_path / "ablation")])
    out = tmp_path / "ablation"
    table = pd.read_csv(out / "peft.lora.r.csv")
    assert table["peft.lora.r"].tolist() == [2, 4, 8, 16] and table["chosen"].tolist() == [False, True, False, False]
    markdown = (out / "peft.lora.r.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Ablation of peft.lora.r (lora)") and "r=4 (test macro-F1 0.500)" in markdown
    assert (out / "peft.lora.r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| r4" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["peft.lora.r.csv", "peft.lora.r.md", "peft.lora.r.png"]


FAKE_EVAL = '''\
"""Stands in for evaluate@lora: metrics that are a known function of the rank (val peaks at r=4)."""
import json, os, yaml
r = yaml.safe_load(open("params.yaml"))["peft"]["lora"]["r"]
os.makedirs("reports/eval/lora", exist_ok=True)
for split, f1 in (("val", 0.7 - abs(r - 4) / 100), ("test", 0.5 + r / 1000)):
    json.dump({"n": 89, "accuracy": f1 + 0.05, "macro_f1": f1}, open(f"reports/eval/lora/metrics_{split}.json", "w"))
'''
FAKE_DVC_YAML = '''\
stages:
  evaluate:
    cmd: python fake_eval.py
    deps: [fake_eval.py]
    params: [peft.lora.r]
    metrics:
      - reports/eval/lora/metrics_val.json:
          cache: false
      - reports/eval/lora/metrics_test.json:
          cache: false
'''


def test_ablation_of_real_dvc_experiments(tmp_path, pipeline_env):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "fake_eval.py").write_text(FAKE_EVAL, encoding="utf-8")
    (root / "dvc.yaml").write_text(FAKE_DVC_YAML, encoding="utf-8")
    (root / "params.yaml").write_text("peft:\n  lora:\n    r: 8\n    alpha: 16\n", encoding="utf-8")

    def run(*command: str) -> str:
        result = subprocess.run(command, cwd=root, env=pipeline_env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        return result.stdout

    git = ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
    run(*git, "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "repro", "-q")
    run(*git, "add", "-A")
    run(*git, "commit", "-q", "-m", "baseline r=8")
    for rank in (2, 4, 16):
        run("dvc", "exp", "run", "-q", "--name", f"r{rank}", "-S", f"peft.lora.r={rank}")

    stdout = run(sys.executable, "-m", "peftqa", "ablation", "--param", "peft.lora.r")
    table = pd.read_csv(root / "reports/ablation/peft.lora.r.csv")
    assert table["experiment"].tolist() == ["r2", "r4", "main", "r16"]  # the workspace (a copy of r16) is not listed
    assert table["peft.lora.r"].tolist() == [2, 4, 8, 16]
    expected_val = [0.7 - abs(r - 4) / 100 for r in (2, 4, 8, 16)]
    expected_test = [0.5 + r / 1000 for r in (2, 4, 8, 16)]
    assert table["val_macro_f1"].tolist() == pytest.approx(expected_val)
    assert table["test_macro_f1"].tolist() == pytest.approx(expected_test)
    assert table["test_accuracy"].tolist() == pytest.approx([f1 + 0.05 for f1 in expected_test])
    assert table["test_n"].tolist() == [89] * 4
    assert table["chosen"].tolist() == [False, True, False, False]
    assert table["other_changes"].isna().all()  # nothing but the rank changed
    assert "chosen by val macro-F1: r=4 (test macro-F1 0.504)." in stdout
    assert (root / "reports/ablation/peft.lora.r.png").exists()
    markdown = (root / "reports/ablation/peft.lora.r.md").read_text(encoding="utf-8")
    assert sum(line.startswith("|") for line in markdown.splitlines()) == 2 + 4  # header, rule, four rows


# -----------------------------------------------------------------------------
# grids: several params of one method swept together, beside other methods' sweeps in the same `dvc exp show`

GRID_SWEEP = {  # a 2x2 grid of lora's lr and r (the baseline is lr 1e-3, r 8), plus a prompt-tuning experiment
    "lr1e-4-r8": ({"peft.lora.lr": 1e-4}, eval_metrics(0.40, 0.60)),
    "lr1e-4-r4": ({"peft.lora.lr": 1e-4, "peft.lora.r": 4}, eval_metrics(0.58, 0.41)),
    "lr1e-3-r4": ({"peft.lora.r": 4}, eval_metrics(0.45, 0.52)),
    "pt-text": ({"peft.prompt_tuning.init": "text"}, eval_metrics(0.90, 0.90)),  # lora's metrics: not its sweep
}


def test_a_grid_table_has_every_point_once_and_chooses_on_val():
    table, skipped = ablation(exp_show(GRID_SWEEP), param=["peft.lora.lr", "peft.lora.r"])
    assert table[["peft.lora.lr", "peft.lora.r"]].values.tolist() == [[1e-4, 4], [1e-4, 8], [1e-3, 4], [1e-3, 8]]
    assert table.loc[table["chosen"], "experiment"].tolist() == ["lr1e-4-r4"]  # val 0.58, although its test is lowest
    assert skipped == ["pt-text: changes only peft.prompt_tuning.init, which lora does not read"]
    assert not table["other_changes"].astype(bool).any()
    markdown = format_markdown(table, ["peft.lora.lr", "peft.lora.r"], "macro_f1", "val", skipped)
    assert "chosen by val macro-F1: lr=0.0001, r=4 (test macro-F1 0.410)" in markdown
    axis = plot_ablation(table, ["peft.lora.lr", "peft.lora.r"], "macro_f1", "lora").axes[0]
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert "val macro-F1 (r=4)" in labels and "test macro-F1 (r=8)" in labels


def test_the_grid_command_writes_one_table_per_grid_entry(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("lora:\n  peft.lora.lr: [1.0e-4, 1.0e-3]\n  peft.lora.r: [4, 8]\n"
                    "prompt_tuning:\n  peft.prompt_tuning.init: [random, text]\n", encoding="utf-8")
    dump = tmp_path / "exp_show.json"
    pt_text = {**eval_metrics(0.40, 0.60), **eval_metrics(0.7, 0.6, method="prompt_tuning")}
    sweep = dict(GRID_SWEEP, **{"pt-text": ({"peft.prompt_tuning.init": "text"}, pt_text)})
    baseline = {**eval_metrics(0.50, 0.48), **eval_metrics(0.6, 0.5, method="prompt_tuning")}
    entries = exp_show(sweep, baseline=({}, baseline))
    dump.write_text(json.dumps(entries), encoding="utf-8")
    main(["--grid", str(grid), "--json-file", str(dump), "--out", str(tmp_path / "out")])
    lora = pd.read_csv(tmp_path / "out" / "lora.csv")
    prompt = pd.read_csv(tmp_path / "out" / "prompt_tuning.csv")
    assert len(lora) == 4 and lora.loc[lora["chosen"], "experiment"].tolist() == ["lr1e-4-r4"]
    assert prompt["peft.prompt_tuning.init"].tolist() == ["random", "text"]  # lora's experiments left out
    assert prompt.loc[prompt["chosen"], "peft.prompt_tuning.init"].tolist() == ["text"]
    assert (tmp_path / "out" / "lora.png").stat().st_size > 0


def test_a_param_list_of_two_methods_is_refused(tmp_path):
    with pytest.raises(PeftqaError, match="different methods"):
        main(["--param", "peft.lora.r", "--param", "peft.prompt_tuning.init", "--json-file", str(tmp_path / "x")])


def test_a_running_or_queued_experiment_is_no_row_yet():
    entries = exp_show(RANK_SWEEP)
    experiments = entries[-1]["experiments"]
    experiments[0]["executor"] = {"state": "running"}
    experiments[1]["executor"] = {"state": "success"}
    table, skipped = ablation(entries)
    assert "r2" not in table["experiment"].tolist() and "r4" in table["experiment"].tolist()
    assert "r2: still running" in skipped
