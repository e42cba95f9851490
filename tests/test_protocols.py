"""The protocols stage: repeated seeds and stratified k-fold cross-validation.

Pure helpers against hand-computed values, then one end-to-end run on the tiny encoder (2 seeds and 2 folds, one
epoch each) that checks the outputs, the MLflow runs, reuse of finished runs and the cleanup of stale ones, and the
methods frontier's copy, table and figure made from its outputs.
"""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import yaml
from test_train import mlflow_client

from peftqa.catalog import SEED_COLUMNS
from peftqa.cli import frontier_run as frontier_cli
from peftqa.data import dataset
from peftqa.errors import PeftqaError
from peftqa.evaluation import protocols
from peftqa.params import load_params
from peftqa.studies.frontier import FRONTIER
from stages import protocols as protocols_stage

from tiny_models import tiny_frame

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
LABELS = ("yes", "no")


def test_plan_lists_seeds_then_folds_and_nothing_by_default(write_params, tmp_path):
    write_params(tmp_path)
    assert protocols.plan(load_params(tmp_path / "params.yaml")) == []
    write_params(tmp_path, {"seeds": [3, 1], "prepare.folds": 2, "methods": ["base", "lora"]})
    units = protocols.plan(load_params(tmp_path / "params.yaml"))
    assert [(u.protocol, u.method, u.index, u.name) for u in units] == [
        ("seeds", "base", 3, "seed_3"), ("seeds", "lora", 3, "seed_3"), ("seeds", "base", 1, "seed_1"),
        ("seeds", "lora", 1, "seed_1"), ("cv", "base", 0, "fold_0"), ("cv", "lora", 0, "fold_0"),
        ("cv", "base", 1, "fold_1"), ("cv", "lora", 1, "fold_1")]


def test_unit_params_override_only_the_train_seed_of_a_seeds_unit(write_params, tmp_path):
    write_params(tmp_path, {"seeds": [7], "train.seed": 42})
    params = load_params(tmp_path / "params.yaml")
    assert protocols.unit_params(params, protocols.Unit("seeds", "lora", 7)).train.seed == 7
    assert protocols.unit_params(params, protocols.Unit("cv", "lora", 0)).train.seed == 42
    changed = protocols.unit_params(params, protocols.Unit("seeds", "lora", 7))
    assert dataclasses.replace(changed.train, seed=42) == params.train and changed.peft == params.peft


def test_seeds_summary_mean_sample_std_and_paired_delta():
    runs = pd.DataFrame({"method": ["base", "lora", "base", "lora", "base", "lora"], "seed": [1, 1, 2, 2, 3, 3],
                         "accuracy": [0.5, 0.6, 0.5, 0.7, 0.5, 0.8], "macro_f1": [0.4, 0.5, 0.3, 0.6, 0.5, 0.6]})
    table = protocols.seeds_summary(runs, "base").set_index("method")
    assert table.loc["lora", "n_seeds"] == 3
    assert table.loc["lora", "accuracy_mean"] == pytest.approx(0.7)
    assert table.loc["lora", "accuracy_std"] == pytest.approx(0.1)  # sample std of 0.6, 0.7, 0.8
    assert table.loc["base", "macro_f1_std"] == pytest.approx(0.1)  # of 0.4, 0.3, 0.5
    # paired per seed: deltas 0.1, 0.3, 0.1
    assert table.loc["lora", "delta_macro_f1_mean"] == pytest.approx(0.5 / 3)
    assert table.loc["lora", "delta_macro_f1_std"] == pytest.approx(pd.Series([0.1, 0.3, 0.1]).std())
    assert table.loc["base", "delta_macro_f1_mean"] == 0.0
    assert protocols.seeds_summary(runs.iloc[:0], "base").empty


def test_cv_fold_metrics_per_fold_and_pooled():
    preds = pd.DataFrame({"method": ["m"] * 4, "fold": [0, 0, 1, 1], "pmid": ["1", "2", "3", "4"],
                          "gold": ["yes", "no", "yes", "no"], "pred": ["yes", "no", "no", "no"], "p_yes": [.9] * 4})
    table = protocols.cv_fold_metrics(preds, LABELS)
    assert table[["fold", "n", "accuracy"]].values.tolist() == [["0", 2, 1.0], ["1", 2, 0.5], ["pooled", 4, 0.75]]
    # pooled: yes P=1 R=.5 F1=2/3; no P=2/3 R=1 F1=.8; macro (2/3+.8)/2
    assert table.iloc[2]["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    no_seeds = protocols.seeds_summary(pd.DataFrame(columns=SEED_COLUMNS), "m")
    metrics = protocols.metrics_json(no_seeds, table)
    assert metrics == {"cv": {"m": {"n": 4, "pooled_accuracy": 0.75, "pooled_macro_f1": pytest.approx(0.7333333),
                                    "fold_macro_f1_std": pytest.approx(table.iloc[:2]["macro_f1"].std())}}}


def test_fold_frames_hold_out_one_fold_and_stratify_val():
    pool = tiny_frame(40, 100)
    items = [dataset.Item(pmid, "q", ("c",), label) for pmid, label in zip(pool["pmid"], pool["label"])]
    folds = dataset.assign_folds(items, 4, 42, "raw.json")
    assert sorted(folds["fold"].value_counts()) == [10, 10, 10, 10]
    for label, group in folds.groupby("label"):  # stratified: each fold has its share of each label
        assert group["fold"].value_counts().max() - group["fold"].value_counts().min() <= 1, label
    train, val, test = protocols.fold_frames(pool, folds, 2, 0.1, 42)
    assert set(test["pmid"]) == set(folds.loc[folds["fold"] == 2, "pmid"])
    assert len(train) + len(val) == 30 and not set(train["pmid"]) & set(val["pmid"])
    assert not (set(train["pmid"]) | set(val["pmid"])) & set(test["pmid"])
    with pytest.raises(PeftqaError, match="cover different items.*dvc repro prepare"):
        protocols.fold_frames(pool.iloc[1:], folds, 0, 0.1, 42)


def test_too_many_folds_for_a_label_is_refused():
    items = [dataset.Item(str(i), "q", ("c",), "yes" if i < 10 else "no") for i in range(12)]
    with pytest.raises(PeftqaError, match=r"raw.json: prepare.folds=3 needs at least 3 items of each label.*'no': 2"):
        dataset.assign_folds(items, 3, 42, "raw.json")
    assert dataset.assign_folds(items, 0, 42, "raw.json").empty


def test_protocols_stage_runs_seeds_and_folds_end_to_end(stage_dir):  # noqa: F811
    root = stage_dir(**{"methods": ["base", "lora"], "seeds": [1, 2], "prepare.folds": 2, "train.epochs": 1,
                        "stats.n_bootstrap": 200})
    tiny_frame(8, 9000).to_csv(root / "data/processed/test.csv", index=False)
    pool = pd.concat([pd.read_csv(root / f"data/processed/{s}.csv", dtype={"pmid": str})
                      for s in ("train", "val", "test")])
    items = [dataset.Item(pmid, "q", ("c",), label) for pmid, label in zip(pool["pmid"], pool["label"])]
    dataset.assign_folds(items, 2, 42, "x").to_csv(root / "data/processed/folds.csv", index=False)

    protocols_stage.main([])
    out = root / "reports/protocols"
    seeds = pd.read_csv(out / "seeds_test.csv")
    assert sorted(zip(seeds["method"], seeds["seed"])) == [("base", 1), ("base", 2), ("lora", 1), ("lora", 2)]
    assert (seeds["n"] == 8).all()
    summary = pd.read_csv(out / "seeds_summary.csv").set_index("method")
    assert summary.loc["lora", "macro_f1_mean"] == pytest.approx(seeds.loc[seeds["method"] == "lora",
                                                                           "macro_f1"].mean())
    cv = pd.read_csv(out / "cv_preds.csv", dtype={"pmid": str})
    for method in ("base", "lora", "majority", "tfidf_lr"):  # every item tested exactly once per method and reference
        assert sorted(cv.loc[cv["method"] == method, "pmid"]) == sorted(pool["pmid"])
    stats = pd.read_csv(out / "cv_stats.csv")  # lora vs base, then both vs each reference row, all pooled
    assert set(zip(stats["method"], stats["reference"])) == {("lora", "base"), ("base", "majority"),
                                                               ("base", "tfidf_lr"), ("lora", "majority"),
                                                               ("lora", "tfidf_lr")}
    assert (stats["n"] == len(pool)).all()
    metrics = json.loads((root / "reports/protocols_metrics.json").read_text())
    assert set(metrics["seeds"]) == {"base", "lora"}
    assert set(metrics["cv"]) == {"base", "lora", "majority", "tfidf_lr"}
    assert metrics["cv"]["lora"]["n"] == len(pool)

    client = mlflow_client(root)  # one MLflow run per training, tagged with its unit, holding its test metrics
    experiment_id = client.get_experiment_by_name("tests").experiment_id
    runs = client.search_runs([experiment_id])
    assert len(runs) == 8 + 2  # a parent run per protocol
    by_name = {run.info.run_name: run for run in runs}
    assert by_name["lora seed_2"].data.tags["protocol"] == "seeds"
    assert by_name["lora fold_1"].data.tags["protocol_unit"] == "fold_1"
    assert by_name["lora seed_2"].data.params["train.seed"] == "2"
    assert "eval_test_macro_f1" in by_name["lora fold_1"].data.metrics
    assert not list(out.glob("runs/*/*/*/adapter"))  # adapters live in MLflow, not in reports/
    # the seed and fold runs are the children of one parent run per protocol, which holds their summary metrics
    parents = json.loads((out / "parent_runs.json").read_text())
    assert by_name["seeds 1,2"].info.run_id == parents["seeds"] and by_name["cv 2-fold"].info.run_id == parents["cv"]
    for run in runs:
        if run.info.run_id not in parents.values():
            assert run.data.tags["mlflow.parentRunId"] == parents[run.data.tags["protocol"]], run.info.run_name
    assert by_name["seeds 1,2"].info.status == "FINISHED"
    assert by_name["seeds 1,2"].data.metrics["lora.macro_f1_mean"] == pytest.approx(
        metrics["seeds"]["lora"]["macro_f1_mean"])
    fold_inputs = {d.dataset.name: d.dataset for d in by_name["lora fold_1"].inputs.dataset_inputs}
    assert set(fold_inputs) == {"pubmedqa-pqal/train", "pubmedqa-pqal/val", "pubmedqa-pqal/test"}
    assert "fold 1" in fold_inputs["pubmedqa-pqal/test"].source

    # a second run reuses every finished training (and opens no parent run); dropping a seed deletes its runs
    before = (out / "seeds_test.csv").read_bytes()
    protocols_stage.main([])
    assert len(client.search_runs([experiment_id])) == 8 + 2
    assert json.loads((out / "parent_runs.json").read_text()) == parents
    assert (out / "seeds_test.csv").read_bytes() == before
    data = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**data, "seeds": [1]}, sort_keys=False))
    protocols_stage.main([])
    assert sorted(p.name for p in (out / "runs/seeds/lora").iterdir()) == ["seed_1"]
    assert len(pd.read_csv(out / "seeds_test.csv")) == 2

    # the methods frontier's copy of the 5-fold outputs, and its table and figure from that copy alone
    frontier_dir = root / "frontier"
    FRONTIER.copy_in(root, frontier_dir)
    assert sorted(p.relative_to(frontier_dir / "cv/units").as_posix()
                  for p in (frontier_dir / "cv/units").glob("*/*")) == ["base/fold_0", "base/fold_1",
                                                                        "lora/fold_0", "lora/fold_1"]
    frontier_cli.write_table(frontier_dir)
    table = pd.read_csv(frontier_dir / "frontier.csv").set_index("method")
    folds = pd.read_csv(out / "cv_folds.csv")
    pooled = folds[folds["fold"] == "pooled"].set_index("method")
    for method in ("base", "lora"):
        assert table.loc[method, "macro_f1"] == pytest.approx(pooled.loc[method, "macro_f1"])
        assert table.loc[method, "macro_f1_ci_low"] <= table.loc[method, "macro_f1"] <= table.loc[
            method, "macro_f1_ci_high"]
        assert table.loc[method, "folds"] == 2 and table.loc[method, "n"] == len(pool)
    lora_vs_base = stats[(stats["method"] == "lora") & (stats["reference"] == "base")
                         & (stats["metric"] == "macro_f1")].iloc[0]
    assert table.loc["lora", "delta_macro_f1"] == pytest.approx(lora_vs_base["effect"])
    summaries = [json.loads((out / f"runs/cv/lora/fold_{k}/unit.json").read_text())["summary"] for k in (0, 1)]
    assert table.loc["lora", "trainable_params"] == summaries[0]["trainable_params"]
    assert table.loc["lora", "kept_start"] == sum(s["best_epoch"] == 0 for s in summaries)
    assert (frontier_dir / "frontier.png").stat().st_size > 10_000
    assert "| `base` (the probe) |" in (frontier_dir / "frontier.md").read_text()
    # an interrupted run: a training without its unit.json is not finished, so a copy that would lose the finished one
    # it holds is refused; restore replaces the unfinished folder, and the stage then reuses every training
    (out / "runs/cv/lora/fold_1/unit.json").unlink()
    with pytest.raises(PeftqaError, match=r"holds finished trainings that .* lacks \(e.g. lora/fold_1\).*restore"):
        FRONTIER.copy_in(root, frontier_dir)
    frontier_cli.restore_into(frontier_dir, root)
    assert (out / "runs/cv/lora/fold_1/unit.json").exists()
    runs_before = len(client.search_runs([experiment_id]))
    protocols_stage.main([])
    assert len(client.search_runs([experiment_id])) == runs_before  # nothing retrained


def test_the_frontier_adjusts_its_p_values_over_its_own_methods_only(tmp_path, write_params):
    """Holm over the methods against the baseline, not over every pair cv_stats.csv holds (there: lora vs dora too)."""
    from peftqa.evaluation.stats import holm_adjust
    from peftqa.studies.frontier import Frontier, frontier_table

    def rows(method, reference, p):
        return [{"method": method, "reference": reference, "test": "mcnemar_exact", "metric": "accuracy", "n": 4,
                 "effect": 0.0, "ci_low": None, "ci_high": None, "p_value": p / 2, "p_holm": 1.0, "b": 1, "c": 2},
                {"method": method, "reference": reference, "test": "paired_bootstrap", "metric": "macro_f1", "n": 4,
                 "effect": 0.1, "ci_low": -0.1, "ci_high": 0.3, "p_value": p, "p_holm": 1.0, "b": 1, "c": 2}]

    stats = pd.DataFrame(rows("lora", "base", 0.01) + rows("dora", "base", 0.04) + rows("dora", "lora", 0.5))
    preds = pd.DataFrame([{"method": m, "fold": 0, "pmid": str(i), "gold": g, "pred": g, "p_yes": 0.5}
                          for m in ("base", "lora", "dora") for i, g in enumerate(["yes", "no", "yes", "no"])])
    methods = ["base", "lora", "dora"]
    pooled = pd.DataFrame({"n": 4, "accuracy": 1.0, "macro_f1": 1.0}, index=pd.Index(methods))
    units = pd.DataFrame([{"method": m, "fold": k, "trainable_params": 10, "adapter_bytes": 40, "train_seconds": 1.0,
                           "best_epoch": k, "best_val_macro_f1": 0.5} for m in methods for k in (0, 1)])
    write_params(tmp_path, {"stats.n_bootstrap": 100})
    params = load_params(tmp_path / "params.yaml")
    table = frontier_table(Frontier(root=tmp_path, params=params, preds=preds, pooled=pooled, stats=stats,
                                    units=units)).set_index("method")
    assert list(table.index) == ["base", "lora", "dora"]
    assert list(table.loc[["lora", "dora"], "p_bootstrap_holm"]) == pytest.approx(holm_adjust([0.01, 0.04]))
    assert list(table.loc[["lora", "dora"], "p_mcnemar_holm"]) == pytest.approx(holm_adjust([0.005, 0.02]))
    # the control: adjusted over every pair of cv_stats.csv (lora vs dora too), the same p-values come out larger
    assert holm_adjust([0.01, 0.04, 0.5])[:2] != pytest.approx(list(table.loc[["lora", "dora"], "p_bootstrap_holm"]))
    assert list(table.loc[["lora", "dora"], "kept_start"]) == [1, 1]  # fold 0 of each kept its start
