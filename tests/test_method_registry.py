"""Adding a PEFT method is one registry entry. A plug-in (LoRA with use_dora=True, as the registered `dora` is) is
registered here, in-process, under its own name, and
trained and evaluated on a tiny model through the stages' own entry points; no module under stages/ knows it."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from peftqa.errors import ParamsError
from peftqa.methods import registry as methods
from peftqa.methods.lora import build_lora
from peftqa.params import load_params
from peftqa.params.knobs import LoraParams
from stages import evaluate as evaluate_stage
from stages import train as train_stage

from tiny_models import tiny_frame

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@dataclass(frozen=True)
class DoraParams(LoraParams):
    lr: float = 5e-3


def build_dora(knobs: DoraParams, family, model):
    """LoRA's config, with the update split into magnitude and direction (DoRA)."""
    config = build_lora(knobs, family, model)
    config.use_dora = True
    return config


@pytest.fixture
def dora():
    entry = methods.register(methods.Method("plugin", DoraParams, build_dora))
    yield entry
    del methods.REGISTRY["plugin"]


def test_a_method_registered_in_process_trains_and_evaluates_through_the_stages(dora, stage_dir):
    root = stage_dir(**{"methods": ["base", "plugin"], "peft.plugin.r": 4, "train.patience": 5})
    tiny_frame(8, 9000).to_csv(root / "data/processed/test.csv", index=False)
    assert load_params().peft.plugin == DoraParams(r=4)  # params.yaml's peft.plugin section, checked as its knobs

    train_stage.main(["plugin"])
    evaluate_stage.main(["plugin"])

    adapter = root / "models/plugin/adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["r"] == 4 and sorted(config["target_modules"]) == ["query", "value"]
    history = pd.read_csv(root / "models/plugin/history.csv")
    assert list(history["epoch"]) == [0, 1, 2] and history["train_loss"].iloc[1:].notna().all()
    summary = json.loads((root / "models/plugin/train_summary.json").read_text())
    hidden, layers, head = 32, 2, 32 * 2 + 2  # the tiny BERT; the encoder's classification head on top
    lora = layers * 2 * (4 * hidden + hidden * 4)  # query and value: A (r x in) and B (out x r)
    assert summary["trainable_params"] == lora + layers * 2 * hidden + head  # + DoRA's magnitude per output unit
    assert summary["note"] == dora.describe(has_head=True)

    preds = pd.read_csv(root / "reports/eval/plugin/preds_test.csv")
    assert len(preds) == 8 and set(preds["pred"]) <= {"yes", "no"}
    metrics = json.loads((root / "reports/eval/plugin/metrics_test.json").read_text())
    run = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_run(summary["mlflow_run_id"])
    assert run.info.run_name == "plugin" and run.data.tags["stage"] == "train@plugin"
    assert run.data.params["peft.plugin.r"] == "4" and run.data.params["peft_config.use_dora"] == "True"
    assert run.data.metrics["eval_test_macro_f1"] == pytest.approx(metrics["macro_f1"])


def test_an_unregistered_method_is_refused_by_name(stage_dir):
    stage_dir(**{"methods": ["base", "plugin"]})
    with pytest.raises(ParamsError, match="'plugin' is not one of"):
        load_params()


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.Method("lora", LoraParams, build_lora))
