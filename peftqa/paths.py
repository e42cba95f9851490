"""Where the pipeline keeps its files, relative to the project root (every stage runs there, as dvc.yaml's commands do).

dvc.yaml names the same paths as each stage's deps and outs; this module is the code's one copy of them.
"""
from __future__ import annotations

from pathlib import Path

RAW_DIR = Path("data/raw")  # stage fetch: ori_pqal.json (and test_ground_truth.json under the official protocol)
RAW_JSON = RAW_DIR / "ori_pqal.json"
GROUND_TRUTH_JSON = RAW_DIR / "test_ground_truth.json"
DATA_DIR = Path("data/processed")  # stage prepare: {train,val,test,folds}.csv, split_stats.csv
FEATURES_DIR = Path("data/features")  # stage embed: the frozen encoder's features per split
MODELS_DIR = Path("models")  # stage train@<method>: models/<method>/{adapter/,history.csv,train_summary.json,...}
REPORTS_DIR = Path("reports")
EVAL_DIR = REPORTS_DIR / "eval"  # stage evaluate@<method>: reports/eval/<method>/{preds,metrics,cm}_<split>.*
CURVES_DIR = REPORTS_DIR / "curves"  # stage curves: one file per metric, one column per method
FEW_SHOT_DIR = REPORTS_DIR / "few_shot"  # stage few_shot: preds_<split>.csv (the chosen draw), choices.json, ...
REFERENCES_DIR = REPORTS_DIR / "references"  # stage references: reports/references/<reference>/preds_<split>.csv
REFERENCES_METRICS_JSON = REPORTS_DIR / "references_metrics.json"
REFERENCES_CHOICES_JSON = REFERENCES_DIR / "choices.json"  # per reference: what was chosen on val, or why it is
                                                        # not defined for this run ({"not_defined": why})
STATS_DIR = REPORTS_DIR / "stats"  # stage stats: paired tests of every method against the baseline
STATS_CSV = STATS_DIR / "stats_eval_test.csv"  # one row per (method, reference, test, metric); the report reads it
PROTOCOLS_DIR = REPORTS_DIR / "protocols"  # stage protocols: repeated seeds and k-fold CV
PROTOCOLS_METRICS_JSON = REPORTS_DIR / "protocols_metrics.json"
FIGURES_DIR = REPORTS_DIR / "figures"  # stage report: figures, report.md and the submission
SUBMISSION_DIR = REPORTS_DIR / "submission"
