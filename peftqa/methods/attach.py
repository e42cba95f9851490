"""A backbone with a method attached, by the method's name: the method's registry entry (which imports its module)
handed to the families' loader, which never imports the methods itself."""
from __future__ import annotations

from pathlib import Path

from peftqa.families.backbone import Backbone
from peftqa.families.load import load_model
from peftqa.methods.registry import get
from peftqa.params import ModelParams, PeftParams


def load_backbone(model_params: ModelParams, method: str, peft_params: PeftParams, labels: tuple[str, ...], *,
                  seed: int, device: str = "auto", gradient_checkpointing: bool = False,
                  adapter_dir: Path | None = None) -> Backbone:
    """Method `method` on params' model, to train (adapter_dir None: a fresh adapter seeded with `seed`) or to
    evaluate (adapter_dir: the saved one); its knobs are params' peft.<method> section."""
    return load_model(model_params, get(method), peft_params[method], labels, seed=seed, device=device,
                      gradient_checkpointing=gradient_checkpointing, adapter_dir=adapter_dir)
