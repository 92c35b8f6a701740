"""Valence/arousal derived from expression probabilities through a circumplex placement.

The zero-shot head has no valence/arousal regressor. It estimates them as the expected
position of the face on the affective circumplex, given its expression posterior:

    va = expr_probs @ COORDS          (..., 8) @ (8, 2) -> (..., 2), within [-1, 1]

This is a *derived estimate*, not a trained regressor: it can only say what the
expression classes imply, it shrinks towards (0, 0) when the posterior is uncertain, and
it has no notion of intensity beyond the class probabilities.

Source of the placement. Russell (1980), "A circumplex model of affect", J. Personality
and Social Psychology 39(6):1161-1178, arranges affect concepts on a circle whose
horizontal axis is valence (pleasure) and vertical axis arousal, with reference
directions pleasure 0 deg, excitement 45, arousal 90, distress 135, displeasure 180,
depression 225, sleepiness 270, relaxation 315. affstream places each basic expression on
that circle at radius 0.8 (a clear but not extreme expression) at the angle below, chosen
from those reference directions; the assignment of expressions to angles is ours:

    expression  angle  valence  arousal   reading
    Neutral       -     0.000    0.000    centre (no affect)
    Anger        110   -0.274    0.752    aroused and unpleasant, between arousal and distress
    Disgust      160   -0.752    0.274    unpleasant, moderately aroused, towards displeasure
    Fear         125   -0.459    0.655    near distress
    Happiness     20    0.752    0.274    between pleasure and excitement
    Sadness      215   -0.655   -0.459    near depression
    Surprise      80    0.139    0.788    near arousal, slightly pleasant
    Other         -     0.000    0.000    centre: an unlisted expression says nothing here

Valence and arousal follow the Aff-Wild2 convention: both in [-1, 1], positive =
pleasant / activated.
"""

from __future__ import annotations

import math

import torch

from ..labels import EXPR_LABELS

RADIUS = 0.8
ANGLES_DEG: dict[str, float | None] = {
    "Neutral": None,
    "Anger": 110.0,
    "Disgust": 160.0,
    "Fear": 125.0,
    "Happiness": 20.0,
    "Sadness": 215.0,
    "Surprise": 80.0,
    "Other": None,
}
SOURCE = (
    "Russell (1980) circumplex reference directions; affstream placement at radius 0.8, "
    "Neutral and Other at (0, 0)"
)


def circumplex_coords() -> torch.Tensor:
    """(8, 2) float32 (valence, arousal) per class, in ``EXPR_LABELS`` order."""
    rows = []
    for label in EXPR_LABELS:
        angle = ANGLES_DEG[label]
        if angle is None:
            rows.append((0.0, 0.0))
        else:
            rad = math.radians(angle)
            rows.append((RADIUS * math.cos(rad), RADIUS * math.sin(rad)))
    return torch.tensor(rows, dtype=torch.float32)


def describe() -> dict[str, object]:
    """The mapping as JSON-friendly data, for head cards and reports."""
    coords = circumplex_coords().tolist()
    return {
        "method": "expected value of the circumplex position under the expression posterior",
        "source": SOURCE,
        "coords": {label: [round(v, 4), round(a, 4)] for label, (v, a) in zip(EXPR_LABELS, coords, strict=True)},
    }


def va_from_probs(expr_probs: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
    """Expected (valence, arousal) under the expression posterior.

    expr_probs: (..., 8) probabilities (rows sum to 1), any float dtype.
    coords:     (8, 2) placement; defaults to :func:`circumplex_coords`.
    Returns (..., 2) in the dtype of ``expr_probs``, within [-RADIUS, RADIUS] per axis.
    """
    if coords is None:
        coords = circumplex_coords()
    coords = coords.to(device=expr_probs.device, dtype=expr_probs.dtype)
    return expr_probs @ coords
