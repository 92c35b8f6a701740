"""A small Aff-Wild2-format feature bank like a user's first own data set (for tests).

:func:`make_small_bank` writes, in the format of :mod:`affstream.train.bank`, nine
videos of 400-460 frames, one person each, six in ``Train_Set`` and three in
``Validation_Set``. The latent state of each person follows the rules of
:mod:`synth_affwild` (imbalanced expression prior, AUs implied by the expression,
valence/arousal on the circumplex), with expression segments of 30-90 frames.

What makes it hard for a per-frame model: a frame's features show the true state only
with probability ``cue`` (0.6 by default); otherwise they show the state of a random
expression (its prototype, AUs drawn from its rule, its circumplex centre). So a single
frame is right only part of the time, while the labels stay constant over tens of
frames: a model that looks at the neighbours can vote the wrong cues away.

Deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from synth_affwild import (
    AU_BASE_P,
    AU_RULE_P,
    AU_RULES,
    CLASS_PRIOR,
    VA_CENTRES,
    _au_sequence,
    _runs_mask,
    _unit_rows,
    _va_sequence,
)

from affstream.labels import AU_LABELS, EXPR_LABELS
from affstream.train.affwild import PersonLabels, unannotated
from affstream.train.bank import BankWriter

N_VIDEOS = 9
FRAMES = (400, 460)
SEGMENT = (30, 90)


def _segments(rng: np.random.Generator, n: int, prior: np.ndarray) -> np.ndarray:
    """(n,) int64 classes in segments of SEGMENT frames, each segment's class drawn from ``prior``."""
    out = np.empty(n, dtype=np.int64)
    start = 0
    while start < n:
        length = int(rng.integers(SEGMENT[0], SEGMENT[1] + 1))
        out[start : start + length] = rng.choice(len(prior), p=prior)
        start += length
    return out


def make_small_bank(
    path: str | Path,
    *,
    seed: int = 0,
    dim: int = 64,
    cue: float = 0.6,
    noise: float = 0.8,
    identity: float = 0.3,
    gain: float = 0.0,
    backbone: str | None = None,
) -> Path:
    """Write the small bank at ``path`` (see the module docstring) and return ``path``.

    dim: feature width D. cue: probability that a frame's features show its true state.
    noise: norm of the per-frame Gaussian noise relative to the unit class prototypes.
    identity: norm of a per-person constant offset. gain: > 0 renders the features
    through a fixed random nonlinear map ``tanh(gain * x W1) W2`` (0: linear, the
    default). backbone: the spec recorded in the bank (default ``synthetic-small:seedN``;
    ``affstream-tiny:random`` with dim 64 lets the tiny CLIP's text encoder be
    fine-tuned on it). Features are L2-normalised
    (like CLIP's); about 5 % of the frames per task are unannotated and about 3 % have
    no face (zero features, present False).
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    prior = np.array([CLASS_PRIOR[c] for c in EXPR_LABELS])
    protos = _unit_rows(rng, len(EXPR_LABELS), dim)
    au_dirs = _unit_rows(rng, len(AU_LABELS), dim) * 0.5
    va_dirs = _unit_rows(rng, 2, dim) * 0.8
    mix = None
    if gain > 0:
        mix = (rng.normal(size=(dim, 4 * dim)) / np.sqrt(dim), rng.normal(size=(4 * dim, dim)) / np.sqrt(4 * dim))
    rule = np.array([[au in AU_RULES[c] for au in AU_LABELS] for c in EXPR_LABELS])
    p_on = np.where(rule, AU_RULE_P, AU_BASE_P)
    centres = np.array([VA_CENTRES[c] for c in EXPR_LABELS])
    writer = BankWriter(
        path,
        backbone=backbone or f"synthetic-small:seed{seed}",
        backbone_sha256=None,
        feature_dim=dim,
        dtype="float16",
        source="crops",
    )
    for j in range(N_VIDEOS):
        name = f"vid{j + 1:02d}"
        n = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
        expr = _segments(rng, n, prior)
        au = _au_sequence(rng, expr, smooth=True)
        va = _va_sequence(rng, expr, smooth=True)
        # What each frame shows: the truth with probability `cue`, else a random expression's state.
        right = rng.random(n) < cue
        shown = np.where(right, expr, rng.integers(0, len(EXPR_LABELS), size=n))
        decoy_au = (rng.random((n, len(AU_LABELS))) < p_on[shown]).astype(np.float64)
        shown_au = np.where(right[:, None], au.astype(np.float64), decoy_au)
        shown_va = np.where(right[:, None], va.astype(np.float64), centres[shown])
        feats = protos[shown] + shown_au @ au_dirs + shown_va @ va_dirs
        feats += _unit_rows(rng, 1, dim) * identity
        feats += rng.normal(0.0, noise / np.sqrt(dim), size=feats.shape)
        if mix is not None:
            feats = np.tanh(gain * feats @ mix[0]) @ mix[1]
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        labels = {"expr": expr, "au": au, "va": va}
        for task in ("expr", "au", "va"):
            labels[task][_runs_mask(rng, n, 0.05, 30)] = unannotated(task, 1)[0]
        present = ~_runs_mask(rng, n, 0.03, 8)
        split = "Validation_Set" if j % 3 == 2 else "Train_Set"
        writer.add(PersonLabels(name=name, video=name, split=split, n_frames=n, **labels), feats.astype(np.float32), present)
    return path
