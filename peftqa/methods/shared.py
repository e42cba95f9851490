"""What more than one method builds on, kept apart from each method's own module so that dvc.yaml's train@<name>
lists <name>'s module and these shared ones only: `Family`, what every builder reads of a backbone family; LoRA's
config (lora, and dora with use_dora); LoRA+'s optimizer groups (lora, dora); the LyCORIS methods' Conv1D refusal
(loha, lokr); and the builder of the methods that are no peft adapter (base, full_finetune, bitfit, bottleneck)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from peftqa.errors import PeftqaError

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig, TaskType

    from peftqa.families.resolve import ResolvedModel
    from peftqa.params.knobs import LoraParams


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


# peft's init_lora_weights per `init`. "pissa" is the exact SVD, so it is deterministic: a resumed training attaches
# the same start again, and `PeftModel.from_pretrained` of a saved adapter (its config keeps "pissa") recomputes the
# same residual weights before loading the trained A and B, which reproduces the trained model's scores exactly.
INIT_LORA_WEIGHTS: dict[str, bool | str] = {"default": True, "gaussian": "gaussian", "pissa": "pissa"}


def lora_config(knobs: LoraParams, family: Family, *, use_dora: bool = False) -> LoraConfig:
    """Low-rank updates on the target layers (the family's query and value projections unless params name others)."""
    from peft import LoraConfig

    return LoraConfig(task_type=family.task_type, r=knobs.r, lora_alpha=knobs.alpha, lora_dropout=knobs.dropout,
                      target_modules=list(knobs.target_modules or family.query_value_layers),
                      use_rslora=knobs.use_rslora, init_lora_weights=INIT_LORA_WEIGHTS[knobs.init], use_dora=use_dora)


def lora_plus_groups(named: list[tuple[str, torch.nn.Parameter]], knobs: LoraParams, lr: float) -> list[dict]:
    """The adapter's AdamW groups: LoRA's B matrices at lr x lr_ratio_b, the rest at lr (one group when the ratio
    is 1, so plain LoRA's optimizer is what it always was)."""
    if knobs.lr_ratio_b == 1:
        return [{"params": [p for _, p in named], "lr": lr}]
    b = [p for name, p in named if ".lora_B." in name]
    return [{"params": [p for name, p in named if ".lora_B." not in name], "lr": lr},
            {"params": b, "lr": lr * knobs.lr_ratio_b}]


def refuse_conv1d(method: str):
    """A `Method.refuse` check: peft's LyCORIS methods (LoHa, LoKr) cannot wrap transformers' Conv1D (GPT-2's
    attention and MLP layers), and peft says so only deep inside get_peft_model."""
    def refuse(model: torch.nn.Module, knobs: object, family: Family) -> None:
        from transformers.pytorch_utils import Conv1D

        from peftqa.families.load import matches_target

        targets = tuple(knobs.target_modules or family.query_value_layers)
        hit = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, Conv1D)
                      and any(matches_target(name, t) for t in targets)})
        if hit:
            raise PeftqaError(f"{method} cannot serve this {family.family} model ({type(model).__name__}): its target "
                              f"layers {hit} are GPT-2-style Conv1D layers, which peft's {method} cannot wrap; use "
                              f"lora, dora, ia3 or vera for this model, or drop {method} from methods")
    return refuse


def build_no_adapter(knobs: object, family: Family, model: ResolvedModel) -> None:
    """base, full_finetune, bitfit and bottleneck build no peft config: the backbone is frozen, trained whole, or
    given an adapter written here (the method's `native` hooks)."""
    return None
