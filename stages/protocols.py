"""Stage protocols: repeated seeds and stratified k-fold cross-validation, beyond the main single-split run.

With 89 test items, one run's difference between two methods is mostly noise. Two protocols measure how much:
- seeds: every method retrained once per seed in params `seeds`, on the main split; test metrics as mean +- std.
- cv (prepare.folds = k >= 2): every cleaned item is tested once, by a model trained on the other k-1 folds (a
  stratified val_fraction of them held out for early stopping). The per-fold predictions are pooled, so the paired
  tests against the baseline run on all items instead of 89. The reference rows (stage references: majority,
  tfidf_lr) are refitted per fold on the same train/val, pooled alike, and compared with every method;
  base_calibrated is not (it calibrates evaluate@base's val predictions, which exist for the main split only).
Each training is a full train@<method> run (train.train_method): MLflow run, checkpoints, resume after a kill.

Inputs:  data/processed/{train,val,test,folds}.csv; params: seeds, prepare, methods, model, train, peft, mlflow,
         evaluate.batch_size, stats.
Outputs: reports/protocols/seeds_test.csv    method, seed, n, accuracy, macro_f1, best_epoch, best_val_macro_f1,
                                             train_seconds, mlflow_run_id (one row per run)
         reports/protocols/seeds_summary.csv method, n_seeds, <metric>_mean, <metric>_std, delta_macro_f1_mean/_std
         reports/protocols/cv_preds.csv      method, fold, pmid, gold, pred, p_yes (every item once per method and
                                             per reference row)
         reports/protocols/cv_folds.csv      method, fold, n, accuracy, macro_f1 (fold "pooled": all items)
         reports/protocols/cv_stats.csv      paired tests on the pooled predictions (columns of stats_eval_test.csv)
         reports/protocols/runs/<protocol>/<method>/<seed_s|fold_k>/  per-run history, summary, predictions; a run
                                             finished with the same config and data is reused, not retrained
         reports/protocols_metrics.json      DVC metrics: mean and std per method, pooled CV metrics
Usage:   python -m stages.protocols [--debug]
"""
from __future__ import annotations

import json
import logging
import shutil

import pandas as pd

from peftqa.errors import PeftqaError
from peftqa.evaluation.protocols import (
    PRED_COLUMNS,
    SEED_COLUMNS,
    ParentRuns,
    cv_fold_metrics,
    metrics_json,
    plan,
    run_units,
    seeds_summary,
)
from peftqa.evaluation.stats import STATS_COLUMNS, compare_methods
from peftqa.files import read_split, sha256_file, write_csv_atomic, write_json_atomic
from peftqa.params import load_params
from peftqa.paths import DATA_DIR, PROTOCOLS_DIR, PROTOCOLS_METRICS_JSON

log = logging.getLogger("peftqa.evaluation.protocols")

PARENTS_JSON = PROTOCOLS_DIR / "parent_runs.json"  # {protocol: MLflow parent run id}, for the report's provenance


def main(args: list[str]) -> None:
    if args:
        raise PeftqaError(f"stages.protocols takes no arguments (it reads params.yaml), got {args}")
    params = load_params()
    units = plan(params)
    names = ["train.csv", "val.csv", "test.csv", "folds.csv"]
    hashes = {name: sha256_file(DATA_DIR / name) for name in names if (DATA_DIR / name).exists()}
    if units and "folds.csv" not in hashes:
        raise PeftqaError(f"{DATA_DIR / 'folds.csv'} not found: run `dvc repro prepare` first")
    splits = {name: read_split(DATA_DIR / f"{name}.csv") for name in ("train", "val", "test")} if units else {}
    log.info("protocols: %d trainings (seeds %s, folds %d, methods %s)", len(units), list(params.seeds),
             params.prepare.folds, list(params.methods))

    parents = ParentRuns(params, json.loads(PARENTS_JSON.read_text()) if PARENTS_JSON.exists() else {})
    try:
        seed_rows, cv_preds = run_units(params, units, splits, hashes, parents)
    except BaseException as err:
        parents.fail(err)
        raise

    kept = {PROTOCOLS_DIR / "runs" / u.protocol / u.method / u.name for u in units}
    for stale in sorted(PROTOCOLS_DIR.glob("runs/*/*/*")):  # runs of seeds, folds or methods no longer in params
        if stale not in kept:
            shutil.rmtree(stale)
    seeds = pd.DataFrame(seed_rows, columns=SEED_COLUMNS)
    pooled = pd.concat(cv_preds, ignore_index=True) if cv_preds else pd.DataFrame(columns=PRED_COLUMNS)
    folds = cv_fold_metrics(pooled, params.prepare.labels)
    of = {m: pooled.loc[pooled["method"] == m] for m in (*params.methods, *params.references.per_fold)}
    stats = (compare_methods(of, params.methods, params.stats.baseline, params.prepare.labels, params.stats,
                             references={name: of[name] for name in params.references.per_fold})
             if cv_preds else pd.DataFrame(columns=STATS_COLUMNS))
    summary = seeds_summary(seeds, params.stats.baseline)
    write_csv_atomic(PROTOCOLS_DIR / "seeds_test.csv", seeds)
    write_csv_atomic(PROTOCOLS_DIR / "seeds_summary.csv", summary)
    write_csv_atomic(PROTOCOLS_DIR / "cv_preds.csv", pooled)
    write_csv_atomic(PROTOCOLS_DIR / "cv_folds.csv", folds)
    write_csv_atomic(PROTOCOLS_DIR / "cv_stats.csv", stats)
    protocol_metrics = metrics_json(summary, folds)
    write_json_atomic(PROTOCOLS_METRICS_JSON, protocol_metrics)
    write_json_atomic(PARENTS_JSON, parents.ids({u.protocol for u in units}))
    parents.close("FINISHED", protocol_metrics)
    if units:
        log.info("protocols: done\n%s\n%s", summary.to_string(index=False),
                 folds.loc[folds["fold"] == "pooled"].to_string(index=False))


if __name__ == "__main__":
    from peftqa.stops import run_cli

    run_cli(main)
