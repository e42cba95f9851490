"""The linear probe (train@base, encoder family): solved by LogisticRegression on frozen features, C chosen on val.

The acceptance test fits a LogisticRegression independently (features from transformers directly, scikit-learn's
own StandardScaler) and requires evaluate@base's test predictions to equal it. Then: seed independence, the head's
algebra (binary and three-class), the embed stage's cache, and the tuned methods' head starting from the probe.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoModel, AutoTokenizer

from peftqa.data import features as features_module
from peftqa.params import YamlLoader
from peftqa.training import loop
from peftqa.training import run as training_run
from peftqa.training.probe import head_terms, solve_probe
from stages import embed as embed_stage
from stages import evaluate as evaluate_stage
from stages import train as train_stage

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

C_GRID = [0.01, 0.1, 1.0, 10.0]
WORDS = "patients improved outcome mortality trial cohort placebo dose risk survival lower higher".split()


def synthetic_split(n: int, offset: int, seed: int) -> pd.DataFrame:
    """PubMedQA-shaped rows whose label leans on one word ("improved" -> yes), with 20% label noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = list(rng.choice(WORDS[1:], size=6))
        yes = bool(rng.random() < 0.5)
        if yes:
            words[rng.integers(6)] = "improved"
        label = "yes" if yes != bool(rng.random() < 0.2) else "no"
        rows.append({"pmid": str(offset + i), "question": f"Does treatment {i % 5} help?",
                     "context": " ".join(words) + ".", "label": label})
    return pd.DataFrame(rows)


@pytest.fixture
def probe_dir(stage_dir):
    root = stage_dir(**{"peft.base.c_grid": C_GRID, "train.class_weighting": "balanced"})
    for split, (n, offset, seed) in {"train": (60, 1000, 1), "val": (32, 5000, 2), "test": (32, 9000, 3)}.items():
        synthetic_split(n, offset, seed).to_csv(root / f"data/processed/{split}.csv", index=False)
    return root


def independent_features(model_path: str, frame: pd.DataFrame) -> np.ndarray:
    """Mean-pooled last hidden states straight from transformers (no peftqa code), segment ids left at 0."""
    tokenizer, model = AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path).eval()
    encoded = tokenizer(frame["question"].tolist(), frame["context"].tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def test_evaluate_base_equals_an_independent_logistic_regression(probe_dir, tiny_model_paths):
    train_stage.main(["base"])
    evaluate_stage.main(["base"])
    preds = pd.read_csv(probe_dir / "reports/eval/base/preds_test.csv", dtype={"pmid": str})

    frames = {split: pd.read_csv(probe_dir / f"data/processed/{split}.csv", dtype={"pmid": str})
              for split in ("train", "val", "test")}
    x = {split: independent_features(str(tiny_model_paths["encoder"]), frame).astype(np.float64)
         for split, frame in frames.items()}
    fitted = []
    for c in C_GRID:  # ascending, first best kept: ties go to the stronger regularisation
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=100_000,
                                                                   tol=1e-10))  # solved to convergence, in float64
        model.fit(x["train"], frames["train"]["label"])
        fitted.append((f1_score(frames["val"]["label"], model.predict(x["val"]), average="macro"), -c, model))
    _, neg_c, peer = max(fitted, key=lambda item: item[:2])

    summary = json.loads((probe_dir / "models/base/train_summary.json").read_text())
    assert summary["probe_c"] == -neg_c
    assert summary["epochs_run"] == 0 and summary["trainable_params"] == 2 * 32 + 2
    assert list(preds["pred"]) == list(peer.predict(x["test"]))
    p_yes = peer.predict_proba(x["test"])[:, list(peer.classes_).index("yes")]
    assert np.abs(preds["p_yes"].to_numpy() - p_yes).max() <= 1e-4
    assert len(set(preds["pred"])) == 2  # it learned the word, not a constant


def test_the_probe_does_not_depend_on_the_training_seed(probe_dir):
    heads = []
    for seed in (1, 2):
        data = yaml.load((probe_dir / "params.yaml").read_text(), Loader=YamlLoader)
        data["train"]["seed"] = seed
        (probe_dir / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        train_stage.main(["base"])
        heads.append(load_file(str(probe_dir / "models/base/adapter/head.safetensors")))
    assert all(torch.equal(heads[0][name], heads[1][name]) for name in heads[0])


@pytest.mark.parametrize("labels", [("yes", "no"), ("no", "yes"), ("yes", "no", "maybe")])
def test_head_terms_give_the_logistic_regressions_probabilities(labels):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, -2, 0, 1]
    third = (x[:, 3] > 3) if len(labels) > 2 else np.zeros(90, dtype=bool)
    y = np.array(labels)[np.where(third, 2, (x[:, 0] + rng.normal(size=90) > 0).astype(int))]
    probe = solve_probe(x[:60], y[:60], x[60:], y[60:], labels, (0.1, 1.0), None)
    logits = x[60:] @ probe.weight.T + probe.bias  # (N, K) in `labels` order, as the head computes them
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    scaler = StandardScaler().fit(x[:60])
    peer = LogisticRegression(C=probe.c, max_iter=100_000, tol=1e-10).fit(scaler.transform(x[:60]), y[:60])
    expected = peer.predict_proba(scaler.transform(x[60:]))[:, [list(peer.classes_).index(label) for label in labels]]
    np.testing.assert_allclose(probs, expected, atol=1e-8)
    assert head_terms(peer, np.zeros(5), np.ones(5), labels)[0].shape == (len(labels), 5)


def test_a_split_without_one_label_is_refused():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="no example of label"):
        solve_probe(x, np.array(["yes"] * 4), x, np.array(["yes", "no"] * 2), ("yes", "no"), (1.0,), None)


def test_embed_caches_features_that_the_probe_reuses(probe_dir, tiny_model_paths, caplog):
    (probe_dir / "data/processed/test.csv").write_text(synthetic_split(8, 9000, 3).to_csv(index=False))
    embed_stage.main([])
    meta = json.loads((probe_dir / "data/features/features.json").read_text())
    assert meta["shapes"] == {"train": [60, 32], "val": [32, 32], "test": [8, 32]}
    pmids, labels, features = features_module.load_features("val")
    assert list(pmids) == list(pd.read_csv(probe_dir / "data/processed/val.csv", dtype={"pmid": str})["pmid"])
    np.testing.assert_allclose(features, independent_features(str(tiny_model_paths["encoder"]), pd.read_csv(
        probe_dir / "data/processed/val.csv")), atol=1e-5)
    with caplog.at_level("INFO", logger="peftqa.data.features"):
        train_stage.main(["base"])
    assert "embedding them now" not in caplog.text  # read from the cache


def test_a_tuned_encoder_method_starts_its_head_from_the_probe(probe_dir):
    train_stage.main(["base"])
    probe_head = load_file(str(probe_dir / "models/base/adapter/head.safetensors"))
    from peftqa.methods.attach import load_backbone
    from peftqa.params import load_params

    params = load_params()
    backbone = load_backbone(params.model, "lora", params.peft, params.prepare.labels, seed=0, device="cpu")
    frames = {split: pd.read_csv(f"data/processed/{split}.csv", dtype={"pmid": str}) for split in ("train", "val")}
    training_run.start_head_from_probe(backbone, params, frames["train"], frames["val"])
    torch.testing.assert_close(backbone.head.weight, probe_head["weight"])  # LoRA starts as the identity: same features
    groups = loop.parameter_groups(backbone, lr=0.5, head_lr=0.25)
    assert [g["lr"] for g in groups] == [0.5, 0.25] and groups[1]["params"] == backbone.head_parameters()


@pytest.mark.parametrize(("method", "init"), [("prompt_tuning", None), ("prefix_tuning", None), ("lora", "default"),
                                            ("lora", "pissa")])
def test_features_embedded_on_the_fly_are_the_frozen_encoders(probe_dir, method, init):
    """Without a cache (another model, another split), a tuned backbone's probe features come from the encoder alone,
    its adapter switched off: the same numbers stage embed caches. A PiSSA start has moved the weights' principal
    part into the adapter, so there the encoder is read with it (switched off, it would give the residual's)."""
    from peftqa.methods.attach import load_backbone
    from peftqa.params import load_params
    from peftqa.params.knobs import LoraParams

    params = load_params()
    peft = params.peft.replace(lora=LoraParams(init=init)) if init else params.peft
    val = pd.read_csv("data/processed/val.csv", dtype={"pmid": str})
    base = load_backbone(params.model, "base", params.peft, params.prepare.labels, seed=0, device="cpu")
    tuned = load_backbone(params.model, method, peft, params.prepare.labels, seed=0, device="cpu")
    expected = features_module.embed_frame(base, val, 8)
    np.testing.assert_allclose(features_module.features_for(tuned, val, params.model, probe_dir / "nowhere"), expected,
                               atol=1e-5)
    assert tuned.model is not tuned.model.get_base_model()  # the adapter is back in place afterwards
    if init == "pissa":  # the control: switched off, a PiSSA adapter leaves the residual weights, not the encoder's
        with tuned.model.disable_adapter():
            assert not np.allclose(features_module.embed_frame(tuned, val, 8), expected, atol=1e-5)
