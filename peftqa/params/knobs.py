"""Every PEFT method's settings: the defaults and checks of its peft.<name> section of params.yaml, as a frozen
dataclass, by name (KNOBS). Torch-free, and apart from the methods' builders (peftqa/methods/<name>.py): params
validates every section through this module alone, so a stage depends on a method's code only where it builds or
loads that method.

A method's knobs name their keys within the section (params adds "peft.<name>."). gradient_checkpointing says whether
the method can train under train.gradient_checkpointing (peft passes prefix tuning's and LLaMA-Adapter's tokens as a
key/value cache, which checkpointing drops).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from peftqa.errors import ParamsError, require

MAX_LR = 10.0  # the largest learning rate a method's section accepts


@dataclass(frozen=True)
class TrainedKnobs:
    """What every trained method has: its learning rate, and the encoder head's own."""
    lr: float = 1e-3
    head_lr: float = 1e-3  # encoder family: the classification head's own learning rate (parameter group)
    at_least_one: ClassVar[tuple[str, ...]] = ()  # the sizes among the knobs: each must be >= 1
    gradient_checkpointing: ClassVar[bool] = True  # whether it can train under train.gradient_checkpointing

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


@dataclass(frozen=True)
class BaseMethodParams:
    gradient_checkpointing: ClassVar[bool] = True  # nothing trains but a probe: nothing to refuse
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)  # the encoder's probe: inverse L2 strengths tried

    def __post_init__(self):
        require(len(self.c_grid) >= 1 and all(c > 0 for c in self.c_grid), "c_grid", self.c_grid,
                "list at least one inverse regularisation strength C > 0")


@dataclass(frozen=True)
class FullFinetuneParams(TrainedKnobs):
    """Every weight trains, so at a rate far below the adapters': a step that suits an adapter's few new weights
    moves a pretrained weight too far."""
    lr: float = 3e-5


@dataclass(frozen=True)
class PromptTuningParams(VirtualTokenKnobs):
    lr: float = 3e-2
    init: Literal["random", "text", "sample_vocab"] = "random"  # sample_vocab: rows of the embedding, drawn at random
    init_text: str = "Is the answer to the biomedical question yes or no?"

    def __post_init__(self):
        super().__post_init__()
        require(self.init != "text" or bool(self.init_text.strip()), "init_text", self.init_text,
                "must be non-empty when init is 'text'")


@dataclass(frozen=True)
class PrefixTuningParams(VirtualTokenKnobs):
    lr: float = 1e-2
    prefix_projection: bool = False
    projection_hidden_size: int = 512
    at_least_one: ClassVar[tuple[str, ...]] = ("num_virtual_tokens", "projection_hidden_size")
    gradient_checkpointing: ClassVar[bool] = False  # peft passes the prefix as a key/value cache


@dataclass(frozen=True)
class PTuningParams(VirtualTokenKnobs):
    lr: float = 1e-2
    encoder_hidden_size: int = 128
    at_least_one: ClassVar[tuple[str, ...]] = ("num_virtual_tokens", "encoder_hidden_size")


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


@dataclass(frozen=True)
class DoraParams(LoraParams):
    lr: float = 5e-4


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


@dataclass(frozen=True)
class LokrParams(LohaParams):
    decompose_factor: int = -1  # the Kronecker factor's size; -1 = the most square split of each dimension

    def __post_init__(self):
        super().__post_init__()

        require(self.decompose_factor == -1 or self.decompose_factor >= 1, "decompose_factor",
                self.decompose_factor, "must be -1 (automatic) or >= 1")


@dataclass(frozen=True)
class VeraParams(TrainedKnobs):
    lr: float = 5e-3
    r: int = 256  # the shared random matrices' rank: VeRA's trained count grows with it only through d (r per layer)
    dropout: float = 0.0
    d_initial: float = 0.1  # the start of the trained vector d (the other, b, starts at 0: the identity)
    projection_prng_key: int = 0  # the seed of the shared random matrices
    target_modules: tuple[str, ...] = ()  # () = the family's query and value projections
    at_least_one: ClassVar[tuple[str, ...]] = ("r",)

    def __post_init__(self):
        super().__post_init__()
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        require(self.d_initial > 0, "d_initial", self.d_initial, "must be > 0")


@dataclass(frozen=True)
class Ia3Params(TrainedKnobs):
    lr: float = 3e-3
    target_modules: tuple[str, ...] = ()  # () = the family's key, value and feed-forward output layers
    feedforward_modules: tuple[str, ...] = ()  # () = the family's feed-forward output layers

    def __post_init__(self):
        super().__post_init__()
        extra = set(self.feedforward_modules) - set(self.target_modules)
        require(not self.target_modules or not extra, "feedforward_modules", sorted(extra),
                "feed-forward modules must also be listed in target_modules")


@dataclass(frozen=True)
class LnTuningParams(TrainedKnobs):
    lr: float = 1e-3
    target_modules: tuple[str, ...] = ()  # () = the family's layer norms


@dataclass(frozen=True)
class AdaptionPromptParams(TrainedKnobs):
    lr: float = 1e-2
    adapter_len: int = 10  # learned prompt tokens per adapted layer
    adapter_layers: int = 1  # how many of the top layers get them
    at_least_one: ClassVar[tuple[str, ...]] = ("adapter_len", "adapter_layers")
    gradient_checkpointing: ClassVar[bool] = False  # its prompts join attention as a key/value cache


NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")


@dataclass(frozen=True)
class BottleneckParams(TrainedKnobs):
    lr: float = 1e-3
    placement: Literal["houlsby", "pfeiffer"] = "pfeiffer"  # houlsby: after attention and feed-forward; pfeiffer: after
    reduction_factor: int = 16  # hidden width / bottleneck width (d_model 384 -> 24)
    non_linearity: str = "relu"  # between the two projections: relu | gelu | silu | tanh

    def __post_init__(self):
        super().__post_init__()
        require(self.placement in ("houlsby", "pfeiffer"), "placement", self.placement, "choose houlsby or pfeiffer")
        require(self.reduction_factor >= 1, "reduction_factor", self.reduction_factor, "must be >= 1")
        require(self.non_linearity in NON_LINEARITIES, "non_linearity", self.non_linearity,
                f"choose one of {list(NON_LINEARITIES)}")


@dataclass(frozen=True)
class BitfitParams(TrainedKnobs):
    """Nothing to choose but the rate: the biases are what trains."""
    lr: float = 1e-3


KNOBS: dict[str, type] = {  # by method name, in the order the docs and reports list the methods; a method registered
    # at run time (peftqa.methods.registry.register: a plug-in, a test) adds its own
    "base": BaseMethodParams,
    "prompt_tuning": PromptTuningParams,
    "prefix_tuning": PrefixTuningParams,
    "p_tuning": PTuningParams,
    "lora": LoraParams,
    "dora": DoraParams,
    "loha": LohaParams,
    "lokr": LokrParams,
    "vera": VeraParams,
    "ia3": Ia3Params,
    "ln_tuning": LnTuningParams,
    "adaption_prompt": AdaptionPromptParams,
    "bottleneck": BottleneckParams,
    "bitfit": BitfitParams,
    "full_finetune": FullFinetuneParams,
}
BUILTIN = tuple(KNOBS)  # the methods peftqa ships, one module each: peftqa/methods/<name>.py
METHODS = KNOBS.keys()  # a live view of every known method's name, plug-ins included


def check_gradient_checkpointing(name: str, gradient_checkpointing: bool) -> None:
    if gradient_checkpointing and not KNOBS[name].gradient_checkpointing:
        raise ParamsError(f"train.gradient_checkpointing: true cannot be combined with {name}: peft passes its "
                          "virtual tokens as a key/value cache, which gradient checkpointing disables. Set "
                          f"train.gradient_checkpointing: false or drop {name} from methods.")
