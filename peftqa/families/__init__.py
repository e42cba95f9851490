"""The backbone seam: encoder, seq2seq and causal-LM models behind one small interface (backbone.Backbone).

The families differ only in how an input is built and how a label is scored:
- encoder (BERT-like): the (question, context) pair, pooled hidden states, our own linear head;
- seq2seq (T5): the template on the encoder side, the label word as the decoder target, scored at its first step;
- causal (GPT-2, Llama): the template followed by " <label>", scored at the prompt's last position.
backbone holds the interface and the family registry, tokens the pure token helpers, resolve which model,
language_model what seq2seq and causal share, load `load_model` (a model with a method's registry entry attached:
peftqa.methods.attach.load_backbone passes it, by the method's name; this package never imports the methods).
Importing a family registers it: the order below is BACKBONES'.
"""
# isort: off
from peftqa.families.encoder import EncoderBackbone
from peftqa.families.seq2seq import Seq2SeqBackbone
from peftqa.families.causal import CausalBackbone
# isort: on
from peftqa.families.backbone import (
    BACKBONES,
    HEAD_FILE,
    METADATA_FILE,
    Backbone,
    Batch,
    detect_family,
    register_family,
)
from peftqa.families.language_model import LanguageModelBackbone, label_words
from peftqa.families.load import backbone_class, load_model
from peftqa.families.resolve import GGUF_MODELS, resolve_model, resolve_model_path
from peftqa.families.tokens import answer_to_label, kept_positions, verbalizer_token_ids

__all__ = [
    "BACKBONES", "GGUF_MODELS", "HEAD_FILE", "METADATA_FILE", "Backbone", "Batch", "CausalBackbone", "EncoderBackbone",
    "LanguageModelBackbone", "Seq2SeqBackbone", "answer_to_label", "backbone_class", "detect_family", "kept_positions",
    "label_words", "load_model", "register_family", "resolve_model", "resolve_model_path", "verbalizer_token_ids",
]
