"""Method base: no adapter. On the encoder a linear probe (logistic regression on the frozen encoder's features);
on a language model zero-shot, the base model as it is. Its builder, build_no_adapter, serves full_finetune too."""
from __future__ import annotations

from dataclasses import dataclass

from peftqa.errors import require
from peftqa.methods.registry import Family, Method, ResolvedModel, register


@dataclass(frozen=True)
class BaseMethodParams:
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)  # the encoder's probe: inverse L2 strengths tried

    def __post_init__(self):
        require(len(self.c_grid) >= 1 and all(c > 0 for c in self.c_grid), "c_grid", self.c_grid,
                "list at least one inverse regularisation strength C > 0")


def build_no_adapter(knobs: object, family: Family, model: ResolvedModel) -> None:
    """base and full_finetune train no adapter: the backbone is either frozen or trained whole."""
    return None


register(Method("base", BaseMethodParams, build_no_adapter, frozen=True,
                note="linear probe: logistic regression solved on the frozen encoder's features, C chosen on val",
                note_without_head="zero-shot: the base model as it is, nothing trained"))
