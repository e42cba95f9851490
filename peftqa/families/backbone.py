"""The backbone interface: `Backbone`, the family registry (BACKBONES, register_family, detect_family) and the
constants every family shares.

The training loop and the evaluation use only `load_backbone` and the `Backbone` methods: `encode` builds a
padded batch, `loss` trains, `score` gives label log-probabilities, `generate` gives greedy answers and `save`
writes the adapter folder. A family is one `Backbone` subclass, registered with `register_family`: it also holds
its peft task type, its default target layers and the rule that recognises its models (`claims`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
from peft import TaskType
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from peftqa import compute
from peftqa.errors import PeftqaError
from peftqa.families.resolve import ResolvedModel
from peftqa.files import sha256_file, write_json_atomic, write_text_atomic
from peftqa.params import ModelParams

METADATA_FILE = "peftqa.json"  # {method, family, model, labels, sha256}: what an adapter folder was trained for
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # weight files: peftqa.json records their sha256 (safetensors has none)
HEAD_FILE = "head.safetensors"  # the encoder's classification head
IGNORE_INDEX = -100  # target positions without loss (prompt, padding); torch's cross-entropy default
MAX_NEW_TOKENS = 2  # greedy generation: the label word, perhaps followed by punctuation

Batch = dict[str, torch.Tensor]  # what encode returns: padded tensors on the backbone's device


class MethodEntry(Protocol):
    """What a backbone reads of its method's registry entry (peftqa.methods.registry.Method), handed to it by whoever
    loads it (peftqa.methods.attach): this package never imports the methods."""
    name: str
    frozen: bool  # nothing of the backbone trains
    whole_model: bool  # every weight trains: saved whole, not as an adapter
    native: object  # None, or the attach/save/load of a method written here
    refuse: object  # None, or a check that raises for a model the method cannot serve

    def peft_config(self, knobs: object, family: type, model: ResolvedModel, *,
                    gradient_checkpointing: bool = False) -> object: ...

# -----------------------------------------------------------------------------
# the registry of families, and the rules that tell them apart

BACKBONES: dict[str, type[Backbone]] = {}  # family name -> its Backbone subclass


def restore_fix(adapter_dir: Path, method: str) -> str:
    """How to get a damaged adapter folder back: DVC's copy of it, or the training again."""
    return f"restore it with `dvc checkout {adapter_dir}` (or retrain: `dvc repro -f train@{method}`)"


def is_encoder_decoder(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def _has_causal_architecture(config: PretrainedConfig) -> bool:
    return any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in config.architectures or ())


def register_family(backbone: type[Backbone]) -> type[Backbone]:
    """Class decorator: make `backbone` the family `backbone.family` (model.family, and model.family: auto)."""
    if backbone.family in BACKBONES:
        raise ValueError(f"family {backbone.family!r} is already registered")
    BACKBONES[backbone.family] = backbone
    return backbone


def detect_family(config: PretrainedConfig) -> str:
    """The one registered family that claims this model config."""
    claimed = [name for name, backbone in BACKBONES.items() if backbone.claims(config)]
    if len(claimed) != 1:
        raise PeftqaError(f"cannot tell the family of model type '{config.model_type}' (architectures "
                          f"{config.architectures}; claimed by {claimed or 'no family'}); set model.family to one of "
                          f"{list(BACKBONES)} in params.yaml")
    return claimed[0]


# -----------------------------------------------------------------------------
# the interface, and what every family shares


class Backbone:
    """One loaded model behind the interface that the training loop and the evaluation share."""

    family: str  # the name params use (model.family) and peftqa.json records
    auto_class: type  # the transformers loader for this family's model
    task_type: TaskType  # what peft wraps the model as
    query_value_layers: tuple[str, ...]  # attention query and value projections: LoRA's default targets
    key_value_layers: tuple[str, ...]  # attention key and value projections: with the next, IA3's default targets
    feedforward_layers: tuple[str, ...]  # feed-forward output layers (IA3 scales their input)
    # exact module paths (regexes of the whole name) of the attention and feed-forward output projections: where
    # bottleneck adapters go (a suffix such as BERT's output.dense would also match attention.output.dense)
    attention_output_layers: tuple[str, ...]
    feedforward_output_layers: tuple[str, ...]
    layer_norm_layers: tuple[str, ...]  # the layer norms' names (suffixes): LN tuning's default targets
    generates: bool = True  # answers by greedy generation too (a language model; peftqa.params.traits)

    @classmethod
    def claims(cls, config: PretrainedConfig) -> bool:
        """Whether a model with this config belongs to this family (model.family: auto)."""
        raise NotImplementedError

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *, method: str,
                 labels: tuple[str, ...], model_params: ModelParams, device: torch.device, source: ResolvedModel,
                 knobs: object = None, entry: MethodEntry | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.method, self.labels = method, tuple(labels)
        self.entry = entry  # what the method trains and saves; None: the model as it is, nothing attached
        self.knobs = knobs  # its peft.<method> section: how a native method (entry.native) saves itself
        self.model_name = model_params.name_or_path  # as params spell it: recorded in peftqa.json
        self.source = source  # resolve_model's (what from_pretrained got, its gguf_file=): the machine's path
        self.max_length = model_params.max_length
        self.device = device
        self._configure(model_params)
        for part in self._parts():
            part.to(device)
        if compute.use_bf16(model_params.dtype, device):
            compute.warn_if_emulated(device.type)
        if compute.fp32_weights_bf16_compute(model_params.dtype, device):
            for head in self._output_heads():
                compute.keep_in_fp32(head)
    # -- what each family defines

    def _configure(self, model_params: ModelParams) -> None:
        """Family-specific set-up from the model params, before the weights move to the device."""

    def encode(self, questions: list[str], contexts: list[str], labels: list[str] | None = None) -> Batch:
        """A padded batch on self.device, with "label_ids" (B,) indices into self.labels when labels are given."""
        raise NotImplementedError

    def _example_losses(self, batch: Batch) -> torch.Tensor:
        """Unweighted loss per example, (B,)."""
        raise NotImplementedError

    def _label_logits(self, batch: Batch) -> torch.Tensor:
        """Unnormalised scores of the labels, (B, n_labels)."""
        raise NotImplementedError

    def _parts(self) -> list[torch.nn.Module]:
        """Every module that holds weights: the model, plus the encoder's head."""
        return [self.model]

    def _output_heads(self) -> list[torch.nn.Module]:
        """The projection whose outputs are read as label scores: a language model's vocabulary head (the encoder
        overrides this with its classification head). Under bf16 compute it stays fp32 (compute.keep_in_fp32)."""
        head = self.model.get_output_embeddings()
        return [] if head is None else [head]

    # -- shared

    def loss(self, batch: Batch, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar training loss: the mean of per-example losses, weighted by class_weights[label] when given."""
        return _weighted_mean(self._example_losses(batch), batch, class_weights)

    @torch.no_grad()
    def score(self, batch: Batch) -> torch.Tensor:
        """(B, n_labels) log-probabilities renormalised over the labels; p_yes is exp of the "yes" column."""
        return torch.log_softmax(self._label_logits(batch).float(), dim=-1)

    @torch.no_grad()
    def loss_and_score(self, batch: Batch, class_weights: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss` and `score` of one labelled batch (validation reads both): from one forward pass where the family
        can (the causal LM scores at the prompt's end, the first position its loss reads)."""
        losses, logits = self._losses_and_label_logits(batch)
        return _weighted_mean(losses, batch, class_weights), torch.log_softmax(logits.float(), dim=-1)

    def _losses_and_label_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self._example_losses(batch), self._label_logits(batch)

    def token_lengths(self, frame) -> list[int]:
        """Each row's input length in tokens, as encode builds it (truncated, the answer left out): what
        train.length_groups groups batches by."""
        return [int(self.encode([q], [c])["attention_mask"].sum())
                for q, c in zip(frame["question"], frame["context"], strict=True)]

    def generate(self, batch: Batch) -> list[str | None]:
        """The predicted label per example (here the best score; the language models override this with generation)."""
        return [self.labels[i] for i in self.score(batch).argmax(dim=-1).tolist()]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for part in self._parts() for p in part.parameters() if p.requires_grad]

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable weights of a classification head (their own learning rate); none for the language models."""
        return []

    def count_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts, the head included."""
        params = [p for part in self._parts() for p in part.parameters()]
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def save(self, folder: Path) -> None:
        """Write what was trained (adapter, whole model or head) and peftqa.json, which says what it was trained for
        and holds each weight file's sha256 (load_backbone checks them: a flipped byte would load silently)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_weights(folder)
        digests = {path.name: sha256_file(path) for path in sorted(folder.iterdir()) if path.suffix in WEIGHT_SUFFIXES}
        write_json_atomic(folder / METADATA_FILE, {**self.metadata(), "sha256": digests})

    @property
    def frozen(self) -> bool:
        """Nothing of the model trains: a frozen method's (linear probe, zero-shot), or no method at all."""
        return self.entry is None or self.entry.frozen

    def metadata(self) -> dict[str, object]:
        return {"method": self.method, "family": self.family, "model": self.model_name, "labels": list(self.labels)}

    def _save_weights(self, folder: Path) -> None:
        """peft's save_pretrained: the adapter, or the whole model; a native method's own save; a frozen backbone has
        no weight of its own."""
        if self.entry is not None and self.entry.native is not None:
            self.entry.native.save(self.model, folder, self.knobs, type(self))
        elif not self.frozen:
            self.model.save_pretrained(folder)
            name_base_as_params(folder, self.model_name)

    def _load_weights(self, folder: Path) -> None:
        """Load what the model loader does not: nothing here, the head for the encoder."""

    def prepare_for_training(self) -> None:
        """Train mode; a frozen method (linear probe, zero-shot) freezes the whole model, peft froze an adapter's."""
        if self.frozen:
            self.model.requires_grad_(False)
        for part in self._parts():
            part.train()

    def prepare_for_evaluation(self, folder: Path) -> None:
        """Load the rest of the saved weights, then eval mode with nothing trainable."""
        self._load_weights(folder)
        for part in self._parts():
            part.requires_grad_(False)
            part.eval()

    def _with_labels(self, batch: Batch, labels: list[str] | None) -> Batch:
        """Add "label_ids" when labels are given, and move everything to self.device."""
        if labels is not None:
            unknown = sorted(set(labels) - set(self.labels))
            if unknown:
                raise PeftqaError(f"label {unknown[0]!r} is not one of prepare.labels {list(self.labels)}")
            batch["label_ids"] = torch.tensor([self.labels.index(label) for label in labels])
        return {key: value.to(self.device) for key, value in batch.items()}


def name_base_as_params(folder: Path, name: str) -> None:
    """peft names the base model in adapter_config.json (base_model_name_or_path) and the adapter's README by the
    folder it was loaded from (a venv's site-packages, a cache): a machine path, which would follow the adapter to
    another checkout or machine, name nothing there, and change adapter_bytes with the path. Rewrite both to the name
    params give (`model.name_or_path`), after peft's save (whose own checks read the real folder)."""
    config_path = folder / "adapter_config.json"
    if not config_path.exists():  # a whole model (full_finetune): transformers' config.json names no base
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    machine_path = config.get("base_model_name_or_path")
    if not machine_path or machine_path == name:
        return
    write_text_atomic(config_path, json.dumps({**config, "base_model_name_or_path": name}, indent=2, sort_keys=True))
    readme = folder / "README.md"
    if readme.exists():
        write_text_atomic(readme, readme.read_text(encoding="utf-8").replace(machine_path, name))


def _weighted_mean(losses: torch.Tensor, batch: Batch, class_weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-example losses (B,), weighted by class_weights[label] when given."""
    if class_weights is None:
        return losses.mean()
    weights = class_weights.to(losses.device, losses.dtype)[batch["label_ids"]]
    return (weights * losses).sum() / weights.sum()
