"""model.dtype bf16_compute (peftqa/compute.py) and train.length_groups, on tiny random models: bf16 scores stay within
a stated tolerance of fp32 (and a control shows fp32's own tolerance would fail them), the output head runs in fp32,
a CPU without native bf16 is warned about once, and length order changes the batches, never the answers or their
order."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from peftqa import compute
from peftqa.evaluation.predictions import predict_batched, predict_frame
from peftqa.evaluation.scoring import autocast, length_order, score_frame
from peftqa.methods.attach import load_backbone
from peftqa.params import ModelParams, PeftParams
from peftqa.training.checkpoint import same_run
from peftqa.training.loop import length_grouped

from tiny_models import ITEMS, make_tiny_model

KINDS = {"bert": "encoder", "t5": "seq2seq", "llama": "causal"}  # tiny model kind -> family
LABELS = ("yes", "no")
# bf16 keeps 8 bits of mantissa: on the tiny models (2 layers, 32 wide) a label log-prob moves by at most ~0.01 under
# bf16 compute with the head in fp32; SmolLM2's zero-shot moved p_yes by at most 0.017 (docs/models.md)
BF16_TOLERANCE = 0.03
FP32_TOLERANCE = 1e-5  # what fp32 scores are held to elsewhere (padding, save and load: tests/test_families.py)


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_compute")
    return {kind: make_tiny_model(family, root / kind, kind) for kind, family in KINDS.items()}


def load(tiny_paths: dict[str, Path], kind: str, dtype: str, method: str = "base"):
    model_params = ModelParams(name_or_path=str(tiny_paths[kind]), max_length=96, dtype=dtype)
    return load_backbone(model_params, method, PeftParams(), LABELS, seed=0, device="cpu")


def frame(n: int = 12) -> pd.DataFrame:
    """n items of different lengths (each context repeated a different number of times), in no length order."""
    rows = [{**ITEMS[i % len(ITEMS)], "pmid": str(i)} for i in range(n)]
    for i, row in enumerate(rows):
        row["context"] = " ".join([row["context"]] * (1 + (i * 5) % 7))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_compute_scores_stay_within_tolerance_of_fp32_and_fp32_tolerance_would_fail(tiny_paths, kind):
    items = frame()
    fp32 = score_frame(load(tiny_paths, kind, "float32"), items, 4, with_loss=False)[1]
    backbone = load(tiny_paths, kind, "bf16_compute")
    # without autocast, the bf16_compute backbone (its head wrapped) computes exactly as the float32 one
    np.testing.assert_array_equal(score_frame(backbone, items, 4, with_loss=False)[1], fp32)
    bf16 = score_frame(backbone, items, 4, with_loss=False, bf16=True)[1]
    np.testing.assert_allclose(bf16, fp32, atol=BF16_TOLERANCE, rtol=0)
    with pytest.raises(AssertionError):  # the control: bf16 rounding is real, and fp32's tolerance catches it
        np.testing.assert_allclose(bf16, fp32, atol=FP32_TOLERANCE, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_the_output_head_computes_in_fp32_under_bf16_compute_and_would_not_without_it(tiny_paths, kind):
    items = frame(4)
    heads = {}
    for dtype in ("bf16_compute", "float32"):  # float32: the same head under autocast, unwrapped (the control)
        backbone = load(tiny_paths, kind, dtype)
        head = backbone._output_heads()[0]
        seen = []
        head.register_forward_hook(lambda module, args, out, seen=seen: seen.append(out.dtype))
        with torch.no_grad(), autocast(backbone.device, True):
            backbone.score(backbone.encode(items["question"].tolist(), items["context"].tolist()))
        heads[dtype] = seen
    assert heads["bf16_compute"] and set(heads["bf16_compute"]) == {torch.float32}
    assert set(heads["float32"]) == {torch.bfloat16}


def test_bf16_compute_trains_fp32_weights_and_keeps_them_fp32(tiny_paths):
    backbone = load(tiny_paths, "llama", "bf16_compute", method="lora")
    items = frame(4)
    batch = backbone.encode(items["question"].tolist(), items["context"].tolist(), items["label"].tolist())
    with autocast(backbone.device, True):
        loss = backbone.loss(batch)
    loss.backward()
    trainable = backbone.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
                             for p in trainable)
    assert loss.dtype == torch.float32


def test_the_cpu_s_bf16_instructions_are_read_from_cpuinfo(tmp_path):
    native, emulated = tmp_path / "native", tmp_path / "emulated"
    native.write_text("flags\t\t: fpu sse2 avx512f avx512bw avx512_bf16 avx512_vnni\n")
    emulated.write_text("flags\t\t: fpu sse2 avx512f avx512bw\n")
    assert compute.cpu_bf16_support(native) == "avx512_bf16"
    assert compute.cpu_bf16_support(emulated) == "none"
    assert compute.cpu_bf16_support(tmp_path / "absent") == "none"


def test_bf16_compute_on_a_cpu_without_native_bf16_warns_once(tiny_paths, monkeypatch, caplog):
    monkeypatch.setattr(compute, "cpu_bf16_support", lambda: "none")
    compute.warn_if_emulated.cache_clear()
    with caplog.at_level(logging.WARNING, logger="peftqa.compute"):
        load(tiny_paths, "llama", "bf16_compute")
        load(tiny_paths, "llama", "bf16_compute")
        load(tiny_paths, "llama", "float32")
    warnings = [r for r in caplog.records if "without native bf16" in r.getMessage()]
    assert len(warnings) == 1 and "slower than float32" in warnings[0].getMessage()
    compute.warn_if_emulated.cache_clear()
    monkeypatch.setattr(compute, "cpu_bf16_support", lambda: "avx512_bf16")
    caplog.clear()
    load(tiny_paths, "llama", "bf16_compute")
    assert not [r for r in caplog.records if "without native bf16" in r.getMessage()]
    compute.warn_if_emulated.cache_clear()


def test_auto_is_never_bf16_on_a_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compute.use_bf16("auto", cpu) and compute.use_bf16("auto", cuda)
    assert compute.use_bf16("bf16_compute", cpu) and not compute.use_bf16("float32", cuda)
    assert compute.describe("auto", cpu) == "fp32" and compute.describe("bf16_compute", cpu).startswith("bf16 autocast")


# -----------------------------------------------------------------------------
# train.length_groups


def padded_tokens(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> int:
    return sum(int(lengths[order[i : i + batch_size]].max()) * len(order[i : i + batch_size])
               for i in range(0, len(order), batch_size))


def test_length_groups_see_every_row_once_keep_batch_boundaries_and_depend_only_on_the_seed():
    lengths = np.random.default_rng(0).integers(40, 700, size=301)
    shuffle = np.random.default_rng(7).permutation(301)
    grouped = length_grouped(shuffle, lengths, 8, np.random.default_rng(7))
    again = length_grouped(shuffle, lengths, 8, np.random.default_rng(7))
    other = length_grouped(shuffle, lengths, 8, np.random.default_rng(8))
    assert sorted(grouped) == list(range(301))
    np.testing.assert_array_equal(grouped, again)
    assert not np.array_equal(grouped, other)
    # padding: far below the shuffle's. 301 rows fit in one chunk (64 batches of 8): 37 full batches of neighbours
    # in length order, shuffled, then the partial batch of 5, the longest rows, last (so no batch straddles it)
    assert padded_tokens(lengths, grouped, 8) < 1.05 * lengths.sum() < padded_tokens(lengths, shuffle, 8)
    assert sorted(lengths[grouped[-5:]]) == sorted(lengths)[-5:]
    assert not np.array_equal(grouped[:-5], np.sort(grouped[:-5]))  # the batches themselves are shuffled


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_length_order_scores_the_same_answers_in_the_frame_s_order(tiny_paths, kind):
    backbone = load(tiny_paths, kind, "float32")
    items = frame()
    order = length_order(backbone.token_lengths(items))
    assert not np.array_equal(order, np.arange(len(items)))  # the items are not in length order
    expected = score_frame(backbone, items, 4, with_loss=False)[1]
    assert not np.allclose(expected[order], expected)  # so a result left in length order would be caught
    np.testing.assert_allclose(score_frame(backbone, items, 4, with_loss=False, by_length=True)[1], expected,
                               atol=FP32_TOLERANCE, rtol=0)
    labels, _, _ = predict_batched(backbone, items, 4, "generate", False)
    assert predict_batched(backbone, items, 4, "generate", False, by_length=True)[0] == labels
    served = predict_frame(backbone, items[["pmid", "question", "context"]], 4, "verbalizer", False)
    by_length = predict_frame(backbone, items[["pmid", "question", "context"]], 4, "verbalizer", False,
                              by_length=True)
    assert list(by_length["pmid"]) == list(items["pmid"]) and list(by_length["pred"]) == list(served["pred"])
    np.testing.assert_allclose(by_length["p_yes"], served["p_yes"], atol=FP32_TOLERANCE, rtol=0)


def test_the_fp32_head_is_a_linear_that_copies_and_keeps_its_weights():
    head = torch.nn.Linear(4, 3)
    compute.keep_in_fp32(head)
    copied = copy.deepcopy(head)
    with torch.no_grad():
        copied.weight.zero_()
        copied.bias.zero_()
    hidden = torch.ones(2, 4, dtype=torch.bfloat16)
    with autocast(torch.device("cpu"), True):
        out, out_copied = head(hidden), copied(hidden)
    assert out.dtype == torch.float32 and isinstance(head, torch.nn.Linear)
    assert torch.equal(out_copied, torch.zeros(2, 3)) and not torch.equal(out, out_copied)  # each its own weights


def test_a_checkpoint_resumes_on_another_cpu_but_not_under_other_settings():
    saved = {"train.seed": 42, "compute": "fp32", "cpu_bf16": "avx512_bf16"}
    assert same_run(saved, {**saved, "cpu_bf16": "none"})  # the machine's own key: a run moved to another CPU
    assert not same_run(saved, {**saved, "compute": "bf16 autocast, fp32 weights"})  # the control: a setting
    assert not same_run(None, saved)
