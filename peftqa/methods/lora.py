"""Method lora: low-rank updates on the target layers (peft's LoraConfig)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from peftqa.errors import require
from peftqa.methods.knobs import TrainedKnobs
from peftqa.methods.registry import Family, Method, ResolvedModel, register

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig


@dataclass(frozen=True)
class LoraParams(TrainedKnobs):
    lr: float = 5e-4
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ()  # () = the family's query and value projections
    use_rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r) instead of alpha / r (Kalajdzievski 2023)
    lr_ratio_b: float = 1.0  # LoRA+ (Hayou et al. 2024): B's learning rate over A's; 1 = plain LoRA, the paper: 16
    # default: peft's (A Kaiming-uniform, B zero); gaussian: A normal, B zero; pissa (Meng et al. 2024): A and B from
    # the target weight's top-r singular vectors, the weight replaced by its residual (see INIT_LORA_WEIGHTS)
    init: Literal["default", "gaussian", "pissa"] = "default"
    at_least_one: ClassVar[tuple[str, ...]] = ("r",)  # the rank

    def __post_init__(self):
        super().__post_init__()
        require(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        require(self.lr_ratio_b > 0, "lr_ratio_b", self.lr_ratio_b, "must be > 0")


# peft's init_lora_weights per `init`. "pissa" is the exact SVD, so it is deterministic: a resumed training attaches
# the same start again, and `PeftModel.from_pretrained` of a saved adapter (its config keeps "pissa") recomputes the
# same residual weights before loading the trained A and B, which reproduces the trained model's scores exactly.
INIT_LORA_WEIGHTS: dict[str, bool | str] = {"default": True, "gaussian": "gaussian", "pissa": "pissa"}


def build_lora(knobs: LoraParams, family: Family, model: ResolvedModel) -> PeftConfig:
    """Low-rank updates on the target layers (the family's query and value projections unless params name others)."""
    from peft import LoraConfig

    return LoraConfig(task_type=family.task_type, r=knobs.r, lora_alpha=knobs.alpha, lora_dropout=knobs.dropout,
                      target_modules=list(knobs.target_modules or family.query_value_layers),
                      use_rslora=knobs.use_rslora, init_lora_weights=INIT_LORA_WEIGHTS[knobs.init])


def lora_plus_groups(named: list[tuple[str, torch.nn.Parameter]], knobs: LoraParams, lr: float) -> list[dict]:
    """The adapter's AdamW groups: LoRA's B matrices at lr x lr_ratio_b, the rest at lr (one group when the ratio
    is 1, so plain LoRA's optimizer is what it always was)."""
    if knobs.lr_ratio_b == 1:
        return [{"params": [p for _, p in named], "lr": lr}]
    b = [p for name, p in named if ".lora_B." in name]
    return [{"params": [p for name, p in named if ".lora_B." not in name], "lr": lr},
            {"params": b, "lr": lr * knobs.lr_ratio_b}]


register(Method("lora", LoraParams, build_lora, paper="Hu et al. 2021", optimizer_groups=lora_plus_groups))
