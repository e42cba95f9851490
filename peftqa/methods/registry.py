"""The method registry: one `Method` entry per PEFT method, the checks every method shares, and `build_peft_config`.

An entry's name is used everywhere: the params key (peft.<name>), the dvc.yaml foreach item, the models/<name>/
folder, the MLflow run name and the report's row. Its knobs are a frozen dataclass, the defaults and checks of its
params.yaml section. Its builder turns the knobs into the `peft` config for one backbone family, or None for the
two methods that are not adapters. What else differs by method is a property of the entry (`frozen`,
`whole_model`, `gradient_checkpointing`), so no other module branches on a method's name.

`register` adds an entry. METHODS is a live view of the registered names: a method registered at run time (a
plug-in, a test) is known to the params checks, the stages' command lines and the report alike.
A builder sees a family only through `Family`, the few class attributes it reads, so this package never imports
peftqa.families (which imports it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from peftqa.errors import ParamsError, PeftqaError

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig, TaskType

ResolvedModel = tuple[str, dict[str, str]]  # what from_pretrained gets, and its extra kwargs (gguf_file=)


class Family(Protocol):
    """What a builder reads of a backbone family: class attributes of a peftqa.families Backbone subclass."""

    family: str  # the name params use (model.family)
    task_type: TaskType  # what peft wraps the model as
    query_value_layers: tuple[str, ...]  # attention query and value projections: LoRA's default targets
    key_value_layers: tuple[str, ...]  # attention key and value projections: with the next, IA3's default targets
    feedforward_layers: tuple[str, ...]  # feed-forward output layers (IA3 scales their input)
    attention_output_layers: tuple[str, ...]  # exact module paths (regexes, whole name) of attention output projections
    feedforward_output_layers: tuple[str, ...]  # ... and of feed-forward output projections (bottleneck adapters)
    layer_norm_layers: tuple[str, ...]  # the layer norms' names: LN tuning's default targets


Builder = Callable[[Any, Family, ResolvedModel], "PeftConfig | None"]  # (knobs, family, model) -> config


@dataclass(frozen=True)
class Native:
    """A method written here rather than a peft config (its builder returns None): how it joins a fresh model (seeded
    by the caller; it freezes what does not train), how its weights are saved into the adapter folder, and how a
    saved folder is attached and loaded again. Each gets the method's knobs and the family."""
    attach: Callable[[torch.nn.Module, Any, Family], torch.nn.Module]
    save: Callable[[torch.nn.Module, Path, Any, Family], None]
    load: Callable[[torch.nn.Module, Path, Any, Family], torch.nn.Module]


@dataclass(frozen=True)
class Method:
    name: str
    knobs: type  # frozen dataclass: the peft.<name> section of params.yaml, every field with a default
    build: Builder
    paper: str = ""  # where the method comes from, as the docs' methods table cites it
    note: str = ""  # what is trained, for train_summary.json and the report ("" = an adapter on a frozen model)
    note_without_head: str = ""  # the note for a family without a classification head, where it differs
    frozen: bool = False  # nothing of the backbone trains: at most the encoder's head (a linear probe)
    whole_model: bool = False  # every weight trains, so the whole model is saved, not an adapter
    gradient_checkpointing: bool = True  # whether it can train under train.gradient_checkpointing
    native: Native | None = None  # a method written here, not a peft config: its attach, save and load
    # the adapter's AdamW groups from its (name, parameter) pairs, the knobs and lr; None: one group at lr
    optimizer_groups: Callable[[list[tuple[str, torch.nn.Parameter]], Any, float], list[dict]] | None = None
    # raises PeftqaError, naming the family and the reason, for a model the method cannot serve (model, knobs, family)
    refuse: Callable[[torch.nn.Module, Any, Family], None] | None = None

    def describe(self, has_head: bool) -> str:
        if not has_head and self.note_without_head:
            return self.note_without_head
        return self.note or (f"{self.name}: base weights frozen, only the adapter (and, for the encoder, the head, "
                             "started from the probe) trained")


REGISTRY: dict[str, Method] = {}
METHODS = REGISTRY.keys()  # a live view, in registration order


def register(method: Method) -> Method:
    """Add a method under its name; a name is registered once."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise PeftqaError(f"unknown method {name!r}; choose one of {list(METHODS)}")
    return REGISTRY[name]


# -----------------------------------------------------------------------------


def check_gradient_checkpointing(name: str, gradient_checkpointing: bool) -> None:
    if gradient_checkpointing and not get(name).gradient_checkpointing:
        raise ParamsError(f"train.gradient_checkpointing: true cannot be combined with {name}: peft passes its "
                          "virtual tokens as a key/value cache, which gradient checkpointing disables. Set "
                          f"train.gradient_checkpointing: false or drop {name} from methods.")


def build_peft_config(name: str, knobs: object, family: Family, model: ResolvedModel, *,
                      gradient_checkpointing: bool = False) -> PeftConfig | None:
    """The peft config of method `name` on `family`, after the checks peft itself would only fail late or obscurely."""
    check_gradient_checkpointing(name, gradient_checkpointing)
    return get(name).build(knobs, family, model)


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
