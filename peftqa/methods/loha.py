"""Method loha: low-rank Hadamard-product updates (Hyeon-Woo et al. 2022, FedPara; LyCORIS's LoHa), peft's
LoHaConfig. peft's LoHa wraps only torch Linear and Conv layers, so GPT-2's Conv1D layers are refused by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from peftqa.errors import PeftqaError, require
from peftqa.methods.knobs import TrainedKnobs
from peftqa.methods.registry import Family, Method, ResolvedModel, matches_target, register

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig


@dataclass(frozen=True)
class LohaParams(TrainedKnobs):
    lr: float = 5e-4
    r: int = 8  # the rank of each of the two factor pairs whose Hadamard product is the update
    alpha: int = 8  # the update is scaled by alpha / r
    rank_dropout: float = 0.0  # dropout over the rank dimension while training
    module_dropout: float = 0.0  # the probability of switching the whole update off for a step
    target_modules: tuple[str, ...] = ()  # () = the family's query and value projections
    at_least_one: ClassVar[tuple[str, ...]] = ("r",)

    def __post_init__(self):
        super().__post_init__()
        require(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        for key in ("rank_dropout", "module_dropout"):
            require(0 <= getattr(self, key) < 1, key, getattr(self, key), "must be in [0, 1)")


def build_loha(knobs: LohaParams, family: Family, model: ResolvedModel) -> PeftConfig:
    from peft import LoHaConfig

    return LoHaConfig(task_type=family.task_type, r=knobs.r, alpha=knobs.alpha, rank_dropout=knobs.rank_dropout,
                      module_dropout=knobs.module_dropout,
                      target_modules=list(knobs.target_modules or family.query_value_layers))


def refuse_conv1d(method: str):
    """A `Method.refuse` check: peft's LyCORIS methods (LoHa, LoKr) cannot wrap transformers' Conv1D (GPT-2's
    attention and MLP layers), and peft says so only deep inside get_peft_model."""
    def refuse(model: torch.nn.Module, knobs: object, family: Family) -> None:
        from transformers.pytorch_utils import Conv1D

        targets = tuple(knobs.target_modules or family.query_value_layers)
        hit = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, Conv1D)
                      and any(matches_target(name, t) for t in targets)})
        if hit:
            raise PeftqaError(f"{method} cannot serve this {family.family} model ({type(model).__name__}): its target "
                              f"layers {hit} are GPT-2-style Conv1D layers, which peft's {method} cannot wrap; use "
                              f"lora, dora, ia3 or vera for this model, or drop {method} from methods")
    return refuse


register(Method("loha", LohaParams, build_loha, paper="Hyeon-Woo et al. 2022 (FedPara)", refuse=refuse_conv1d("loha")))
