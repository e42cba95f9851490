"""The linear probe, solved rather than trained: scikit-learn's LogisticRegression on frozen, standardised features.

train@base (encoder family) fits it on the features of stage embed, choosing C on val macro-F1, and writes it into
the encoder's head (a torch Linear), so evaluate, predict and the registry score it through the one code path. Every
tuned encoder method starts its head from the same solution (linear probing, then fine-tuning).

    peftqa probe --compare-truncation   # val macro-F1 of the probe under each model.truncation (README)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, log_loss

log = logging.getLogger("peftqa.training.probe")

MAX_ITER = 100_000  # lbfgs iterations; a cap, never reached on standardised features
TOL = 1e-10  # lbfgs stopping tolerance: at scikit-learn's 1e-4 an ill-conditioned C stops up to 0.02 short in p_yes


@dataclass(frozen=True)
class Probe:
    """A solved probe in the head's terms: logits = features @ weight.T + bias, rows in the order of `labels`."""
    weight: np.ndarray  # (K, H) float64
    bias: np.ndarray  # (K,)
    c: float  # the chosen inverse regularisation strength
    grid: list[dict[str, float]]  # per C tried: c, train_loss, val_loss, val_macro_f1

    @property
    def chosen(self) -> dict[str, float]:
        """The grid row of the chosen C."""
        return next(row for row in self.grid if row["c"] == self.c)


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, class_weight: str | None) -> LogisticRegression:
    """L2 logistic regression solved to convergence, in float64 (lbfgs, deterministic: no seed involved). The problem
    is strictly convex, so any solver run to convergence reaches the same weights."""
    model = LogisticRegression(C=c, class_weight=class_weight, max_iter=MAX_ITER, tol=TOL)
    return model.fit(x, y)


def head_terms(model: LogisticRegression, mean: np.ndarray, scale: np.ndarray,
               labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(K, H) weight and (K,) bias on the raw features: the standardisation folded in, rows in `labels` order.
    Binary LR has one row (for classes_[1]); split it as +-1/2 so that the softmax of two logits equals its sigmoid."""
    coef, intercept = model.coef_ / scale, model.intercept_ - (model.coef_ / scale) @ mean  # (1|K, H), (1|K,)
    classes = [str(c) for c in model.classes_]
    if len(classes) == 2:
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    rows = [classes.index(label) for label in labels]
    return coef[rows], intercept[rows]


def solve_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                labels: tuple[str, ...], c_grid: tuple[float, ...], class_weight: str | None) -> Probe:
    """Fit one LR per C on train, keep the best val macro-F1 (ties: the smaller C, the stronger regularisation)."""
    missing = sorted(set(labels) - set(train_y.tolist()))
    if missing:
        raise ValueError(f"the probe's training items hold no example of label(s) {missing}")
    train_x, val_x = np.asarray(train_x, np.float64), np.asarray(val_x, np.float64)  # features come as float32
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant feature stays 0 after centring
    train_z, val_z = (train_x - mean) / scale, (val_x - mean) / scale
    best, grid = None, []
    for c in sorted(c_grid):
        model = fit_logistic(train_z, train_y, c, class_weight)
        val_f1 = f1_score(val_y, model.predict(val_z), labels=list(labels), average="macro", zero_division=0)
        grid.append({"c": c, "train_loss": log_loss(train_y, model.predict_proba(train_z), labels=model.classes_),
                     "val_loss": log_loss(val_y, model.predict_proba(val_z), labels=model.classes_),
                     "val_macro_f1": float(val_f1)})
        if best is None or val_f1 > best[0]:
            best = (val_f1, c, model)
    weight, bias = head_terms(best[2], mean, scale, labels)
    return Probe(weight=weight, bias=bias, c=best[1], grid=grid)


def load_into_head(head: torch.nn.Linear, probe: Probe) -> None:
    """Copy the solved weights into the encoder's head (a Linear(H, K)), in the head's dtype and device."""
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(probe.weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(probe.bias, dtype=head.bias.dtype))


# -----------------------------------------------------------------------------
# the truncation comparison behind model.truncation's default (README, "Choosing the defaults")
