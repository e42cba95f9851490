"""The GPU profiles that README.md and docs/gpu.md give as `dvc exp run -S ...` commands build what they promise: the
FLAN-T5-XL profile trains the reference's 204,800 prompt-tuning and 4,915,200 prefix-tuning parameters. Built on the
meta device from FLAN-T5-XL's config (no download, no memory), through peftqa's own method builders and params."""
from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import T5ForConditionalGeneration

from peftqa.cli.bench_reference import SHAPES, build_t5_config
from peftqa.families.seq2seq import Seq2SeqBackbone
from peftqa.methods import registry as methods
from peftqa.params import load_params

ROOT = Path(__file__).resolve().parents[1]
PROFILE_DOCS = ("README.md", "docs/gpu.md")
REFERENCE_TRAINABLE = {"prompt_tuning": 204_800, "prefix_tuning": 4_915_200}  # the reference study's 0.205M, 4.9M


def profile_settings(path: Path, name: str) -> list[str]:
    """The -S settings of the `dvc exp run -n <name>` command in a doc's code block (continued lines joined)."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    (command,) = [line for line in text.splitlines() if line.startswith(f"dvc exp run -n {name} ")]
    words = shlex.split(command)
    return [words[i + 1] for i, word in enumerate(words) if word == "-S"]


def trainable_parameters(settings: list[str], method: str) -> int:
    """The method's trainable parameters on FLAN-T5-XL, with params.yaml under the settings."""
    params = load_params(ROOT / "params.yaml", settings)
    knobs = params.peft[method]
    if getattr(knobs, "init", None) == "text":  # the init reads the hub's tokenizer; it sets values, not sizes
        knobs = dataclasses.replace(knobs, init="random")
    config = methods.get(method).peft_config(knobs, Seq2SeqBackbone, (params.model.name_or_path, {}))
    with torch.device("meta"):
        model = get_peft_model(T5ForConditionalGeneration(build_t5_config(SHAPES["full"])), config)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_every_doc_gives_the_same_flan_t5_xl_profile():
    settings = [profile_settings(ROOT / doc, "flan-t5-xl") for doc in PROFILE_DOCS]
    assert settings[0] == settings[1], "README.md and docs/gpu.md give different FLAN-T5-XL profiles"
    assert "model.name_or_path=google/flan-t5-xl" in settings[0]


@pytest.mark.parametrize("method", list(REFERENCE_TRAINABLE))
def test_the_flan_t5_xl_profile_trains_the_reference_s_parameter_count(method):
    settings = profile_settings(ROOT / "README.md", "flan-t5-xl")
    assert trainable_parameters(settings, method) == REFERENCE_TRAINABLE[method]


def test_the_prefix_projection_params_yaml_sets_would_train_ten_times_the_reference_s_prefix():
    """The control: without the profile's prefix_projection=false, params.yaml's MLP reparametrisation is inherited
    (2048 -> 512 -> 24 x 2 x 2048 over a 50 x 2048 embedding)."""
    settings = [s for s in profile_settings(ROOT / "README.md", "flan-t5-xl")
                if not re.match(r"peft\.prefix_tuning\.prefix_projection=", s)]
    assert trainable_parameters(settings, "prefix_tuning") == 51_581_440
