"""Tiny random backbones and PubMedQA-shaped records for offline tests.

`make_tiny_model` builds a model of each family from a config (hidden 32, 2 layers, random weights) and
saves it with a byte-level BPE tokenizer trained on a few sentences, so a test can load it by folder
through the real code path (AutoConfig / AutoModel / AutoTokenizer) in well under a second.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

ITEMS = [  # tiny PubMedQA-shaped records: question, context (an abstract's sentences), yes/no label
    {"pmid": "10001", "question": "Does aspirin reduce the risk of stroke in older adults?",
     "context": "We followed 1200 adults over five years. Daily aspirin lowered the incidence of ischaemic stroke.",
     "label": "yes"},
    {"pmid": "10002", "question": "Is vitamin D supplementation associated with fewer fractures?",
     "context": "A randomised trial of 800 women found no difference in fracture rates between the groups.",
     "label": "no"},
    {"pmid": "10003", "question": "Do statins improve survival after cardiac surgery?",
     "context": "Patients on statins before surgery had lower mortality at thirty days than those without.",
     "label": "yes"},
    {"pmid": "10004", "question": "Does early mobilisation shorten hospital stay after hip fracture?",
     "context": "Length of stay was similar in both arms of the study, and complications did not differ.",
     "label": "no"},
]

KINDS = {"encoder": ("bert",), "seq2seq": ("t5",), "causal": ("gpt2", "llama")}  # first kind is the default

# special tokens per kind, and the post-processor template that adds them around one text ($A) or a pair ($B)
_SPECIALS = {
    "bert": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
             "mask_token": "[MASK]"},
    "t5": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gpt2": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    "llama": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},  # no pad token, like real Llama
}
_TEMPLATES = {
    "bert": ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"),
    "t5": ("$A </s>", "$A </s> $B </s>"),
    "gpt2": None,
    "llama": ("<s> $A", "<s> $A <s> $B"),
}
_VOCAB_SIZE = 400  # byte-level alphabet (256) plus enough merges that yes/no/maybe are single tokens


def build_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ITEMS (plus the prompt words), with `kind`'s special tokens."""
    specials = list(dict.fromkeys(_SPECIALS[kind].values()))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [f"{item['question']} {item['context']}" for item in ITEMS]
    corpus += ["Answer the biomedical question with yes or no, using the context.\nQuestion: Context: Answer:",
               "yes no maybe Yes No Maybe"] * 20  # frequent, so each label word (with and without a space) is one token
    trainer = trainers.BpeTrainer(vocab_size=_VOCAB_SIZE, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    if _TEMPLATES[kind] is not None:
        single, pair = _TEMPLATES[kind]
        tokens = [(token, tokenizer.token_to_id(token)) for token in specials]
        tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=tokens)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **_SPECIALS[kind])


def build_word_tokenizer(kind: str, words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (split on spaces and punctuation, one token per word) with `kind`'s
    special tokens: for synthetic tasks where each word must be exactly one token."""
    specials = list(dict.fromkeys(_SPECIALS[kind].values()))
    vocab = {token: i for i, token in enumerate(dict.fromkeys(specials + list(words)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=_SPECIALS[kind]["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # joins the words with spaces
    if _TEMPLATES[kind] is not None:
        single, pair = _TEMPLATES[kind]
        tokens = [(token, vocab[token]) for token in specials]
        tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=tokens)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **_SPECIALS[kind])


def _build_model(kind: str, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    """A 2-layer, 32-wide random model of `kind` whose special-token ids match the tokenizer."""
    vocab = len(tokenizer)
    if kind == "bert":
        config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
        return BertModel(config)  # with the pooler, like MiniLM, so AutoModel finds every weight
    if kind == "t5":
        config = T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.pad_token_id)
        return T5ForConditionalGeneration(config)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=512,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return GPT2LMHeadModel(config)
    if kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return LlamaForCausalLM(config)
    raise ValueError(f"unknown tiny model kind {kind!r}; choose one of {[k for ks in KINDS.values() for k in ks]}")


def make_tiny_model(family: str, folder: Path, kind: str | None = None) -> Path:
    """Save a tiny random model of `family` (kind: bert | t5 | gpt2 | llama) and its tokenizer into `folder`."""
    kind = kind or KINDS[family][0]
    if kind not in KINDS[family]:
        raise ValueError(f"kind {kind!r} is not a {family} model; choose one of {KINDS[family]}")
    torch.manual_seed(0)  # the same random weights every time, so tests are reproducible
    tokenizer = build_tokenizer(kind)
    model = _build_model(kind, tokenizer)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_frame(n: int, offset: int) -> pd.DataFrame:
    """n rows of a processed split (pmid, question, context, label) cycling through ITEMS, with distinct PMIDs."""
    rows = [{**ITEMS[i % len(ITEMS)], "pmid": str(offset + i)} for i in range(n)]
    return pd.DataFrame(rows, columns=["pmid", "question", "context", "label"])


def write_synthetic_pubmedqa(folder: Path, n: int = 80) -> dict[str, object]:
    """n PQA-L-shaped raw records (yes/no/maybe) and a ground-truth file in `folder`, for pipeline runs without
    the real data. Returns the env vars and params overrides that make `fetch` read and verify them."""
    records = {str(20000 + i): {"QUESTION": f"Does treatment {i} improve outcome {i % 7} in patients?",
                                "CONTEXTS": [f"Study {i} enrolled {50 + i} patients.", f"Outcome {i % 3} changed."],
                                "final_decision": ("yes", "no", "yes", "maybe", "no")[i % 5], "LONG_ANSWER": "",
                                "YEAR": "2001"} for i in range(n)}
    raw, truth = Path(folder) / "ori_pqal.json", Path(folder) / "test_ground_truth.json"
    raw.write_text(json.dumps(records))
    truth.write_text(json.dumps({pmid: r["final_decision"] for pmid, r in list(records.items())[1::2]}))
    return {"env": {"PUBMEDQA_JSON": str(raw), "PUBMEDQA_GROUND_TRUTH_JSON": str(truth)},
            "params": {"fetch.sha256": hashlib.sha256(raw.read_bytes()).hexdigest(),
                       "fetch.ground_truth_sha256": hashlib.sha256(truth.read_bytes()).hexdigest()}}
