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

import logging
import shutil

import pandas as pd

from peftqa.catalog import (
    CV_FOLDS,
    CV_PRED_COLUMNS,
    CV_PREDS,
    CV_STATS,
    FOLDS,
    PARENT_RUNS,
    PROTOCOLS_METRICS,
    SEED_COLUMNS,
    SEEDS_SUMMARY,
    SEEDS_TEST,
    SPLIT,
    SPLITS,
    STATS_COLUMNS,
    read_split,
)
from peftqa.errors import PeftqaError
from peftqa.evaluation.protocols import (
    ParentRuns,
    cv_fold_metrics,
    metrics_json,
    plan,
    run_units,
    seeds_summary,
    unit_dir,
)
from peftqa.evaluation.stats import compare_methods
from peftqa.files import sha256_file
from peftqa.params import load_params

log = logging.getLogger("peftqa.protocols")


def main(args: list[str]) -> None:
    if args:
        raise PeftqaError(f"stages.protocols takes no arguments (it reads params.yaml), got {args}")
    params = load_params()
    units = plan(params)
    files = [*(SPLIT.path(split=split) for split in SPLITS), FOLDS.path()]  # the units' stamps name them
    hashes = {path.name: sha256_file(path) for path in files if path.exists()}
    if units and not FOLDS.exists():
        raise PeftqaError(f"{FOLDS.path()} not found: run `dvc repro prepare` first")
    splits = {split: read_split(split) for split in SPLITS} if units else {}
    log.info("protocols: %d trainings (seeds %s, folds %d, methods %s)", len(units), list(params.seeds),
             params.prepare.folds, list(params.methods))

    parents = ParentRuns(params, PARENT_RUNS.read() if PARENT_RUNS.exists() else {})
    try:
        seed_rows, cv_preds = run_units(params, units, splits, hashes, parents)
    except BaseException as err:
        parents.fail(err)
        raise

    kept = {unit_dir(unit) for unit in units}
    # runs of seeds, folds or methods no longer in params
    for stale in sorted(PARENT_RUNS.folder_path().glob("runs/*/*/*")):
        if stale not in kept:
            shutil.rmtree(stale)
    seeds = pd.DataFrame(seed_rows, columns=SEED_COLUMNS)
    pooled = pd.concat(cv_preds, ignore_index=True) if cv_preds else pd.DataFrame(columns=CV_PRED_COLUMNS)
    folds = cv_fold_metrics(pooled, params.prepare.labels)
    of = {m: pooled.loc[pooled["method"] == m] for m in (*params.methods, *params.references.per_fold)}
    stats = (compare_methods(of, params.methods, params.stats.baseline, params.prepare.labels, params.stats,
                             references={name: of[name] for name in params.references.per_fold})
             if cv_preds else pd.DataFrame(columns=STATS_COLUMNS))
    summary = seeds_summary(seeds, params.stats.baseline)
    SEEDS_TEST.write(seeds)
    SEEDS_SUMMARY.write(summary)
    CV_PREDS.write(pooled)
    CV_FOLDS.write(folds)
    CV_STATS.write(stats)
    protocol_metrics = metrics_json(summary, folds)
    PROTOCOLS_METRICS.write(protocol_metrics)
    PARENT_RUNS.write(parents.ids({u.protocol for u in units}))
    parents.close("FINISHED", protocol_metrics)
    if units:
        log.info("protocols: done\n%s\n%s", summary.to_string(index=False),
                 folds.loc[folds["fold"] == "pooled"].to_string(index=False))


if __name__ == "__main__":
    from peftqa.stops import run_cli

    run_cli(main)
