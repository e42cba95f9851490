"""The causal family computes the LM head only where it is read and decodes greedily with a key/value cache; both
must give what the old code gave (tests/causal_before.py: the head at every position, each new token
re-running the whole sequence). On a tiny GPT-2 (absolute positions) and a tiny Llama (rotary), zero-shot and with
every adapter, its weights perturbed so that it changes the output; rows of different lengths, so padding is in
play. Negative controls: the checks catch scoring at unshifted positions, and decoding without each row's own
positions."""
from __future__ import annotations

import pytest
import torch
from causal_before import computed_as_before

from peftqa.families import causal

from test_families import encode_items, load, tiny_paths  # noqa: F401  (tiny_paths: the fixture)
from tiny_models import ITEMS

METHODS = ("base", "lora", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3")
TOLERANCE = 1e-5  # |Δ log p| the issue allows


def perturbed(tiny_paths, kind: str, method: str):
    """A backbone whose adapter is not its identity start (LoRA's B = 0, IA3's ones would change nothing)."""
    backbone = load(tiny_paths, kind, method)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in backbone.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    backbone.model.eval()
    return backbone


def uneven_batch(backbone, with_labels: bool = True):
    """The tiny items with contexts of different lengths, so rows are right-padded by different amounts."""
    questions = [i["question"] for i in ITEMS]
    contexts = [i["context"][: 20 + 25 * n] for n, i in enumerate(ITEMS)]
    return backbone.encode(questions, contexts, [i["label"] for i in ITEMS] if with_labels else None)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_scores_and_losses_equal_the_head_at_every_position(tiny_paths, kind, method):
    backbone = perturbed(tiny_paths, kind, method)
    batch = uneven_batch(backbone)
    scores, loss = backbone.score(batch), backbone.loss(batch, class_weights=torch.tensor([1.0, 2.0]))
    with computed_as_before(backbone):
        old_scores, old_loss = backbone.score(batch), backbone.loss(batch, class_weights=torch.tensor([1.0, 2.0]))
    assert (scores - old_scores).abs().max() <= TOLERANCE
    assert abs(loss.item() - old_loss.item()) <= TOLERANCE
    assert backbone.score(encode_items(backbone)).shape == (len(ITEMS), 2)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix_tuning"])
def test_gradients_equal_the_head_at_every_position(tiny_paths, method):
    backbone = perturbed(tiny_paths, "llama", method)
    batch = uneven_batch(backbone)
    grads = []
    for before in (False, True):
        backbone.model.zero_grad()
        if before:
            with computed_as_before(backbone):
                backbone.loss(batch).backward()
        else:
            backbone.loss(batch).backward()
        grads.append([p.grad.clone() for p in backbone.trainable_parameters()])
    for new, old in zip(*grads):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cached_greedy_answers_equal_rerunning_the_sequence(tiny_paths, kind, method, monkeypatch):
    monkeypatch.setattr(causal, "MAX_NEW_TOKENS", 6)  # several cached steps, not just one
    monkeypatch.setattr("causal_before.MAX_NEW_TOKENS", 6)
    backbone = perturbed(tiny_paths, kind, method)
    batch = uneven_batch(backbone, with_labels=False)
    answers = backbone._generated_texts(batch)
    with computed_as_before(backbone):
        assert backbone._generated_texts(batch) == answers
    assert len(set(answers)) > 1  # random weights: the rows' answers differ, so a mix-up between rows would show


def test_negative_control_scoring_at_unshifted_positions_is_caught(tiny_paths, monkeypatch):
    """Prompt tuning prepends virtual tokens: reading the head at the real tokens' indices unshifted differs."""
    backbone = perturbed(tiny_paths, "llama", "prompt_tuning")
    batch = uneven_batch(backbone)
    with computed_as_before(backbone):
        old_scores = backbone.score(batch)
    monkeypatch.setattr(type(backbone), "_virtual_positions", lambda self: 0)
    assert (backbone.score(batch) - old_scores).abs().max() > TOLERANCE


def test_negative_control_decoding_without_each_rows_positions_is_caught(tiny_paths, monkeypatch):
    """Without its own position ids, a shorter row's new tokens take the padded width's positions. On GPT-2 (absolute
    positions): a tiny random Llama's rotary attention is too flat for that shift to change an argmax."""
    monkeypatch.setattr(causal, "MAX_NEW_TOKENS", 6)
    monkeypatch.setattr("causal_before.MAX_NEW_TOKENS", 6)
    backbone = perturbed(tiny_paths, "gpt2", "base")
    batch = uneven_batch(backbone, with_labels=False)
    with computed_as_before(backbone):
        old = backbone._generated_texts(batch)
    decoder = backbone.model.get_base_model() if hasattr(backbone.model, "get_base_model") else backbone.model
    forward = decoder.forward

    def without_positions(*args, position_ids=None, **kwargs):
        return forward(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", without_positions)
    assert backbone._generated_texts(batch) != old


@pytest.mark.parametrize("method", ["base", "lora", "prompt_tuning", "prefix_tuning"])
@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_validation_reads_loss_and_scores_from_one_pass_as_from_two(tiny_paths, kind, method):
    backbone = perturbed(tiny_paths, kind, method)
    batch = uneven_batch(backbone)
    weights = torch.tensor([1.0, 2.0])
    loss, scores = backbone.loss_and_score(batch, weights)
    assert abs(loss.item() - backbone.loss(batch, weights).item()) <= TOLERANCE
    assert (scores - backbone.score(backbone.encode([i["question"] for i in ITEMS],
                                                    [i["context"][: 20 + 25 * n] for n, i in enumerate(ITEMS)]))
            ).abs().max() <= TOLERANCE
