"""The faults a long experiment meets (issue 27), each on real files: a truncated or corrupted artifact on disk.

An adapter's weights, the encoder's head and a features file are refused by the stage that reads them, in one
paragraph naming the file and how to get it back, with nothing else overwritten; a corrupted checkpoint makes the
training start afresh, saying so. Each has a control: with peftqa's check bypassed (`common.reading` made a no-op),
the library's own exception reaches the user.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from peftqa import common, features
from peftqa.common import PeftqaError
from peftqa.families import encoder as encoder_family
from peftqa.families import load as families_load
from peftqa.training import checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_header_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF  # safetensors: the 8-byte header length; a zip (an .npz): its local header's signature
    path.write_bytes(bytes(data))


def flip_middle_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the data: a zip's CRC sees it (safetensors' and torch's data have none)
    path.write_bytes(bytes(data))


def bypass_the_check(monkeypatch) -> None:
    """The control: the read without peftqa's wrapper, as it was before."""
    no_op = lambda path, fix: contextlib.nullcontext()  # noqa: E731
    for module in (families_load, encoder_family, features):
        monkeypatch.setattr(module, "reading", no_op)


@pytest.mark.parametrize(("method", "damaged", "damage"), [
    ("lora", "adapter_model.safetensors", truncate), ("lora", "adapter_model.safetensors", flip_header_byte),
    ("lora", "head.safetensors", truncate), ("bottleneck", "bottleneck.safetensors", truncate),
])
def test_a_damaged_adapter_is_refused_naming_the_file_and_the_fix(trained, monkeypatch, method, damaged, damage):
    from stages import evaluate as evaluate_stage

    root = trained(method)
    preds = root / f"reports/eval/{method}/preds_test.csv"
    before = preds.read_bytes()
    damage(root / f"models/{method}/adapter/{damaged}")
    with pytest.raises(PeftqaError) as error:
        evaluate_stage.main([method])
    message = str(error.value)
    assert f"models/{method}/adapter/{damaged}: cannot be read, it is truncated or corrupted" in message
    assert f"dvc checkout models/{method}/adapter" in message and f"dvc repro -f train@{method}" in message
    assert "\n" not in message and preds.read_bytes() == before  # one paragraph; the last predictions kept
    bypass_the_check(monkeypatch)
    with pytest.raises(Exception) as raw:
        evaluate_stage.main([method])
    assert not isinstance(raw.value, PeftqaError)  # the library's own error, with its traceback


@pytest.mark.parametrize("damage", [truncate, flip_header_byte, flip_middle_byte])
def test_a_damaged_features_file_is_refused_naming_it_and_the_fix(tmp_path, monkeypatch, damage):
    frame = pd.DataFrame({"pmid": ["1", "2"], "label": ["yes", "no"]})
    features.save_features(tmp_path / "train.npz", frame, np.ones((2, 4), dtype=np.float32))
    assert features.load_features("train", tmp_path)[2].shape == (2, 4)
    damage(tmp_path / "train.npz")
    with pytest.raises(PeftqaError, match=rf"{tmp_path / 'train.npz'}: cannot be read, it is truncated or corrupted "
                                          r"\(BadZipFile: .*\); restore it with `dvc checkout .*` \(or rebuild it: "
                                          r"`dvc repro -f embed`\)"):
        features.load_features("train", tmp_path)
    bypass_the_check(monkeypatch)
    with pytest.raises(Exception) as raw:
        features.load_features("train", tmp_path)
    assert not isinstance(raw.value, PeftqaError)


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_damaged_checkpoint_is_ignored_and_training_starts_afresh(tmp_path, caplog, keep):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, {"config": {"a": 1}, "parameters": [torch.ones(64, 64)],
                                      "history": [{"epoch": 1}]})
    assert checkpoint.load_checkpoint(path, {"a": 1})["history"] == [{"epoch": 1}]  # the control: intact, it resumes
    truncate(path, keep)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        assert checkpoint.load_checkpoint(path, {"a": 1}) is None
    assert f"ignoring {path}: it cannot be read, it is truncated or corrupted" in caplog.text
    assert "training starts afresh" in caplog.text


def test_only_a_corrupt_file_s_errors_are_rewritten():
    """A read that fails for another reason (a missing file, a permission, a bug) keeps its own error."""
    for other in (FileNotFoundError("x"), PermissionError(13, "denied"), KeyError("features"), ValueError("shape")):
        assert not common.unreadable(other), other
        with pytest.raises(type(other)):
            with common.reading("x.npz", "fix"):
                raise other
