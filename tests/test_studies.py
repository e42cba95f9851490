"""The committed studies share one shape (peftqa/studies/shape.py): every study in docs.STUDIES names a committed folder
and renders the blocks its markers ask for; copy_run writes a finished run's files into a study's folder whole or not
at all, keeping the folder's own README; copy_whole_run copies what git sees of a run's outputs (dvc.lock's outs),
never what git ignores.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from peftqa.errors import PeftqaError
from peftqa.studies import docs
from peftqa.studies.shape import Study, copy_run, copy_whole_run

ROOT = Path(__file__).resolve().parents[1]


def test_every_study_has_its_folder_and_its_name():
    for name, study in docs.STUDIES.items():
        assert study.name == name and (ROOT / study.folder).is_dir(), name
        assert study.renderers(), name


def test_a_study_keeps_its_provenance_out_of_its_blocks():
    with pytest.raises(ValueError, match="provenance"):
        Study("x", Path("x"), Path, {"provenance": str}, provenance=None, copy_in=None)
    study = Study("x", Path("x"), Path, {"table": str}, provenance=repr, copy_in=None)
    assert study.renderers() == {"provenance": repr, "table": str}


def test_copy_run_writes_the_whole_copy_and_keeps_the_readme(tmp_path):
    run, folder = tmp_path / "workspace", tmp_path / "study"
    (run / "models/lora").mkdir(parents=True)
    (run / "models/lora/train_summary.json").write_text("{}")
    (run / "params.yaml").write_text("seed: 1\n")
    folder.mkdir()
    (folder / "README.md").write_text("# the study\n")
    (folder / "stale.csv").write_text("from an older copy\n")
    copy_run({"params.yaml": run / "params.yaml", "models": run / "models"}, folder, keep=("README.md",),
             then=lambda staging: (staging / "settings.json").write_text("{}"))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "README.md", "models/lora/train_summary.json", "params.yaml", "settings.json"]
    # a missing file names itself, and leaves the folder as it was
    with pytest.raises(PeftqaError, match="history.csv: the run wrote no such file"):
        copy_run({"history.csv": run / "history.csv"}, folder)
    assert (folder / "params.yaml").exists()


def test_copy_whole_run_copies_what_git_sees_of_the_outputs(tmp_path):
    run, folder = tmp_path / "workspace", tmp_path / "study"
    for name in ("models/lora/history.csv", "models/lora/adapter/weights.bin", "reports/stats/stats.csv",
                 "reports/notes.txt", "params.yaml"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    (run / ".gitignore").write_text("adapter/\n")  # DVC-cached: git ignores it
    lock = {"stages": {"train@lora": {"outs": [{"path": "models/lora/history.csv"}, {"path": "models/lora/adapter"}]},
                       "stats": {"outs": [{"path": "reports/stats"}]}}}
    (run / "dvc.lock").write_text(yaml.safe_dump(lock))
    subprocess.run(["git", "init", "-q"], cwd=run, check=True)
    copy_whole_run(run, folder)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "dvc.lock", "models/lora/history.csv", "params.yaml", "reports/stats/stats.csv"]
