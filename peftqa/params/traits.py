"""What each backbone family is, torch-free: the traits that code outside peftqa/families/ asks about a family it
knows by name (model.family, or the family a run's train_summary.json records), instead of comparing names. Each
family's Backbone class takes its own traits from here, so the two cannot differ."""
from __future__ import annotations

from dataclasses import dataclass

from peftqa.errors import PeftqaError


@dataclass(frozen=True)
class Traits:
    has_probe: bool  # base is a linear probe solved on the frozen model's features, not the zero-shot model
    generates: bool  # reads an instruction prompt (and examples in it) and answers in words: a language model


TRAITS = {
    "encoder": Traits(has_probe=True, generates=False),
    "seq2seq": Traits(has_probe=False, generates=True),
    "causal": Traits(has_probe=False, generates=True),
}


def traits(family: str, where: str = "params") -> Traits:
    """The traits of `family`; an unknown name names where it was read."""
    if family not in TRAITS:
        raise PeftqaError(f"{where}: family '{family}' is none of {', '.join(TRAITS)}; it is stale or mistyped")
    return TRAITS[family]
