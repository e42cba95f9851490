"""`make clean` (peftqa clean): exactly the outputs dvc.yaml declares are removed, nothing else.

No pipeline run: in a throwaway git + DVC copy of the repo, every declared output is created by hand (files and
folders), beside files that are not outputs; then clean runs and the tree is compared file by file.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

METHODS = ["base", "ia3"]  # not the default list: the foreach stages must be expanded from params.yaml

# every out, metric and plot of dvc.yaml, written out by hand for METHODS (folders end with /)
DECLARED = [
    "data/raw/", "data/processed/train.csv", "data/processed/val.csv", "data/processed/test.csv",
    "data/processed/folds.csv", "data/processed/split_stats.csv", "data/processed/prepare_metrics.json",
    "data/features/",
    *[path.format(m=m) for m in METHODS for path in (
        "models/{m}/adapter/", "models/{m}/resolved_config.json", "models/{m}/history.csv",
        "models/{m}/train_summary.json",
        "reports/eval/{m}/preds_val.csv", "reports/eval/{m}/cm_val.csv", "reports/eval/{m}/cm_test.csv",
        "reports/eval/{m}/metrics_val.json", "reports/eval/{m}/metrics_test.json", "reports/eval/{m}/preds_test.csv")],
    "reports/curves/", "reports/few_shot/", "reports/references/", "reports/references_metrics.json",
    "reports/stats/stats_eval_test.csv", "reports/stats/stats_eval_test.md", "reports/stats/stats_summary.json",
    "reports/protocols/", "reports/protocols_metrics.json",
    "reports/figures/", "reports/report.md", "reports/submission/",
]
# not outputs: committed files no stage writes, files beside outputs, DVC's .gitignore files, the MLflow store, ...
KEPT = [
    "reports/ablation/grid.yaml", "reports/seeds3/README.md", "reports/mlflow_ui_runs.png",
    "reports/eval/base/notes.txt",
    "data/.gitignore", "data/processed/.gitignore", "models/base/.gitignore",
    "models/lora/history.csv",  # lora is not in METHODS: no stage declares it
    "models/ia3/checkpoint.pt", "mlflow.db", "mlruns/1/meta.yaml", ".venv/bin/python", ".dvc/cache/files/md5/ab/cd",
]


def files_under(root: Path) -> set[str]:
    """Every file under root but git's and DVC's own state (.git/, .dvc/tmp/)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not str(p.relative_to(root)).startswith((".git/", ".dvc/tmp/"))}


def test_clean_removes_exactly_the_declared_outputs(repo_copy, pipeline_env, write_params):
    write_params(repo_copy, {"methods": METHODS})
    for path in DECLARED:
        target = repo_copy / path
        if path.endswith("/"):
            (target / "sub").mkdir(parents=True, exist_ok=True)
            (target / "sub" / "part.bin").write_bytes(b"x")
            (target / "top.json").write_text("{}")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("output\n")
    for path in KEPT:
        (repo_copy / path).parent.mkdir(parents=True, exist_ok=True)
        (repo_copy / path).write_text("keep\n")
    before = files_under(repo_copy)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "peftqa", "clean", *args], cwd=repo_copy, env=pipeline_env,
                              capture_output=True, text=True, timeout=120)

    dry = run("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(dry.stdout.split()) == sorted(path.rstrip("/") for path in DECLARED)
    assert files_under(repo_copy) == before  # a dry run removes nothing

    result = run()
    assert result.returncode == 0, result.stderr
    for path in DECLARED:
        assert not (repo_copy / path).exists(), f"{path} is a declared output but survived clean"
    expected = {f for f in before if not any(f.startswith(p) if p.endswith("/") else f == p for p in DECLARED)}
    assert files_under(repo_copy) == expected  # everything else, file by file, is still there
    assert {"params.yaml", "dvc.yaml", *KEPT} <= expected
    assert (repo_copy / "models/ia3").is_dir() and (repo_copy / "reports/eval/base").is_dir()  # parents stay

    again = run()  # nothing left to remove: not an error
    assert again.returncode == 0 and again.stdout == ""
