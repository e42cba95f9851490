"""The method registry: one `Method` entry per PEFT method, its builder and what else differs by method.

An entry's name is used everywhere: the params key (peft.<name>), the dvc.yaml foreach item, the models/<name>/
folder, the MLflow run name and the report's row. Its knobs (peftqa.params.knobs) are a frozen dataclass, the
defaults and checks of its params.yaml section. Its builder turns the knobs into the `peft` config for one backbone
family, or None for the methods that are not peft adapters. What else differs by method is a property of the entry
(`frozen`, `whole_model`, `native`, `refuse`, `optimizer_groups`), so no other module branches on a method's name.

Each shipped method is a module, peftqa/methods/<name>.py, imported the first time its entry is asked for (`get`):
a stage that trains or loads one method runs that method's module and the shared ones (this registry, shared.py),
never the others, so dvc.yaml's train@<name> and evaluate@<name> depend on <name>'s module alone. `register` adds an
entry (a shipped module registers itself; a plug-in or a test registers its own, and its knobs join peftqa.params.knobs'
KNOBS, so params, the stages' command lines and the report know it). A builder sees a family only through
`Family`, the few class attributes it reads: this package imports peftqa.families only inside functions, and
peftqa.families never imports it (a backbone gets its method's entry from whoever loads it: methods.attach).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from peftqa.errors import PeftqaError
from peftqa.methods.shared import Family
from peftqa.params.knobs import BUILTIN, KNOBS, METHODS, check_gradient_checkpointing

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


Builder = Callable[[Any, Family, "ResolvedModel"], "PeftConfig | None"]  # (knobs, family, model) -> config


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
    native: Native | None = None  # a method written here, not a peft config: its attach, save and load
    # the adapter's AdamW groups from its (name, parameter) pairs, the knobs and lr; None: one group at lr
    optimizer_groups: Callable[[list[tuple[str, torch.nn.Parameter]], Any, float], list[dict]] | None = None
    # raises PeftqaError, naming the family and the reason, for a model the method cannot serve (model, knobs, family)
    refuse: Callable[[torch.nn.Module, Any, Family], None] | None = None

    def peft_config(self, knobs: object, family: Family, model: ResolvedModel, *,
                    gradient_checkpointing: bool = False) -> PeftConfig | None:
        """Its peft config on `family` (None: not an adapter, or written here), after the checks peft itself would only
        fail late or obscurely."""
        check_gradient_checkpointing(self.name, gradient_checkpointing)
        return self.build(knobs, family, model)

    def describe(self, has_head: bool) -> str:
        if not has_head and self.note_without_head:
            return self.note_without_head
        return self.note or (f"{self.name}: base weights frozen, only the adapter (and, for the encoder, the head, "
                             "started from the probe) trained")


_LOADED: dict[str, Method] = {}  # the entries registered so far, by name


def get(name: str) -> Method:
    """Method `name`'s entry; a shipped method's module is imported (and so registered) the first time."""
    if name not in _LOADED and name in BUILTIN:
        importlib.import_module(f"{__package__}.{name}")
    if name not in _LOADED:
        raise PeftqaError(f"unknown method {name!r}; choose one of {list(METHODS)}")
    return _LOADED[name]


def register(method: Method) -> Method:
    """Add a method under its name; a name is registered once (a shipped method's own module first)."""
    if method.name in BUILTIN and method.name not in _LOADED and KNOBS[method.name] is not method.knobs:
        get(method.name)  # the shipped method's own entry, which this one would shadow
    if method.name in _LOADED:
        raise ValueError(f"method {method.name!r} is already registered")
    _LOADED[method.name] = method
    KNOBS.setdefault(method.name, method.knobs)
    return method


class Registry(Mapping):
    """Every method's entry by name, in METHODS' order: reading one imports its module (get); iterating them all
    imports every shipped method. `del REGISTRY[name]` takes a plug-in back out (tests)."""

    def __getitem__(self, name: str) -> Method:
        if name not in KNOBS:
            raise KeyError(name)
        return get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(METHODS))

    def __len__(self) -> int:
        return len(KNOBS)

    def __delitem__(self, name: str) -> None:
        del _LOADED[name]
        if name not in BUILTIN:
            del KNOBS[name]


REGISTRY = Registry()
