"""The few_shot reference row: the zero-shot base with solved train examples in its prompt, what a practitioner
tries before tuning. One example per label, drawn from train with a seed, in the same template and chat template,
scored by the same verbalizer. One draw is noisy, so a few are drawn; the row is the draw with the best val macro-F1,
and test is scored with that draw alone.

Pure functions: stages/few_shot.py loads the model and scores; stages/references.py turns its predictions into the
row that stats and the report compare against.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from peftqa.catalog import SPLIT
from peftqa.errors import PeftqaError
from peftqa.params import FEW_SHOT
from peftqa.params.traits import traits

SEED_OFFSET = 1000  # draw k uses train.seed + SEED_OFFSET + k: apart from the seeds the trainings use
SCORE_TOLERANCE = 1e-12  # val scores closer than this are a tie, won by the earlier draw


def few_shot_undefined(names: Sequence[str], family: str | None) -> str | None:
    """Why the row is not defined for this run (the sentence the report prints), or None when it is."""
    if FEW_SHOT not in names:
        return "not defined: few_shot is not in references.names"
    if family is not None and not traits(family).generates:
        return f"not defined for the {family} family: it reads no examples in a prompt, it classifies features"
    return None


def draw_seed(seed: int, draw: int) -> int:
    return seed + SEED_OFFSET + draw


def draw_examples(train: pd.DataFrame, labels: Sequence[str], seed: int) -> pd.DataFrame:
    """One train item per label, each drawn uniformly among that label's items, in a seeded random order (the last
    example's label sways a small model most, so no label is always last)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in labels:
        pool = np.flatnonzero(train["label"].astype(str).to_numpy() == label)
        if not len(pool):
            raise PeftqaError(f"{SPLIT.path(split='train')}: no item has the label '{label}', so few_shot has no "
                              "example of it; run `dvc repro prepare`, or drop few_shot from references.names")
        rows.append(int(rng.choice(pool)))
    return train.iloc[[rows[i] for i in rng.permutation(len(rows))]]


def examples_of(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(question, context, label) per example, as the backbone's set_demonstrations takes them."""
    return list(zip(frame["question"].astype(str), frame["context"].astype(str), frame["label"].astype(str),
                    strict=True))


def chosen_draw(val_macro_f1: Sequence[float]) -> int:
    """The index of the best val macro-F1; a tie goes to the earlier draw."""
    best = 0
    for i, score in enumerate(val_macro_f1):
        if score > val_macro_f1[best] + SCORE_TOLERANCE:
            best = i
    return best
