"""tests/compare_outputs.py on two tiny output trees: a difference in an ignored field (a timing, an MLflow id) is
the same, a difference anywhere else is not, and so is a file on one side only."""
from __future__ import annotations

import json
from pathlib import Path

import compare_outputs
import pytest

RUN_ID, OTHER_RUN_ID = "0" * 32, "a" * 32
REPORT = f"""# PEFT on PubMedQA

| Method | Macro-F1 | Latency mean / p95 (s) |
| --- | --- | --- |
| lora | 0.637 | 0.0394 / 0.0412 |

The parent run is `{RUN_ID}`.

| Method | Best epoch | Train time (s) | Examples/s |
| --- | --- | --- | --- |
| lora | 1 | 68.2 | 10.4 |
"""
FILES = {  # a tiny run's outputs, one of each kind the script reads
    "data/processed/test.csv": "pmid,question,context,label\n1,Q?,C.,yes\n",
    "data/processed/.gitignore": "/test.csv\n",  # not an output
    "models/lora/history.csv": "epoch,train_loss,val_macro_f1,seconds\n0,,0.5,5.6\n1,0.4,0.6,61.8\n",
    "models/lora/train_summary.json": json.dumps({"method": "lora", "best_epoch": 1, "train_seconds": 68.2,
                                                  "examples_per_s": 10.4, "mlflow_run_id": RUN_ID,
                                                  "probe_grid": [{"c": 1.0, "val_macro_f1": 0.56}]}, indent=2),
    "models/lora/adapter/adapter_config.json": json.dumps({"r": 8, "target_modules": ["query", "value"]}),
    "reports/eval/lora/preds_test.csv": "pmid,gold,pred,p_yes,latency_s\n1,no,no,0.09,0.0394\n2,no,yes,0.94,0.0398\n",
    "reports/eval/lora/metrics_test.json": json.dumps({"macro_f1": 0.6368, "latency_p95_s": 0.041}, indent=2),
    "reports/protocols/parent_runs.json": json.dumps({"seeds": RUN_ID}),
    "reports/report.md": REPORT,
    "reports/figures/latency_bar_test.png": "PNG the latencies",
    "reports/figures/cm_lora_test.png": "PNG a confusion matrix",
    "notes.txt": "a file of the checkout that no stage writes",
}
LOCK = "stages:\n  run:\n    outs:\n    - path: data/processed\n    - path: models\n    - path: reports\n"  # folders


def write_run(root: Path, edit: tuple[str, str, str] | None = None) -> Path:
    """FILES under root, with edit = (file, old text, new text) applied to one of them."""
    for name, text in FILES.items():
        if edit and edit[0] == name:
            assert edit[1] in text
            text = text.replace(edit[1], edit[2])
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "dvc.lock").write_text(LOCK, encoding="utf-8")
    return root


def compare(tmp_path: Path, edit: tuple[str, str, str] | None, capsys) -> tuple[int, dict[str, str]]:
    """The script's exit status and {file: its verdict} for FILES against FILES with `edit`."""
    code = compare_outputs.main([str(write_run(tmp_path / "old")), str(write_run(tmp_path / "new", edit))])
    lines = capsys.readouterr().out.splitlines()
    return code, dict(line.split(": ", 1) for line in lines[:-1])


def test_two_identical_runs_are_the_same(tmp_path, capsys):
    code, verdicts = compare(tmp_path, None, capsys)
    assert code == 0
    assert verdicts == {name: "same" for name in FILES if not name.endswith((".gitignore", "notes.txt"))}


def test_only_the_outs_of_dvc_lock_are_compared(tmp_path, capsys):
    code, verdicts = compare(tmp_path, ("notes.txt", "no stage", "nothing"), capsys)  # outside every out
    assert "notes.txt" not in verdicts and code == 0


@pytest.mark.parametrize("edit, fields", [
    (("models/lora/history.csv", "61.8", "70.1"), "seconds"),
    (("reports/eval/lora/preds_test.csv", "0.0398", "0.5"), "latency_s"),
    (("models/lora/train_summary.json", "68.2", "1.5"), "train_seconds"),
    (("models/lora/train_summary.json", RUN_ID, OTHER_RUN_ID), "mlflow_run_id"),
    (("reports/eval/lora/metrics_test.json", "0.041", "0.9"), "latency_p95_s"),
    (("reports/protocols/parent_runs.json", RUN_ID, OTHER_RUN_ID), "MLflow run id"),
    (("reports/report.md", "| 68.2 | 10.4 |", "| 9.1 | 77.0 |"), "Examples/s, Train time (s)"),
    (("reports/report.md", "0.0394 / 0.0412", "0.1 / 0.2"), "Latency mean / p95 (s)"),
    (("reports/report.md", RUN_ID, OTHER_RUN_ID), "MLflow run id"),
    (("reports/figures/latency_bar_test.png", "the", "other"), "the whole figure (bars of the measured latencies)"),
    (("models/lora/adapter/adapter_config.json", '"query", "value"', '"value", "query"'), "target_modules"),
])
def test_a_difference_in_an_ignored_field_is_the_same(tmp_path, capsys, edit, fields):
    code, verdicts = compare(tmp_path, edit, capsys)
    assert verdicts[edit[0]] == f"same apart from ignored fields: {fields}"
    assert code == 0


@pytest.mark.parametrize("edit, first_difference", [
    (("data/processed/test.csv", "yes", "no"), "row 1 column label: 'yes' vs 'no'"),
    (("models/lora/history.csv", "0.6,", "0.7,"), "row 2 column val_macro_f1: '0.6' vs '0.7'"),
    (("reports/eval/lora/preds_test.csv", "no,yes", "no,no"), "row 2 column pred: 'yes' vs 'no'"),
    (("models/lora/train_summary.json", '"best_epoch": 1', '"best_epoch": 0'), ".best_epoch: '1' vs '0'"),
    (("models/lora/train_summary.json", "0.56", "0.57"), ".probe_grid[0].val_macro_f1: '0.56' vs '0.57'"),
    (("reports/eval/lora/metrics_test.json", "0.6368", "0.6369"), ".macro_f1: '0.6368' vs '0.6369'"),
    (("reports/protocols/parent_runs.json", '"seeds"', '"cv"'), ".seeds / .cv"),
    (("reports/report.md", "| 0.637 |", "| 0.638 |"), "line 5: "),
    (("reports/report.md", "The parent run", "The run"), "line 7: "),
    (("reports/report.md", "| 1 | 68.2", "| 2 | 68.2"), "line 11: "),
    (("reports/figures/cm_lora_test.png", "confusion", "Confusion"), "byte 6 (sizes 22 and 22)"),
    (("reports/eval/lora/metrics_test.json", '": ', '":  '), "formatting only"),
    (("models/lora/adapter/adapter_config.json", '"query"', '"key"'), ".target_modules[0]: '\"query\"' vs '\"key\"'"),
])
def test_a_difference_in_any_other_field_is_different(tmp_path, capsys, edit, first_difference):
    code, verdicts = compare(tmp_path, edit, capsys)
    assert verdicts[edit[0]].startswith(f"DIFFERENT: {first_difference}")
    assert code == 1


def test_a_file_on_one_side_only_is_different(tmp_path, capsys):
    old, new = write_run(tmp_path / "old"), write_run(tmp_path / "new")
    (new / "reports/eval/lora/cm_test.csv").write_text("gold,pred,count\n", encoding="utf-8")
    (old / "reports/report.md").unlink()
    assert compare_outputs.main([str(old), str(new)]) == 1
    out = capsys.readouterr().out
    assert "reports/eval/lora/cm_test.csv: only in NEW\n" in out
    assert "reports/report.md: only in NEW\n" in out
    assert out.splitlines()[-1] == "11 files: 9 same, 0 same apart from ignored fields, 0 different, 2 on one side only"


def test_two_roots_without_outputs_are_not_the_same(tmp_path, capsys):
    assert compare_outputs.main([str(tmp_path), str(tmp_path)]) == 1
    assert "has `dvc repro` run there?" in capsys.readouterr().out
    assert compare_outputs.main([str(tmp_path / "missing"), str(tmp_path)]) == 2
