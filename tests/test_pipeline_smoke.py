"""End to end: `dvc repro` of the whole pipeline on a small slice, in a throwaway git + DVC copy of the repo.

Real components throughout: the embedded MiniLM, real PEFT adapters, a real sqlite MLflow store, real DVC. After the
run: the top-level plots (`dvc plots show --json`), and a push to a DVC remote that a fresh clone pulls from.
Uses $PUBMEDQA_JSON when set (CI sets it); otherwise a small synthetic file in PubMedQA's shape.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
from PIL import Image

from stages.report import FIGURE_CAPTIONS

from tiny_models import write_synthetic_pubmedqa

SMOKE_PARAMS = {"prepare.limit": 80, "train.epochs": 1, "train.batch_size": 8, "model.max_length": 64,
                "stats.n_bootstrap": 200, "evaluate.latency_items": 4}
METHODS = ["base", "prompt_tuning", "prefix_tuning", "lora"]
REFERENCES = ["majority", "tfidf_lr"]


def dvc(root: Path, env: dict, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def test_dvc_repro_runs_the_whole_pipeline_on_a_small_slice(repo_copy, pipeline_env, write_params, tmp_path):
    env = dict(pipeline_env)
    overrides = dict(SMOKE_PARAMS)
    if not env.get("PUBMEDQA_JSON"):
        synthetic = write_synthetic_pubmedqa(tmp_path)
        env.update(synthetic["env"])
        overrides.update(synthetic["params"])
    env.pop("MLFLOW_TRACKING_URI", None)
    write_params(repo_copy, overrides)

    dvc(repo_copy, env, "repro")

    for method in METHODS:
        for split in ("val", "test"):
            preds = pd.read_csv(repo_copy / f"reports/eval/{method}/preds_{split}.csv", dtype={"pmid": str})
            gold = pd.read_csv(repo_copy / f"data/processed/{split}.csv", dtype={"pmid": str})
            assert list(preds["pmid"]) == list(gold["pmid"])
            assert preds["p_yes"].between(0, 1).all()
            metrics = json.loads((repo_copy / f"reports/eval/{method}/metrics_{split}.json").read_text())
            assert 0 <= metrics["macro_f1"] <= 1 and metrics["examples_per_s"] > 0
        assert (repo_copy / f"models/{method}/adapter/peftqa.json").exists()
    for reference in REFERENCES:
        preds = pd.read_csv(repo_copy / f"reports/references/{reference}/preds_test.csv", dtype={"pmid": str})
        gold = pd.read_csv(repo_copy / "data/processed/test.csv", dtype={"pmid": str})
        assert list(preds["pmid"]) == list(gold["pmid"]) and list(preds.columns) == list(
            pd.read_csv(repo_copy / "reports/eval/base/preds_test.csv").columns)
    assert "chosen" in json.loads((repo_copy / "reports/references/choices.json").read_text())["tfidf_lr"]
    stats = pd.read_csv(repo_copy / "reports/stats/stats_eval_test.csv")
    assert len(stats) == 3 * (6 + 4 * 2)  # 3 tuned-vs-base + 3 tuned pairs + 4 methods x 2 references, 3 rows each
    figures = sorted((repo_copy / "reports/figures").glob("*.png"))
    assert len(figures) == len(FIGURE_CAPTIONS) + len(METHODS)  # no seeds figure: the protocols are off
    for figure in figures:
        assert figure.stat().st_size > 0
        Image.open(figure).verify()
    report = (repo_copy / "reports/report.md").read_text()
    assert "## Significance" in report and all(f"| {m} |" in report for m in METHODS)
    assert all(f"| {r} (reference) |" in report for r in REFERENCES) and "Smallest detectable difference" in report

    # MLflow: one finished run per method in the project's store, with train and eval metrics
    client = MlflowClient(tracking_uri=f"sqlite:///{repo_copy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("peftqa").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(METHODS)
    assert all(r.info.status == "FINISHED" and "eval_test_macro_f1" in r.data.metrics for r in runs)

    # DVC: nothing to do a second time; metrics and plots are declared
    second = dvc(repo_copy, env, "repro")
    assert "Running stage" not in second and "up to date" in second
    assert "up to date" in dvc(repo_copy, env, "status")
    metrics_show = dvc(repo_copy, env, "metrics", "show")
    assert all(f"reports/eval/{m}/metrics_test.json" in metrics_show for m in METHODS)
    assert "reports/stats/stats_summary.json" in metrics_show and "reports/references_metrics.json" in metrics_show

    # DVC plots: one chart overlays every method's val macro-F1, one their train and val losses; both follow params
    plots = plot_series(repo_copy, env)
    assert plots["val_macro_f1_per_epoch"] == set(METHODS)
    assert plots["loss_train_vs_val"] == {f"{loss}.json::{m}" for loss in ("train_loss", "val_loss") for m in METHODS}
    assert not any("history.csv" in plot_id for plot_id in plots)  # no chart per method any more
    write_params(repo_copy, {**overrides, "methods": ["base", "lora"]})  # what `dvc exp run -S methods=...` writes
    assert plot_series(repo_copy, env)["val_macro_f1_per_epoch"] == {"base", "lora"}
    write_params(repo_copy, overrides)

    # DVC remote: push the run, then a fresh clone with its own empty cache pulls it and has nothing to train
    remote = tmp_path / "dvc-remote"
    dvc(repo_copy, env, "remote", "modify", "--local", "storage", "url", str(remote))  # as README says
    dvc(repo_copy, env, "push")
    git(repo_copy, env, "add", "-A")
    git(repo_copy, env, "commit", "-q", "-m", "the smoke run")
    clone = tmp_path / "clone"
    git(tmp_path, env, "clone", "-q", str(repo_copy), str(clone))
    # the committed default remote is the folder beside the repository
    assert str(tmp_path / "peftqa-dvc-remote") in dvc(clone, env, "remote", "list")
    dvc(clone, env, "remote", "modify", "--local", "storage", "url", str(remote))
    dvc(clone, env, "cache", "dir", "--local", str(tmp_path / "clone-cache"))
    dvc(clone, env, "pull")
    for method in METHODS:
        assert (clone / f"models/{method}/adapter/peftqa.json").read_bytes() == \
            (repo_copy / f"models/{method}/adapter/peftqa.json").read_bytes()
    pulled = dvc(clone, env, "repro")
    assert "Running stage" not in pulled and all(f"Stage 'train@{m}' didn't change" in pulled for m in METHODS)


def git(root: Path, env: dict, *args: str) -> None:
    subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=root, env=env, check=True, capture_output=True)


def plot_series(root: Path, env: dict) -> dict[str, set[str]]:
    """`dvc plots show --json`: for each chart, the series that have data (a series is a y field, or file::field)."""
    shown = json.loads(subprocess.run(["dvc", "plots", "show", "--json"], cwd=root, env=env, capture_output=True,
                                      text=True, timeout=300, check=True).stdout)
    assert not shown.get("errors"), shown["errors"]
    series = {}
    for plot_id, renders in shown["data"].items():
        values = [v for render in renders for v in render["content"]["data"]["values"]]
        series[plot_id] = {v.get("filename::field", v.get("field")) for v in values
                           if v.get("dvc_inferred_y_value") is not None}
    return series
