"""Which method serves which family, as data: every (family, method) pair is a recipe that learns (tests/
test_learning.py trains each on a tiny model), a recipe expected to fail (CANNOT_LEARN, strict xfail there), or a
refusal with its named error. `peftqa docs` renders it as docs/models.md's matrix table (studies.results), so the
table and the test cannot drift apart. Pure data: it imports nothing, and the docs read it by path."""
from __future__ import annotations

KINDS = {"encoder": "bert", "seq2seq": "t5", "causal": "gpt2"}  # tiny model kind per family
TRAINED_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning", "lora", "dora", "loha", "lokr", "vera", "ia3",
                   "ln_tuning", "adaption_prompt", "bottleneck", "bitfit", "full_finetune")

# (learning rate, epochs) per family and method: about the fewest epochs that clear the learning bar on this task,
# plus one where a curve was near it. T5's LoRA at 1e-2 stalled at 0.69 on one machine and learned on another (an lr
# at the edge of stability); 5e-3 climbs steadily (0.56, 0.78, 0.91, ... 0.98 over 8 epochs)
RECIPES = {
    "encoder": {"prompt_tuning": (1e-1, 8), "prefix_tuning": (1e-1, 6), "p_tuning": (1e-2, 7), "lora": (1e-2, 4),
                "dora": (1e-2, 2), "loha": (1e-2, 3), "lokr": (1e-2, 5), "vera": (3e-2, 3), "ia3": (1e-1, 8),
                "ln_tuning": (1e-1, 4), "bottleneck": (1e-2, 5), "bitfit": (3e-2, 6), "full_finetune": (3e-3, 3)},
    "seq2seq": {"prompt_tuning": (1e-1, 8), "prefix_tuning": (3e-1, 6), "p_tuning": (3e-2, 8), "lora": (5e-3, 8),
                "dora": (5e-3, 5), "loha": (1e-2, 6), "lokr": (1e-2, 6), "vera": (3e-2, 6), "ia3": (1e-1, 8),
                "ln_tuning": (1e-1, 8), "bottleneck": (1e-2, 8), "full_finetune": (3e-3, 5)},
    "causal": {"prompt_tuning": (3e-1, 8), "prefix_tuning": (1e-1, 10), "p_tuning": (3e-2, 10), "lora": (1e-2, 4),
               "dora": (1e-2, 3), "vera": (3e-2, 5), "ia3": (1e-1, 10), "ln_tuning": (3e-2, 7),
               "adaption_prompt": (1e-1, 7), "bottleneck": (1e-2, 5), "bitfit": (1e-1, 8), "full_finetune": (1e-3, 3)},
}
CANNOT_LEARN = {  # (family, method): why it stays near chance within the budget above; strict, so a fix shows up
    ("seq2seq", "prefix_tuning"): "peft's prefix reaches only T5's decoder self-attention: peft never gives the "
    "encoder one (peft PR #2989), and under transformers 5 the cross-attention half of the prefix gets no gradient; "
    "a one-position decoder prefix stays near chance on word order (0.55 after 6 epochs, 0.59 after 10)",
}
REFUSED = {  # (family, method): the start of the error the model's build raises, and why
    ("encoder", "adaption_prompt"): ("adaption_prompt cannot serve this encoder model",
                                     "peft's LLaMA-Adapter is written for llama, mistral and gpt2 only"),
    ("seq2seq", "adaption_prompt"): ("adaption_prompt cannot serve this seq2seq model",
                                     "peft's LLaMA-Adapter is written for llama, mistral and gpt2 only"),
    ("seq2seq", "bitfit"): ("bitfit cannot serve this seq2seq model", "T5 has no bias parameters"),
    ("causal", "loha"): ("loha cannot serve this causal model", "peft's LoHa cannot wrap GPT-2's Conv1D layers"),
    ("causal", "lokr"): ("lokr cannot serve this causal model", "peft's LoKr cannot wrap GPT-2's Conv1D layers"),
}


def cell(family: str, method: str) -> str:
    """What the matrix says of one pair: learns, xfail or refused."""
    if (family, method) in REFUSED:
        return "refused"
    if (family, method) in CANNOT_LEARN:
        return "xfail"
    return "learns"
