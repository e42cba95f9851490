"""Hostile inputs (the reliability issue): a bad input stops its stage with exit status 1 and one paragraph,
"error: ...", that names the file, the record or key, and the fix; no traceback unless --debug is given; earlier
outputs stay as they were; an unusable MLflow store is reported before any model is loaded.

Where the issue's other cases are tested:
  truncated, non-UTF-8 or too deeply nested JSON, a top-level list, each missing field, wrong types, labels outside
      the set: test_prepare.py (test_parse_json_errors_name_the_file, test_validate_records_names_file_pmid_and_field,
      test_bad_input_leaves_previous_outputs_untouched)
  empty and whitespace-only strings, duplicates with conflicting labels, a filter that leaves nothing, a class too
      small to stratify: test_prepare.py (test_each_drop_rule_is_counted, test_conflicting_duplicates_name_both_pmids,
      test_unsplittable_pools)
  an adapter folder of another base model, method or label set: test_families.py
      (test_adapter_trained_for_something_else_is_refused)
  params.yaml with an unknown key, a negative learning rate, a zero batch size: test_params.py (and through a CLI here)
  an MLflow server that is down, a sqlite store under a file: test_train.py
      (test_unusable_mlflow_store_fails_before_training)
Here: 1 MB strings, a few more raw-JSON cases, a missing input for every stage (five of them through the command
line, with and without --debug), bad params.yaml through the command line, a locked or read-only store, an unusable
artifact folder, a deleted experiment, and evaluate's store check.
"""
from __future__ import annotations

import importlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from test_prepare import SOURCE, good_data, processed, record, stage_dir  # noqa: F401 (stage_dir: a fixture)

from peftqa.catalog import SPLITS
from peftqa.data import dataset
from peftqa.errors import PeftqaError
from peftqa.methods.attach import load_backbone
from peftqa.mlops import tracking
from peftqa.params import ModelParams, PeftParams
from peftqa.training import run as training_run
from stages import evaluate as evaluate_stage
from stages import prepare
from stages import train as train_stage

from tiny_models import ITEMS, tiny_frame

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ONE_MB = 1_000_000
BIG_TEXT = ("Blood pressure fell in the treated arm of the trial. " * (ONE_MB // 50 + 1))[:ONE_MB]  # 1 MB of words
LABELS = ("yes", "no")


@pytest.fixture
def cli(tmp_path, pipeline_env):
    """Run `python -m <module> [args]` in tmp_path, as DVC runs a stage there; returns the CompletedProcess."""
    env = {**pipeline_env, "DVC_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    for name in ("PEFTQA_DEBUG", "MLFLOW_TRACKING_URI", "PUBMEDQA_JSON", "PUBMEDQA_GROUND_TRUTH_JSON"):
        env.pop(name, None)

    def run(argv: list[str], extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env={**env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=300)

    return run


def error_paragraph(result: subprocess.CompletedProcess) -> str:
    """The error a stage printed, after checking exit 1, no traceback, and one paragraph that ends stderr."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    start = result.stderr.find("error: ")
    assert start == 0 or (start > 0 and result.stderr[start - 1] == "\n"), result.stderr[-3000:]
    paragraph = result.stderr[start:].rstrip("\n")
    assert "\n" not in paragraph, paragraph  # log lines may come before it, nothing after it
    return paragraph


def assert_names(message: str, needles: list[str]) -> None:
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    """tmp_path as the project root: the store is sqlite:///<tmp_path>/mlflow.db with artifacts in mlruns/."""
    monkeypatch.chdir(tmp_path)  # MLflow makes stray folders in the cwd for sqlite:///file:... URIs
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def store_path(root: Path) -> str:
    return str((root / "mlflow.db").resolve())


# -----------------------------------------------------------------------------
# 1 MB strings: a long context is kept and truncated by the backbone; a question is never truncated


def test_a_1mb_context_paragraph_passes_prepare_and_is_truncated_to_max_length(stage_dir, cli, tiny_model_paths):
    big = record(question="Is a 1 MB abstract read?", contexts=("A short first paragraph.", BIG_TEXT))
    raw = {**good_data(), "999": big}
    (stage_dir / "data/raw/ori_pqal.json").write_text(json.dumps(raw))
    result = cli(["stages.prepare"])
    assert result.returncode == 0, result.stderr[-3000:]
    splits = pd.concat([pd.read_csv(stage_dir / f"data/processed/{name}.csv", dtype={"pmid": str})
                        for name in SPLITS])
    [row] = splits.loc[splits["pmid"] == "999"].to_dict("records")
    assert row["context"] == "A short first paragraph. " + BIG_TEXT.strip()  # kept whole: truncation is the model's

    for family in ("encoder", "seq2seq"):
        backbone = load_backbone(ModelParams(name_or_path=str(tiny_model_paths[family]), max_length=64), "base",
                                 PeftParams(), LABELS, seed=0, device="cpu")
        ids = backbone.encode([row["question"]], [row["context"]], [row["label"]])["input_ids"][0]
        assert len(ids) <= 64, family
        assert row["question"] in backbone.tokenizer.decode(ids, skip_special_tokens=True), family


def test_a_1mb_question_is_refused_by_prepare_naming_the_record(stage_dir, cli):
    (stage_dir / "data/raw/ori_pqal.json").write_text(json.dumps({**good_data(), "999": record(question=BIG_TEXT)}))
    before = processed(stage_dir)
    paragraph = error_paragraph(cli(["stages.prepare"]))
    assert_names(paragraph, [SOURCE, "record PMID 999", "'QUESTION'", "characters", "fix or remove"])
    assert processed(stage_dir) == before


def test_an_encoder_question_longer_than_max_length_is_a_peftqa_error(tiny_model_paths):
    backbone = load_backbone(ModelParams(name_or_path=str(tiny_model_paths["encoder"]), max_length=16), "base",
                             PeftParams(), LABELS, seed=0, device="cpu")
    with pytest.raises(PeftqaError, match="model.max_length"):
        backbone.encode([ITEMS[0]["question"] * 3], [ITEMS[0]["context"]])


# -----------------------------------------------------------------------------
# more raw-JSON cases through prepare.main: the previous outputs stay as they were


@pytest.mark.parametrize("raw, needles", [
    ('{"7": {"QUESTION": "Caf\u00e9?", "CONTEXTS": ["a"], "final_decision": "yes"}}'.encode("latin-1"),
     ["not UTF-8 text (byte 23)", "re-download it"]),
    (json.dumps({**good_data(), "7": record(label="   ")}).encode(), ["record PMID 7", "'final_decision' is '   '",
                                                                     "PubMedQA labels are"]),
    (json.dumps({pmid: {**rec, "QUESTION": " \n\t"} for pmid, rec in good_data().items()}).encode(),
     ["no items left after cleaning", "check the labels in params.yaml and the input file"]),
], ids=["latin-1", "whitespace-label", "every-question-blank"])
def test_more_bad_raw_json_leaves_previous_outputs_untouched(stage_dir, raw, needles):
    (stage_dir / "data/raw/ori_pqal.json").write_bytes(raw)
    before = processed(stage_dir)
    with pytest.raises(PeftqaError) as error:
        prepare.main([])
    assert_names(str(error.value), [SOURCE, *needles])
    assert processed(stage_dir) == before


def test_a_pmid_listed_twice_is_refused():
    text = '{"7": %s, "8": %s, "7": %s}' % (json.dumps(record(label="yes")), json.dumps(record(question="Other?")),
                                            json.dumps(record(label="no")))
    with pytest.raises(PeftqaError) as error:
        dataset.parse_json(text.encode(), SOURCE)
    assert_names(str(error.value), [SOURCE, "'7'", "twice"])


# -----------------------------------------------------------------------------
# every stage and tool: a missing input names the file and the fix; on the command line, one paragraph and exit 1, and
# a traceback only with --debug (a stage that imports torch takes about 8 s to start, so not every stage runs as a CLI)

STAGE_FAILURES = {  # stage: (arguments, params overrides, env, what the error must name: the file or key, and the fix)
    "fetch": ([], {}, {"PUBMEDQA_JSON": "missing.json"},
              ["local file missing.json does not exist", "point PUBMEDQA_JSON at"]),
    "prepare": ([], {}, {}, ["data/raw/ori_pqal.json: not found", "dvc repro prepare"]),
    "curves": ([], {}, {}, ["models/base/history.csv not found", "dvc repro train@base"]),
    "train": (["lora"], {}, {}, ["data/processed/train.csv", "dvc repro prepare"]),
    "evaluate": (["lora"], {}, {}, ["models/lora/train_summary.json not found", "dvc repro train@lora"]),
    "stats": ([], {"methods": ["base", "lora"]}, {},
              ["reports/eval/base/preds_test.csv: not found", "run `dvc repro`"]),
    "report": ([], {}, {}, ["data/processed/test.csv is missing", "run `dvc repro`"]),
    "protocols": ([], {"seeds": [1, 2]}, {}, ["data/processed/folds.csv not found", "dvc repro prepare"]),
    "register": ([], {}, {}, ["no finished training run", "mlflow.db", "train them first"]),
    "bench": ([], {}, {}, ["data/processed/train.csv not found", "dvc repro prepare"]),
    "predict": (["--method", "lora"], {}, {}, ["models/lora/adapter not found", "train the method first"]),
}
TOOLS = ("register", "bench", "predict")  # `peftqa <tool>` subcommands, in peftqa/cli/, not DVC stages
CLI_STAGES = ("fetch", "prepare", "evaluate", "stats", "report")  # evaluate stands for the stages that import torch


def files_written(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"params.yaml"}


@pytest.mark.parametrize("stage", STAGE_FAILURES)
def test_a_missing_input_names_the_file_and_the_fix(store_dir, write_params, monkeypatch, stage):
    args, overrides, env, needles = STAGE_FAILURES[stage]
    write_params(store_dir, overrides)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(PeftqaError) as error:
        importlib.import_module(f"peftqa.cli.{stage}" if stage in TOOLS else f"stages.{stage}").main(args)
    assert_names(str(error.value), needles)
    assert files_written(store_dir) <= ({"mlflow.db"} if stage == "register" else set())  # register opened the store


@pytest.mark.parametrize("stage", CLI_STAGES)
def test_the_cli_prints_one_error_paragraph_and_exits_1(tmp_path, cli, write_params, stage):
    args, overrides, env, needles = STAGE_FAILURES[stage]
    write_params(tmp_path, overrides)
    assert_names(error_paragraph(cli([f"stages.{stage}", *args], env)), needles)
    assert files_written(tmp_path) == set()


@pytest.mark.parametrize("stage", ["prepare", "stats", "report"])
def test_debug_shows_the_traceback(tmp_path, cli, write_params, stage):
    args, overrides, env, _ = STAGE_FAILURES[stage]
    write_params(tmp_path, overrides)
    result = cli([f"stages.{stage}", *args, "--debug"], env)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("peftqa.errors.PeftqaError: ")


@pytest.mark.parametrize("overrides, needles", [
    ({"train.lr_typo": 0.1}, ["unknown key 'train.lr_typo'", "Check the spelling in params.yaml"]),
    ({"peft.lora.lr": -0.001}, ["'peft.lora.lr' = -0.001 is invalid", "must be in (0, 10]"]),
    ({"train.batch_size": 0}, ["'train.batch_size' = 0 is invalid", "must be >= 1"]),
], ids=["unknown-key", "negative-lr", "zero-batch-size"])
def test_bad_params_yaml_stops_the_first_stage_before_it_writes(tmp_path, cli, write_params, overrides, needles):
    raw = tmp_path / "data/raw/ori_pqal.json"
    raw.parent.mkdir(parents=True)
    raw.write_text("previous output\n")
    write_params(tmp_path, overrides)
    paragraph = error_paragraph(cli(["stages.fetch"], {"PUBMEDQA_JSON": str(tmp_path / "source.json")}))
    assert_names(paragraph, ["params.yaml", *needles])
    assert raw.read_text() == "previous output\n"


# -----------------------------------------------------------------------------
# the MLflow store: locked, read-only, deleted experiment; all before any model is loaded


@pytest.fixture
def train_dir(store_dir, write_params):
    """A project for the train stage whose model cannot be loaded: an error about the store proves it came first."""
    (store_dir / "data/processed").mkdir(parents=True)
    tiny_frame(8, 1000).to_csv(store_dir / "data/processed/train.csv", index=False)
    tiny_frame(4, 5000).to_csv(store_dir / "data/processed/val.csv", index=False)
    write_params(store_dir, {"model.name_or_path": str(store_dir / "no_such_model"), "train.device": "cpu",
                             "mlflow.experiment": "tests"})
    return store_dir


def test_a_locked_store_fails_fast_before_the_model_is_loaded(train_dir, tmp_path_factory, monkeypatch):
    """Another process holds an exclusive lock on an existing store: sqlite's 5 s timeout, then one paragraph."""
    template = tmp_path_factory.mktemp("template")  # a store from earlier runs, not yet opened by this process
    MlflowClient(tracking_uri=f"sqlite:///{template / 'mlflow.db'}").create_experiment("tests")
    shutil.copy(template / "mlflow.db", train_dir / "mlflow.db")  # (MLflow caches a store per URI, a real CLI not)
    loaded = []
    monkeypatch.setattr(training_run, "load_backbone", lambda *a, **k: loaded.append(1))
    lock = sqlite3.connect(train_dir / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        start = time.perf_counter()
        with pytest.raises(PeftqaError) as error:
            train_stage.main(["lora"])
        seconds = time.perf_counter() - start
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert_names(str(error.value), [f"MLflow store sqlite:///{store_path(train_dir)} is not usable",
                                    "database is locked", "no other process holds a lock on it"])
    assert "\n" not in str(error.value)  # the first line of sqlalchemy's error, not its SQL and links
    assert not loaded and not (train_dir / "models").exists()
    assert seconds < 30, f"took {seconds:.0f} s to report a locked store"


def test_a_store_that_another_process_is_writing_fails_within_the_busy_timeout(store_dir):
    """A reserved lock (a writer mid-transaction) lets reads through; connect's write probe waits MLflow's 20 s."""
    tracking.connect("tests")
    lock = sqlite3.connect(store_dir / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        start = time.perf_counter()
        with pytest.raises(PeftqaError) as error:
            tracking.connect("tests")
        seconds = time.perf_counter() - start
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert_names(str(error.value), [store_path(store_dir), "database is locked", "Fix it before training"])
    assert seconds < 60, f"took {seconds:.0f} s to report a locked store"


def test_a_read_only_store_fails_before_the_model_is_loaded(train_dir, monkeypatch):
    tracking.connect("tests")  # the experiment exists: reads alone would pass
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///file:{store_path(train_dir)}?mode=ro&uri=true")
    loaded = []
    monkeypatch.setattr(training_run, "load_backbone", lambda *a, **k: loaded.append(1))
    with pytest.raises(PeftqaError) as error:
        train_stage.main(["lora"])
    assert_names(str(error.value), [store_path(train_dir), "attempt to write a readonly database",
                                    "folder of mlflow.db is writable"])
    assert not loaded and not (train_dir / "models").exists()


def _read_only_folder() -> Path:
    """A folder no one can create files in, root included (tests run as root here, so chmod proves nothing)."""
    folder = Path("/proc/sys")
    try:
        (folder / "peftqa_write_probe").open("w").close()
    except OSError:
        return folder
    pytest.skip(f"{folder} is writable on this machine")


@pytest.mark.parametrize("case", ["mlruns-is-a-file", "mlruns-on-read-only-procfs", "parent-is-a-file"])
def test_an_unusable_artifact_folder_fails_before_the_model_is_loaded(train_dir, monkeypatch, case):
    folder = train_dir / "mlruns"
    if case == "mlruns-is-a-file":
        folder.write_text("not a folder\n")
    elif case == "mlruns-on-read-only-procfs":
        folder.symlink_to(_read_only_folder(), target_is_directory=True)
    else:  # an experiment made elsewhere, its artifacts under a path whose parent is a file
        (train_dir / "a_file").write_text("")
        folder = train_dir / "a_file" / "mlruns"
        MlflowClient(tracking_uri=f"sqlite:///{store_path(train_dir)}").create_experiment(
            "tests", artifact_location=folder.as_uri())
    loaded = []
    monkeypatch.setattr(training_run, "load_backbone", lambda *a, **k: loaded.append(1))
    with pytest.raises(PeftqaError) as error:
        train_stage.main(["lora"])
    assert_names(str(error.value), [f"artifact folder {folder} is not a writable folder",
                                    "make it a folder you can write to"])
    if case == "mlruns-is-a-file":
        assert "(a file is in the way)" in str(error.value)
    assert not loaded and not (train_dir / "models").exists()


def test_a_missing_artifact_folder_is_created_with_its_parents(store_dir):
    folder = store_dir / "gone" / "deeper" / "mlruns"
    MlflowClient(tracking_uri=f"sqlite:///{store_path(store_dir)}").create_experiment(
        "tests", artifact_location=folder.as_uri())
    assert not (store_dir / "gone").exists()
    tracking.connect("tests")
    assert folder.is_dir()


def test_the_artifact_folder_is_checked_where_it_is_when_its_path_has_a_space(tmp_path, monkeypatch):
    root = tmp_path / "my project"
    root.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.connect("tests")
    assert (root / "mlruns").is_dir()
    assert not (tmp_path / "my%20project").exists()  # the URI's %20 is decoded, not taken as a folder name


def test_a_deleted_experiment_is_named_with_the_command_that_restores_it(store_dir):
    client, experiment_id = tracking.connect("tests")
    client.delete_experiment(experiment_id)
    with pytest.raises(PeftqaError) as error:
        tracking.connect("tests")
    assert_names(str(error.value), ["experiment 'tests'", "is deleted", store_path(store_dir),
                                    f"mlflow experiments restore --experiment-id {experiment_id}", "mlflow.experiment"])


@pytest.mark.parametrize("problem", ["store-unusable", "run-not-in-store"])
def test_evaluate_checks_the_store_and_the_run_before_scoring(store_dir, write_params, monkeypatch, problem):
    write_params(store_dir, {"mlflow.experiment": "tests"})
    summary = store_dir / "models/lora/train_summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"mlflow_run_id": "0123456789abcdef", "best_epoch": 1, "trainable_params": 1,
                                   "adapter_bytes": 1}))
    if problem == "store-unusable":  # the db's folder is a file
        (store_dir / "not_a_folder").write_text("")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_dir / 'not_a_folder' / 'mlflow.db'}")
        needles = ["MLflow store", "not_a_folder/mlflow.db is not usable", "Fix it before training"]
    else:  # e.g. mlflow.db was deleted after training
        needles = ["models/lora/train_summary.json", "MLflow run 0123456789abcdef is not in the store",
                   store_path(store_dir), "dvc repro"]
    loaded = []
    monkeypatch.setattr(evaluate_stage, "load_backbone", lambda *a, **k: loaded.append(1))
    with pytest.raises(PeftqaError) as error:
        evaluate_stage.main(["lora"])
    assert_names(str(error.value), needles)
    assert not loaded and not (store_dir / "reports").exists()
