"""Method bottleneck: the bottleneck adapters of Houlsby et al. 2019 and Pfeiffer et al. 2020, written here.

In every layer a small module adds down-projection -> non-linearity -> up-projection of a sublayer's output to that
output (a residual); only these modules (and the encoder's head) train. `placement: houlsby` inserts one after the
attention output projection and one after the feed-forward output projection; `pfeiffer` only the latter. Each family
names those projections by their exact module paths (Backbone.attention_output_layers, feedforward_output_layers):
BERT's `output.dense` is also the end of `attention.output.dense`, so a suffix match would turn pfeiffer into
houlsby. The up-projection starts at 0, so an untrained adapter is the identity and the start is the base model.

No library compatible with transformers 5 has these (AdapterHub's `adapters` pins transformers 4.57; peft has no
bottleneck tuner), so this is not a peft config: the method's `native` hooks attach, save and load it. The adapter
folder holds `bottleneck.safetensors` (the adapters' weights, by module path) and `bottleneck.json` (placement,
reduction factor, non-linearity and the paths adapted); `PeftModel.from_pretrained` cannot load it, peftqa's own
loaders (evaluate, `peftqa predict`, the logged pyfunc) do.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from peftqa.errors import PeftqaError
from peftqa.files import write_json_atomic
from peftqa.methods.registry import Family, Method, Native, register
from peftqa.methods.shared import build_no_adapter
from peftqa.params.knobs import BottleneckParams

if TYPE_CHECKING:
    import torch

WEIGHTS, CONFIG = "bottleneck.safetensors", "bottleneck.json"


def adapted_paths(model: torch.nn.Module, knobs: BottleneckParams, family: Family) -> list[str]:
    """The module paths that get an adapter: each family's exact attention- and feed-forward-output paths."""
    patterns = family.feedforward_output_layers + (family.attention_output_layers if knobs.placement == "houlsby"
                                                   else ())
    paths = [name for name, _ in model.named_modules() if any(re.fullmatch(p, name) for p in patterns)]
    if not paths:
        raise PeftqaError(f"peft.bottleneck: no module of this model matches the {family.family} family's "
                          f"adapter sites {list(patterns)}; bottleneck adapters need a model of that layout")
    return paths


def output_width(module: torch.nn.Module) -> int:
    """The width of a projection's output: nn.Linear's out_features, GPT-2 Conv1D's nf."""
    width = getattr(module, "out_features", None) or getattr(module, "nf", None)
    if width is None:
        raise PeftqaError(f"peft.bottleneck: cannot tell the output width of a {type(module).__name__}")
    return int(width)


def make_adapter(width: int, knobs: BottleneckParams) -> torch.nn.Module:
    """down (width -> width / reduction_factor), the non-linearity, up (back to width) starting at 0."""
    import torch

    hidden = max(1, width // knobs.reduction_factor)
    activation = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}
    adapter = torch.nn.Sequential(torch.nn.Linear(width, hidden), activation[knobs.non_linearity](),
                                  torch.nn.Linear(hidden, width))
    torch.nn.init.zeros_(adapter[2].weight)
    torch.nn.init.zeros_(adapter[2].bias)
    return adapter


def _add_residual(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.bottleneck(output)


def attach(model: torch.nn.Module, knobs: BottleneckParams, family: Family) -> torch.nn.Module:
    """Freeze the model and add a fresh adapter after each adapted projection (seeded by the caller)."""
    model.requires_grad_(False)
    for path in adapted_paths(model, knobs, family):
        module = model.get_submodule(path)
        module.add_module("bottleneck", make_adapter(output_width(module), knobs))
        module.register_forward_hook(_add_residual)
    return model


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in model.state_dict().items() if ".bottleneck." in name}


def save(model: torch.nn.Module, folder: Path, knobs: BottleneckParams, family: Family) -> None:
    from safetensors.torch import save_file

    save_file({name: tensor.contiguous() for name, tensor in adapter_state(model).items()}, str(folder / WEIGHTS))
    write_json_atomic(folder / CONFIG, {"placement": knobs.placement, "reduction_factor": knobs.reduction_factor,
                                        "non_linearity": knobs.non_linearity,
                                        "paths": adapted_paths(model, knobs, family)})  # their own paths stay


def load(model: torch.nn.Module, folder: Path, knobs: BottleneckParams, family: Family) -> torch.nn.Module:
    """Attach adapters as `knobs` say, after checking the folder was saved with the same ones, and load them."""
    from safetensors.torch import load_file

    config_path = folder / CONFIG
    if not config_path.is_file():
        raise PeftqaError(f"{folder}: no {CONFIG}, so not a saved bottleneck adapter; run the train stage first")
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("placement", "reduction_factor", "non_linearity"):
        if saved.get(key) != getattr(knobs, key):
            raise PeftqaError(f"{config_path}: field '{key}' holds {saved.get(key)!r} but params ask for "
                              f"peft.bottleneck.{key} = {getattr(knobs, key)!r}; retrain it (dvc repro) or fix "
                              "params.yaml")
    attach(model, knobs, family)
    weights = load_file(str(folder / WEIGHTS))
    missing = sorted(set(adapter_state(model)) ^ set(weights))
    if missing:
        raise PeftqaError(f"{folder / WEIGHTS}: its tensors do not match this model's adapters (e.g. {missing[0]}); "
                          "retrain it (dvc repro)")
    model.load_state_dict(weights, strict=False)
    return model


register(Method("bottleneck", BottleneckParams, build_no_adapter, paper="Houlsby et al. 2019; Pfeiffer et al. 2020",
                native=Native(attach, save, load),
                note="bottleneck adapters (Houlsby/Pfeiffer): base weights frozen, only the adapters (and, for the "
                     "encoder, the head, started from the probe) trained"))
