"""The knobs every trained method shares: the bases of the methods' knobs dataclasses.

Each method's knobs are the defaults and checks of its params.yaml section; their keys are named within the section
(params adds "peft.<name>.").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftqa.errors import require

MAX_LR = 10.0  # the largest learning rate a method's section accepts


@dataclass(frozen=True)
class TrainedKnobs:
    """What every trained method has: its learning rate, and the encoder head's own."""
    lr: float = 1e-3
    head_lr: float = 1e-3  # encoder family: the classification head's own learning rate (parameter group)
    at_least_one: ClassVar[tuple[str, ...]] = ()  # the sizes among the knobs: each must be >= 1

    def __post_init__(self):
        # up to 10: soft prompts train at rates of 0.3 and more (Lester et al.); beyond is a typo
        require(0 < self.lr <= MAX_LR, "lr", self.lr, f"learning rate must be in (0, {MAX_LR:g}]")
        require(0 < self.head_lr < 1, "head_lr", self.head_lr, "learning rate must be in (0, 1)")
        for key in self.at_least_one:
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")


@dataclass(frozen=True)
class VirtualTokenKnobs(TrainedKnobs):
    """What the prompt-learning methods share: how many virtual tokens they learn."""
    num_virtual_tokens: int = 20
    at_least_one: ClassVar[tuple[str, ...]] = ("num_virtual_tokens",)
