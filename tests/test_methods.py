"""The methods' own mechanics, beyond what every method shares (test_families, test_learning): where bottleneck
adapters go in each family, that they start as the identity, that a saved folder is refused when params ask for
other adapters, that bitfit trains exactly the biases (and is refused without any), and prompt tuning's
sample_vocab init; LLaMA-Adapter's layer count and the Conv1D refusal of LoHa and LoKr; LoRA's PiSSA init."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from peftqa.errors import PeftqaError
from peftqa.families import BACKBONES
from peftqa.methods import bitfit, bottleneck
from peftqa.methods.bottleneck import BottleneckParams

from tiny_models import make_tiny_model

# tiny model kind: (family, auto class, layers that get a feed-forward adapter, and an attention one too)
KINDS = {"bert": ("encoder", AutoModel, 2, 2), "t5": ("seq2seq", AutoModelForSeq2SeqLM, 4, 4),
         "gpt2": ("causal", AutoModelForCausalLM, 2, 2), "llama": ("causal", AutoModelForCausalLM, 2, 2)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_bottleneck")
    return {kind: make_tiny_model(family, root / kind, kind) for kind, (family, *_) in KINDS.items()}


def fresh(tiny: dict[str, Path], kind: str) -> torch.nn.Module:
    return KINDS[kind][1].from_pretrained(tiny[kind]).eval()


def adapters(model: torch.nn.Module) -> list[str]:
    return [name.removesuffix(".bottleneck") for name, _ in model.named_modules() if name.endswith(".bottleneck")]


@pytest.mark.parametrize("kind", KINDS)
def test_each_placement_adapts_the_family_s_exact_projections(tiny, kind):
    family, _, feedforward, attention = KINDS[kind]
    family_class = BACKBONES[family]
    pfeiffer = adapters(bottleneck.attach(fresh(tiny, kind), BottleneckParams(placement="pfeiffer"), family_class))
    houlsby = adapters(bottleneck.attach(fresh(tiny, kind), BottleneckParams(placement="houlsby"), family_class))
    assert len(pfeiffer) == feedforward and len(houlsby) == feedforward + attention
    assert set(pfeiffer) < set(houlsby)
    # the negative control: matching the feed-forward projection by its last names, as a suffix, also catches the
    # attention output in BERT (attention.output.dense ends with output.dense), so pfeiffer would become houlsby
    if kind == "bert":
        suffix = [name for name, _ in fresh(tiny, kind).named_modules() if name.endswith("output.dense")]
        assert sorted(suffix) == sorted(houlsby) != sorted(pfeiffer)


@pytest.mark.parametrize("kind", KINDS)
def test_a_fresh_adapter_is_the_identity_and_its_training_changes_the_output(tiny, kind):
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8, 9]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    if KINDS[kind][0] == "seq2seq":
        inputs["decoder_input_ids"] = torch.tensor([[0, 5]])
    model = fresh(tiny, kind)
    first = lambda out: out[0]  # noqa: E731 - last hidden state or logits

    model.requires_grad_(False)  # as attach leaves it: a frozen T5 takes other kernels, which differ in the last bit
    before = first(model(**inputs)).detach()
    torch.manual_seed(0)
    bottleneck.attach(model, BottleneckParams(placement="houlsby", reduction_factor=2), BACKBONES[KINDS[kind][0]])
    torch.testing.assert_close(first(model(**inputs)), before, atol=0, rtol=0)  # up-projections start at 0
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        name for name, _ in model.named_parameters() if ".bottleneck." in name}  # only the adapters train
    for name, parameter in model.named_parameters():
        if name.endswith("bottleneck.2.weight"):
            parameter.data.normal_(0, 0.1)
    assert not torch.allclose(first(model(**inputs)), before)


def test_a_saved_adapter_is_refused_when_params_ask_for_another_one(tiny, tmp_path):
    family = BACKBONES["encoder"]
    torch.manual_seed(0)
    model = bottleneck.attach(fresh(tiny, "bert"), BottleneckParams(), family)
    bottleneck.save(model, tmp_path, BottleneckParams(), family)
    saved = json.loads((tmp_path / bottleneck.CONFIG).read_text())
    assert saved["placement"] == "pfeiffer" and len(saved["paths"]) == 2
    loaded = bottleneck.load(fresh(tiny, "bert"), tmp_path, BottleneckParams(), family)
    for (name, a), (_, b) in zip(bottleneck.adapter_state(model).items(), bottleneck.adapter_state(loaded).items()):
        assert torch.equal(a, b), name
    with pytest.raises(PeftqaError, match=re.escape("field 'placement' holds 'pfeiffer' but params ask for "
                                                    "peft.bottleneck.placement = 'houlsby'")):
        bottleneck.load(fresh(tiny, "bert"), tmp_path, BottleneckParams(placement="houlsby"), family)
    (tmp_path / bottleneck.CONFIG).unlink()
    with pytest.raises(PeftqaError, match="no bottleneck.json, so not a saved bottleneck adapter"):
        bottleneck.load(fresh(tiny, "bert"), tmp_path, BottleneckParams(), family)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("placement", "after", "choose houlsby or pfeiffer"), ("reduction_factor", 0, "must be >= 1"),
    ("non_linearity", "softplus", "choose one of"),
])
def test_bad_bottleneck_knobs_are_refused_naming_the_key(key, value, message):
    with pytest.raises(Exception, match=f"{key}.*{message}"):
        BottleneckParams(**{key: value})


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_bitfit_trains_exactly_the_biases(tiny, kind):
    model = bitfit.attach(fresh(tiny, kind), bitfit.BitfitParams(), BACKBONES[KINDS[kind][0]])
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and trained == {name for name, _ in model.named_parameters() if name.endswith("bias")}


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_bitfit_is_refused_for_a_model_without_biases(tiny, kind):
    family = KINDS[kind][0]
    with pytest.raises(PeftqaError, match=f"bitfit cannot serve this {family} model .*no bias parameters"):
        bitfit.refuse(fresh(tiny, kind), bitfit.BitfitParams(), BACKBONES[family])
    bitfit.refuse(fresh(tiny, "bert"), bitfit.BitfitParams(), BACKBONES["encoder"])  # the control: BERT has biases


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_a_sample_vocab_prompt_starts_as_rows_of_the_embedding(tiny, kind):
    """prompt_tuning init sample_vocab (peft's SAMPLE_VOCAB): every virtual token starts as some real token's
    embedding, unlike a random init."""
    from peftqa.methods.attach import load_backbone
    from peftqa.params import ModelParams, PeftParams
    from peftqa.params.knobs import PromptTuningParams

    def prompt_rows(init: str) -> tuple[torch.Tensor, torch.Tensor]:
        peft_params = PeftParams(prompt_tuning=PromptTuningParams(num_virtual_tokens=4, init=init))
        backbone = load_backbone(ModelParams(name_or_path=str(tiny[kind]), max_length=64), "prompt_tuning",
                                 peft_params, ("yes", "no"), seed=0, device="cpu")
        model = backbone.model
        return model.prompt_encoder["default"].embedding.weight, model.get_input_embeddings().weight

    def all_are_vocab_rows(rows: torch.Tensor, vocab: torch.Tensor) -> bool:
        gap = (rows[:, None, :] - vocab[None, :, :]).abs().amax(dim=-1)  # (virtual tokens, vocab): max |difference|
        return bool(gap.min(dim=1).values.max() == 0)

    assert all_are_vocab_rows(*prompt_rows("sample_vocab"))
    assert not all_are_vocab_rows(*prompt_rows("random"))  # the control: a random init is no embedding row


@pytest.mark.parametrize("ratio", [1.0, 16.0])
def test_lora_plus_gives_the_b_matrices_their_own_learning_rate(tiny, ratio):
    """peft.lora.lr_ratio_b (LoRA+): every lora_B at lr x ratio, every lora_A at lr; ratio 1 keeps one group."""
    from peftqa.methods.attach import load_backbone
    from peftqa.params import ModelParams, PeftParams
    from peftqa.params.knobs import LoraParams
    from peftqa.training.loop import parameter_groups

    backbone = load_backbone(ModelParams(name_or_path=str(tiny["bert"]), max_length=64), "lora",
                             PeftParams(lora=LoraParams(lr_ratio_b=ratio, use_rslora=True)), ("yes", "no"), seed=0,
                             device="cpu")
    names = {id(p): name for name, p in backbone.model.named_parameters()}
    groups = parameter_groups(backbone, 1e-3, 5e-2)
    rates = {names.get(id(p), "head"): group["lr"] for group in groups for p in group["params"]}
    b = [name for name in rates if ".lora_B." in name]
    a = [name for name in rates if ".lora_A." in name]
    assert a and b and all(rates[name] == 1e-3 for name in a)
    assert all(rates[name] == pytest.approx(1e-3 * ratio) for name in b)
    assert len(groups) == (2 if ratio == 1 else 3)  # the adapter's group(s) and the head's
    assert rates["head"] == 5e-2
    assert backbone.model.peft_config["default"].use_rslora  # alpha / sqrt(r)


def test_adaption_prompt_is_refused_for_more_layers_than_the_model_has(tiny):
    from peftqa.methods import adaption_prompt

    model, family = fresh(tiny, "llama"), BACKBONES["causal"]
    layers = model.config.num_hidden_layers
    adaption_prompt.refuse(model, adaption_prompt.AdaptionPromptParams(adapter_layers=layers), family)  # all: fine
    with pytest.raises(PeftqaError, match=f"adapter_layers is {layers + 1} but this model has {layers} layers"):
        adaption_prompt.refuse(model, adaption_prompt.AdaptionPromptParams(adapter_layers=layers + 1), family)


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_the_conv1d_refusal_looks_only_at_the_targeted_layers(tiny, method):
    """GPT-2's c_attn is a Conv1D, so LoHa and LoKr are refused there; Llama's projections are Linear, so not."""
    from peftqa.methods.registry import REGISTRY

    entry = REGISTRY[method]
    family = BACKBONES["causal"]
    entry.refuse(fresh(tiny, "llama"), entry.knobs(), family)
    with pytest.raises(PeftqaError, match=rf"{method} cannot serve this causal model .*\['c_attn'\].*Conv1D"):
        entry.refuse(fresh(tiny, "gpt2"), entry.knobs(target_modules=("c_attn",)), family)


def lora_backbone(tiny: dict[str, Path], kind: str, init: str, adapter_dir: Path | None = None):
    from peftqa.methods.attach import load_backbone
    from peftqa.params import ModelParams, PeftParams
    from peftqa.params.knobs import LoraParams

    knobs = LoraParams(init=init, target_modules=("c_attn",) if kind == "gpt2" else ())
    return load_backbone(ModelParams(name_or_path=str(tiny[kind]), max_length=64), "lora", PeftParams(lora=knobs),
                         ("yes", "no"), seed=0, device="cpu", adapter_dir=adapter_dir)


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


@pytest.mark.parametrize("kind", KINDS)
def test_pissa_starts_from_the_principal_singular_vectors_and_leaves_the_model_unchanged(tiny, kind):
    """lora init pissa: each target weight W becomes its residual W - B A, with A and B its top-r singular vectors,
    so the model starts where it was. The SVD is exact, so a second attach is the same (what resume relies on)."""
    original = dict(fresh(tiny, kind).named_parameters())
    for init in ("pissa", "default"):
        layers = lora_layers(lora_backbone(tiny, kind, init).model)
        assert layers
        for name, layer in layers.items():
            weight = layer.base_layer.weight
            source = original[name.removeprefix("base_model.model.") + ".weight"]
            torch.testing.assert_close(weight + layer.get_delta_weight("default"), source, atol=1e-5, rtol=0)
            # the control: only pissa replaces the weight by its residual (the default init's B is zero)
            assert torch.equal(weight, source) == (init == "default"), (init, name)
    first, second = (lora_backbone(tiny, kind, "pissa").model.state_dict() for _ in range(2))
    assert all(torch.equal(first[name], second[name]) for name in first)  # the adapter and the residual weights


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_a_trained_pissa_adapter_reloads_to_identical_scores(tiny, kind, tmp_path):
    """peft keeps init "pissa" in the saved config, so loading recomputes the residual before the trained A and B:
    the reloaded scores are the trained model's, bit for bit. The control: the same A and B over the original
    weights (the config's init set to the default) score differently."""
    from tiny_models import ITEMS

    backbone = lora_backbone(tiny, kind, "pissa")
    batch = backbone.encode([i["question"] for i in ITEMS], [i["context"] for i in ITEMS], [i["label"] for i in ITEMS])
    optimizer = torch.optim.AdamW(backbone.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        backbone.loss(batch).backward()
        optimizer.step()
    backbone.model.eval()
    expected = backbone.score(batch)
    backbone.save(tmp_path)
    reloaded = lora_backbone(tiny, kind, "pissa", adapter_dir=tmp_path)
    assert torch.equal(reloaded.score(reloaded.encode([i["question"] for i in ITEMS],
                                                       [i["context"] for i in ITEMS])), expected)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["init_lora_weights"] == "pissa"
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "init_lora_weights": True}))
    over_original = lora_backbone(tiny, kind, "default", adapter_dir=tmp_path)
    assert not torch.allclose(over_original.score(over_original.encode([i["question"] for i in ITEMS],
                                                                       [i["context"] for i in ITEMS])), expected)
