"""The PEFT methods: one registry entry per method, holding its knobs and its builder.

An entry's name is used everywhere: the params key (peft.<name>), the dvc.yaml foreach item, the models/<name>/
folder, the MLflow run name and the report's row. Its knobs are a frozen dataclass, the defaults and checks of its
params.yaml section. Its builder turns the knobs into the `peft` config for one backbone family, or None for the
two methods that are not adapters. What else differs by method is a property of the entry (`frozen`,
`whole_model`, `gradient_checkpointing`), so no other module branches on a method's name.

`register` adds an entry. METHODS is a live view of the registered names: a method registered at run time (a
plug-in, a test) is known to the params checks, the stages' command lines and the report alike.
peft is imported when a config is built, not here, so that params (which every stage loads) stays light.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from peftqa.common import ParamsError, PeftqaError, require

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig

    from peftqa.families import Backbone

ResolvedModel = tuple[str, dict[str, str]]  # what from_pretrained gets, and its extra kwargs (gguf_file=)
Builder = Callable[[Any, "type[Backbone]", ResolvedModel], "PeftConfig | None"]  # (knobs, family, model) -> config


@dataclass(frozen=True)
class Method:
    name: str
    knobs: type  # frozen dataclass: the peft.<name> section of params.yaml, every field with a default
    build: Builder
    note: str = ""  # what is trained, for train_summary.json and the report ("" = an adapter on a frozen model)
    note_without_head: str = ""  # the note for a family without a classification head, where it differs
    frozen: bool = False  # nothing of the backbone trains: at most the encoder's head (a linear probe)
    whole_model: bool = False  # every weight trains, so the whole model is saved, not an adapter
    gradient_checkpointing: bool = True  # whether it can train under train.gradient_checkpointing

    def describe(self, has_head: bool) -> str:
        if not has_head and self.note_without_head:
            return self.note_without_head
        return self.note or (f"{self.name}: base weights frozen, only the adapter (and, for the encoder, the head, "
                             "started from the probe) trained")


REGISTRY: dict[str, Method] = {}
METHODS = REGISTRY.keys()  # a live view, in registration order


def register(method: Method) -> Method:
    """Add a method under its name; a name is registered once."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise PeftqaError(f"unknown method {name!r}; choose one of {list(METHODS)}")
    return REGISTRY[name]


# -----------------------------------------------------------------------------
# knobs: each section's defaults and checks (keys named within the section; params adds "peft.<name>.")


@dataclass(frozen=True)
class TrainedKnobs:
    """What every trained method has: its learning rate, and the encoder head's own."""
    lr: float = 1e-3
    head_lr: float = 1e-3  # encoder family: the classification head's own learning rate (parameter group)
    at_least_one: ClassVar[tuple[str, ...]] = ()  # the sizes among the knobs: each must be >= 1

    def __post_init__(self):
        require(0 < self.lr < 1, "lr", self.lr, "learning rate must be in (0, 1)")
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
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)  # the encoder's probe: inverse L2 strengths tried

    def __post_init__(self):
        require(len(self.c_grid) >= 1 and all(c > 0 for c in self.c_grid), "c_grid", self.c_grid,
                "list at least one inverse regularisation strength C > 0")


@dataclass(frozen=True)
class PromptTuningParams(VirtualTokenKnobs):
    lr: float = 3e-2
    init: Literal["random", "text"] = "random"
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
    at_least_one: ClassVar[tuple[str, ...]] = ("r",)  # the rank

    def __post_init__(self):
        super().__post_init__()
        require(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")


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
class FullFinetuneParams(TrainedKnobs):
    lr: float = 3e-5


# -----------------------------------------------------------------------------
# builders: knobs + the backbone family -> the peft config


def build_no_adapter(knobs: object, family: type[Backbone], model: ResolvedModel) -> None:
    """base and full_finetune train no adapter: the backbone is either frozen or trained whole."""
    return None


def build_prompt_tuning(knobs: PromptTuningParams, family: type[Backbone], model: ResolvedModel) -> PeftConfig:
    """Soft prompt; text init copies the embeddings of init_text, so peft loads the tokenizer (a GGUF one with its
    gguf_file=)."""
    from peft import PromptTuningConfig, PromptTuningInit

    from_text = knobs.init == "text"
    path, kwargs = model
    return PromptTuningConfig(
        task_type=family.task_type,
        num_virtual_tokens=knobs.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if from_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=knobs.init_text if from_text else None,
        tokenizer_name_or_path=path if from_text else None,
        tokenizer_kwargs=(kwargs or None) if from_text else None,
    )


def build_prefix_tuning(knobs: PrefixTuningParams, family: type[Backbone], model: ResolvedModel) -> PeftConfig:
    """Trained key/value prefixes in every layer, optionally reparametrised through an MLP."""
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=family.task_type, num_virtual_tokens=knobs.num_virtual_tokens,
                              prefix_projection=knobs.prefix_projection,
                              encoder_hidden_size=knobs.projection_hidden_size)


def build_p_tuning(knobs: PTuningParams, family: type[Backbone], model: ResolvedModel) -> PeftConfig:
    """Virtual tokens produced by a small MLP prompt encoder (P-tuning)."""
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type=family.task_type, num_virtual_tokens=knobs.num_virtual_tokens,
                               encoder_hidden_size=knobs.encoder_hidden_size)


def build_lora(knobs: LoraParams, family: type[Backbone], model: ResolvedModel) -> PeftConfig:
    """Low-rank updates on the target layers (the family's query and value projections unless params name others)."""
    from peft import LoraConfig

    return LoraConfig(task_type=family.task_type, r=knobs.r, lora_alpha=knobs.alpha, lora_dropout=knobs.dropout,
                      target_modules=list(knobs.target_modules or family.query_value_layers))


def build_ia3(knobs: Ia3Params, family: type[Backbone], model: ResolvedModel) -> PeftConfig:
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


register(Method("base", BaseMethodParams, build_no_adapter, frozen=True,
                note="linear probe: logistic regression solved on the frozen encoder's features, C chosen on val",
                note_without_head="zero-shot: the base model as it is, nothing trained"))
register(Method("prompt_tuning", PromptTuningParams, build_prompt_tuning))
register(Method("prefix_tuning", PrefixTuningParams, build_prefix_tuning,
                gradient_checkpointing=False))  # peft passes the prefix as a key/value cache, which checkpointing drops
register(Method("p_tuning", PTuningParams, build_p_tuning))
register(Method("lora", LoraParams, build_lora))
register(Method("ia3", Ia3Params, build_ia3))
register(Method("full_finetune", FullFinetuneParams, build_no_adapter, whole_model=True,
                note="full fine-tune: every weight trained (upper-bound reference, not an adapter)"))


# -----------------------------------------------------------------------------


def check_gradient_checkpointing(name: str, gradient_checkpointing: bool) -> None:
    if gradient_checkpointing and not get(name).gradient_checkpointing:
        raise ParamsError(f"train.gradient_checkpointing: true cannot be combined with {name}: peft passes its "
                          "virtual tokens as a key/value cache, which gradient checkpointing disables. Set "
                          f"train.gradient_checkpointing: false or drop {name} from methods.")


def build_peft_config(name: str, knobs: object, family: type[Backbone], model: ResolvedModel, *,
                      gradient_checkpointing: bool = False) -> PeftConfig | None:
    """The peft config of method `name` on `family`, after the checks peft itself would only fail late or obscurely."""
    check_gradient_checkpointing(name, gradient_checkpointing)
    return get(name).build(knobs, family, model)


def check_target_modules(peft_config: PeftConfig | None, model: torch.nn.Module, *, method: str,
                         model_name: str) -> None:
    """Fail on a target module the model lacks; peft only fails when *none* match, silently skipping the rest."""
    targets = getattr(peft_config, "target_modules", None) or ()
    module_names = [name for name, _ in model.named_modules()]
    for target in sorted(targets):
        if not any(name == target or name.endswith(f".{target}") for name in module_names):
            leaves = {name.rsplit(".", 1)[-1] for name in module_names}
            examples = sorted(leaf for leaf in leaves if leaf and not leaf.isdigit())[:12]  # indices say nothing
            raise PeftqaError(f"peft.{method}.target_modules: module '{target}' does not exist in model "
                              f"'{model_name}'. Fix that params key; this model's layer names include {examples}.")
