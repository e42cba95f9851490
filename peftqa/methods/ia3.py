"""Method ia3: learned rescaling vectors on the target layers (peft's IA3Config)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.errors import PeftqaError
from peftqa.methods.registry import Family, Method, register
from peftqa.params.knobs import Ia3Params

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_ia3(knobs: Ia3Params, family: Family, model: ResolvedModel) -> PeftConfig:
    """Learned rescaling vectors; feed-forward modules are scaled on their input, the others on their output."""
    from peft import IA3Config

    targets = knobs.target_modules or (*family.key_value_layers, *family.feedforward_layers)
    feedforward = knobs.feedforward_modules or family.feedforward_layers
    extra = sorted(set(feedforward) - set(targets))
    if extra:
        raise PeftqaError(f"peft.ia3.feedforward_modules: {extra} (the {family.family} family's default) are not in "
                          f"peft.ia3.target_modules {list(targets)}; list the feed-forward ones of those in "
                          "peft.ia3.feedforward_modules")
    return IA3Config(task_type=family.task_type, target_modules=list(targets), feedforward_modules=list(feedforward))


register(Method("ia3", Ia3Params, build_ia3, paper="Liu et al. 2022 (IA3)"))
