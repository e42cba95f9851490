"""Method bitfit: only the biases train (Ben Zaken et al. 2022), and the encoder's head; no peft config.

Every parameter whose name ends in `bias` trains, the rest of the model stays frozen. A model without biases (T5,
Llama, SmolLM2) has nothing to train, so it is refused when the model is built, naming the family. The adapter folder
holds `bitfit.safetensors`: the trained biases, by parameter name.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from peftqa.errors import PeftqaError
from peftqa.methods.registry import Family, Method, Native, register
from peftqa.methods.shared import build_no_adapter
from peftqa.params.knobs import BitfitParams

if TYPE_CHECKING:
    import torch

WEIGHTS = "bitfit.safetensors"


def bias_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters() if name.endswith("bias")]


def refuse(model: torch.nn.Module, knobs: BitfitParams, family: Family) -> None:
    """The registry's check before attach: a model without biases would train nothing."""
    if not bias_names(model):
        raise PeftqaError(f"bitfit cannot serve this {family.family} model ({type(model).__name__}): it has no bias "
                          "parameters (T5 and Llama-style models have none), so bitfit would train nothing; drop "
                          "bitfit from methods for this model")


def attach(model: torch.nn.Module, knobs: BitfitParams, family: Family) -> torch.nn.Module:
    trained = set(bias_names(model))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trained)
    return model


def save(model: torch.nn.Module, folder: Path, knobs: BitfitParams, family: Family) -> None:
    from safetensors.torch import save_file

    parameters = dict(model.named_parameters())
    save_file({name: parameters[name].detach().contiguous() for name in bias_names(model)},
              str(folder / WEIGHTS))


def load(model: torch.nn.Module, folder: Path, knobs: BitfitParams, family: Family) -> torch.nn.Module:
    from safetensors.torch import load_file

    path = folder / WEIGHTS
    if not path.is_file():
        raise PeftqaError(f"{folder}: no {WEIGHTS}, so not a saved bitfit adapter; run the train stage first")
    weights, names = load_file(str(path)), bias_names(model)
    if sorted(weights) != sorted(names):
        raise PeftqaError(f"{path}: its biases do not match this model's; retrain it (dvc repro)")
    model.load_state_dict(weights, strict=False)
    return model


register(Method("bitfit", BitfitParams, build_no_adapter, paper="Ben Zaken et al. 2022",
                native=Native(attach, save, load), refuse=refuse,
                note="bitfit: only the biases (and, for the encoder, the head, started from the probe) trained"))
