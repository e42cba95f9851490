"""Loading a backbone: `load_model` picks the family (backbone_class), checks a saved adapter folder's peftqa.json,
loads the weights and the tokenizer, attaches the method's adapter and picks the device. The method comes as its
registry entry (peftqa.methods.attach.load_backbone looks it up by name), or None for the model as it is."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from peftqa.errors import PeftqaError, corrupted, reading, require
from peftqa.families.backbone import BACKBONES, METADATA_FILE, Backbone, MethodEntry, detect_family, restore_fix
from peftqa.families.resolve import ResolvedModel, _from_pretrained, resolve_model
from peftqa.files import sha256_file
from peftqa.params import ModelParams


def _check_metadata(folder: Path, expected: dict[str, object]) -> None:
    """Refuse a folder trained for another method, model or label set: its scores would silently mean something else.
    Then the weight files' sha256 against those recorded at save: a flipped byte passes safetensors' own checks."""
    path = folder / METADATA_FILE
    if not path.is_file():
        raise PeftqaError(f"{folder}: no {METADATA_FILE}, so not a saved peftqa adapter; run the train stage first")
    held = json.loads(path.read_text(encoding="utf-8"))
    for field, wanted in expected.items():
        if held.get(field) != wanted:
            raise PeftqaError(f"{folder}: {METADATA_FILE} field '{field}' holds {held.get(field)!r} but params ask "
                              f"for {wanted!r}; retrain it (dvc repro) or fix params.yaml")
    check_digests(folder, held.get("sha256", {}), str(expected["method"]))


def check_digests(folder: Path, digests: dict[str, str], method: str) -> None:
    """Each weight file of the folder against the sha256 that peftqa.json recorded for it when it was saved."""
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file():
            raise PeftqaError(f"{path}: missing, though {METADATA_FILE} lists it; {restore_fix(folder, method)}")
        found = sha256_file(path)
        if found != digest:
            raise corrupted(path, f"its sha256 {found[:12]}… is not the {digest[:12]}… that {METADATA_FILE} recorded "
                                  "when it was saved", restore_fix(folder, method))


def _attach_adapter(model: torch.nn.Module, peft_config: PeftConfig | None, adapter_dir: Path | None, *,
                    entry: MethodEntry, model_name: str, knobs: object = None, family: type[Backbone] | None = None
                    ) -> torch.nn.Module:
    """Wrap the model with peft: the saved adapter for evaluation, a fresh one for training; as is without adapter.
    A native method (no peft config) attaches or loads its own."""
    method = entry.name
    if entry.refuse is not None:
        entry.refuse(model, knobs, family)
    native = entry.native
    if native is not None:
        if adapter_dir is None:
            return native.attach(model, knobs, family)
        with reading(adapter_dir / f"{method}.safetensors", restore_fix(adapter_dir, method)):
            return native.load(model, adapter_dir, knobs, family)
    if peft_config is None:
        return model
    if adapter_dir is not None:
        with reading(adapter_dir / "adapter_model.safetensors", restore_fix(adapter_dir, method)):
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    check_target_modules(peft_config, model, method=method, model_name=model_name)
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        raise PeftqaError(f"peft.{method}: peft rejects this config for model '{model_name}': {err}") from None


def _load_tokenizer(model_path: str, **kwargs) -> PreTrainedTokenizerBase:
    """The model's tokenizer; causal LMs often lack a pad token, and EOS is the usual stand-in."""
    tokenizer = _from_pretrained(AutoTokenizer, model_path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def backbone_class(family: str, source: ResolvedModel) -> type[Backbone]:
    """The Backbone subclass of model.family; auto asks each registered family whether the model's config is theirs."""
    require(family == "auto" or family in BACKBONES, "model.family", family, f"choose auto or one of {list(BACKBONES)}")
    if family == "auto":
        model_path, model_kwargs = source
        family = detect_family(_from_pretrained(AutoConfig, model_path, **model_kwargs))
    return BACKBONES[family]


def load_model(model_params: ModelParams, entry: MethodEntry | None, knobs: object, labels: tuple[str, ...], *,
               seed: int, device: str = "auto", gradient_checkpointing: bool = False,
               adapter_dir: Path | None = None) -> Backbone:
    """A backbone to train (adapter_dir None: fresh adapter and head seeded with `seed`, train mode, base weights
    frozen unless the method trains the whole model) or to evaluate (adapter_dir: the saved weights, eval mode,
    nothing trainable). `entry` None: the model as it is, nothing attached or trained (stage embed's encoder)."""
    source = resolve_model(model_params.name_or_path)  # (what from_pretrained gets, gguf_file= for a GGUF model)
    model_path, model_kwargs = source
    family = backbone_class(model_params.family, source)
    method = entry.name if entry is not None else None
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        _check_metadata(adapter_dir, {"method": method, "family": family.family, "model": model_params.name_or_path,
                                      "labels": list(labels)})
    peft_config = None if entry is None else entry.peft_config(knobs, family, source,
                                                               gradient_checkpointing=gradient_checkpointing)
    whole_model = adapter_dir is not None and entry is not None and entry.whole_model  # saved whole, as safetensors
    weights_path, weights_kwargs = (str(adapter_dir), {}) if whole_model else source
    dtype = torch.bfloat16 if model_params.dtype == "bfloat16" else torch.float32  # auto: the loop autocasts on CUDA
    model = _from_pretrained(family.auto_class, weights_path, dtype=dtype, **weights_kwargs)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(seed)  # the adapter's and the head's initial weights
    if entry is not None:
        model = _attach_adapter(model, peft_config, adapter_dir, entry=entry, model_name=model_params.name_or_path,
                                knobs=knobs, family=family)
    backbone = family(model, _load_tokenizer(model_path, **model_kwargs), method=method, labels=tuple(labels),
                      knobs=knobs, entry=entry, model_params=model_params, device=_pick_device(device), source=source)
    if adapter_dir is None:
        backbone.prepare_for_training()
    else:
        backbone.prepare_for_evaluation(adapter_dir)
    return backbone


def matches_target(module_name: str, target: str) -> bool:
    """peft's rule for a target_modules entry: the module's whole name, or its last dotted names."""
    return module_name == target or module_name.endswith(f".{target}")


def check_target_modules(peft_config: PeftConfig | None, model: torch.nn.Module, *, method: str,
                         model_name: str) -> None:
    """Fail on a target module the model lacks; peft only fails when *none* match, silently skipping the rest."""
    targets = getattr(peft_config, "target_modules", None) or ()
    module_names = [name for name, _ in model.named_modules()]
    for target in sorted(targets):
        if not any(matches_target(name, target) for name in module_names):
            leaves = {name.rsplit(".", 1)[-1] for name in module_names}
            examples = sorted(leaf for leaf in leaves if leaf and not leaf.isdigit())[:12]  # indices say nothing
            raise PeftqaError(f"peft.{method}.target_modules: module '{target}' does not exist in model "
                              f"'{model_name}'. Fix that params key; this model's layer names include {examples}.")
