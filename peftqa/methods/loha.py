"""Method loha: low-rank Hadamard-product updates (Hyeon-Woo et al. 2022, FedPara; LyCORIS's LoHa), peft's
LoHaConfig. peft's LoHa wraps only torch Linear and Conv layers, so GPT-2's Conv1D layers are refused by name."""
from __future__ import annotations

from typing import TYPE_CHECKING

from peftqa.methods.registry import Family, Method, register
from peftqa.methods.shared import refuse_conv1d
from peftqa.params.knobs import LohaParams

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftqa.families.resolve import ResolvedModel


def build_loha(knobs: LohaParams, family: Family, model: ResolvedModel) -> PeftConfig:
    from peft import LoHaConfig

    return LoHaConfig(task_type=family.task_type, r=knobs.r, alpha=knobs.alpha, rank_dropout=knobs.rank_dropout,
                      module_dropout=knobs.module_dropout,
                      target_modules=list(knobs.target_modules or family.query_value_layers))


register(Method("loha", LohaParams, build_loha, paper="Hyeon-Woo et al. 2022 (FedPara)", refuse=refuse_conv1d("loha")))
