"""The per-frame table: column names, their documentation, and row formatting.

One row per face per frame, or one row for a frame without a face (``face_id`` -1,
``success`` 0, every measurement empty). Every writer (CSV today, JSONL later) and the
README's column table use :data:`CSV_COLUMNS`, :data:`COLUMN_DOCS` and
:func:`format_row`, so they cannot drift apart.

Formatting rules: fixed decimals, never scientific notation, never ``-0.0000``
(a value that rounds to zero is written unsigned); a value that is ``None`` (no face,
or a task the head does not predict) or not finite is an empty cell.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..labels import AU_COLUMN_STEMS, AU_LABELS, EXPR_LABELS
from ..records import FrameAnnotation

TIME_DECIMALS = 6  # timestamp in seconds, to the microsecond
SCORE_DECIMALS = 4  # confidence, valence, arousal, probabilities
PIXEL_DECIMALS = 2  # face box, in pixels

EXPR_COLUMNS: tuple[str, ...] = tuple(f"expr_{label.lower()}" for label in EXPR_LABELS)
AU_COLUMNS: tuple[str, ...] = tuple(
    name for stem in AU_COLUMN_STEMS for name in (f"{stem}_c", f"{stem}_p")
)

CSV_COLUMNS: tuple[str, ...] = (
    "frame",
    "timestamp",
    "face_id",
    "confidence",
    "success",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "valence",
    "arousal",
    "expression",
    *EXPR_COLUMNS,
    *AU_COLUMNS,
)
"""Column order of every per-frame table (44 columns)."""

# FACS names of the 12 action units, keyed by AU_LABELS entries.
_AU_NAMES: dict[str, str] = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU6": "cheek raiser",
    "AU7": "lid tightener",
    "AU10": "upper lip raiser",
    "AU12": "lip corner puller",
    "AU15": "lip corner depressor",
    "AU23": "lip tightener",
    "AU24": "lip pressor",
    "AU25": "lips part",
    "AU26": "jaw drop",
}


def _column_docs() -> dict[str, str]:
    docs = {
        "frame": "1-based index of the decoded video frame (frame 1 is the first frame).",
        "timestamp": "Presentation time of the frame in seconds (from the stream's timestamps, 6 decimals).",
        "face_id": "Track id of the face, stable across frames (0, 1, 2, ...); -1 when the frame has no face.",
        "confidence": "Face detector score in [0, 1]; 0 when the frame has no face.",
        "success": "1 if a face was found and analysed in this frame, else 0.",
        "face_x": "Left edge of the face box in pixels of the upright frame.",
        "face_y": "Top edge of the face box in pixels of the upright frame.",
        "face_width": "Width of the face box in pixels.",
        "face_height": "Height of the face box in pixels.",
        "valence": "Valence in [-1, 1] (negative to positive); empty if the head does not predict it.",
        "arousal": "Arousal in [-1, 1] (calm to excited); empty if the head does not predict it.",
        "expression": "Most probable of the 8 expressions (" + ", ".join(EXPR_LABELS) + ").",
    }
    for label, column in zip(EXPR_LABELS, EXPR_COLUMNS):
        docs[column] = f"Probability of the expression {label} in [0, 1]; the 8 sum to 1."
    for label, stem in zip(AU_LABELS, AU_COLUMN_STEMS):
        name = _AU_NAMES[label]
        docs[f"{stem}_c"] = f"{label} ({name}) present: 1 if its probability reaches the head's threshold, else 0."
        docs[f"{stem}_p"] = f"Probability of {label} ({name}) in [0, 1]."
    return docs


COLUMN_DOCS: dict[str, str] = _column_docs()
"""One-line description of every column of :data:`CSV_COLUMNS`, in the same order."""


def format_fixed(value: Any, decimals: int) -> str:
    """``value`` with exactly ``decimals`` decimals; "" for None, NaN or infinity.

    Never scientific notation; a result that rounds to zero is written without a sign.
    """
    if value is None:
        return ""
    number = float(value)
    if not math.isfinite(number):
        return ""
    text = f"{number:.{decimals}f}"
    if text.startswith("-") and not text.strip("-0."):
        text = text[1:]
    return text


def _vector(values: np.ndarray | None, length: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values)
    if array.shape != (length,):
        raise ValueError(f"FrameAnnotation.{name} must have shape ({length},), got {array.shape}")
    return array


def _box_cells(box_xyxy: np.ndarray | None) -> list[str]:
    box = _vector(box_xyxy, 4, "box_xyxy")
    if box is None:
        return [""] * 4
    x1, y1, x2, y2 = (float(v) for v in box)
    return [format_fixed(v, PIXEL_DECIMALS) for v in (x1, y1, x2 - x1, y2 - y1)]


def _expression_cell(expression: int | None) -> str:
    if expression is None:
        return ""
    index = int(expression)
    if not 0 <= index < len(EXPR_LABELS):
        raise ValueError(f"FrameAnnotation.expression must be in [0, {len(EXPR_LABELS)}), got {index}")
    return EXPR_LABELS[index]


def _au_cells(au_present: np.ndarray | None, au_probs: np.ndarray | None) -> list[str]:
    present = _vector(au_present, len(AU_LABELS), "au_present")
    probs = _vector(au_probs, len(AU_LABELS), "au_probs")
    cells: list[str] = []
    for i in range(len(AU_LABELS)):
        cells.append("" if present is None else ("1" if bool(present[i]) else "0"))
        cells.append("" if probs is None else format_fixed(probs[i], SCORE_DECIMALS))
    return cells


def format_row(ann: FrameAnnotation) -> list[str]:
    """The cells of one table row, in :data:`CSV_COLUMNS` order (``len(CSV_COLUMNS)`` strings).

    Raises ValueError if an array field has the wrong length or ``expression`` is out
    of range (a pipeline bug, not a user mistake).
    """
    probs = _vector(ann.expr_probs, len(EXPR_LABELS), "expr_probs")
    row = [
        str(int(ann.frame)),
        format_fixed(ann.time_s, TIME_DECIMALS),
        str(int(ann.face_id)),
        format_fixed(ann.confidence, SCORE_DECIMALS),
        "1" if ann.success else "0",
        *_box_cells(ann.box_xyxy),
        format_fixed(ann.valence, SCORE_DECIMALS),
        format_fixed(ann.arousal, SCORE_DECIMALS),
        _expression_cell(ann.expression),
        *(
            [""] * len(EXPR_LABELS)
            if probs is None
            else [format_fixed(p, SCORE_DECIMALS) for p in probs]
        ),
        *_au_cells(ann.au_present, ann.au_probs),
    ]
    return row
