"""The per-frame table: its columns, their documentation, and the row in both directions.

One row per face per frame, or one row for a frame without a face (``face_id`` -1,
``success`` 0, every measurement empty). Every table writer (CSV, JSONL), every reader
and the README's column table use :data:`CSV_COLUMNS`, :data:`COLUMN_DOCS`,
:func:`format_row` and :func:`annotation_from_row`, so they cannot drift apart.

Names. The table keeps the OpenFace column names: ``frame`` holds
:attr:`FrameAnnotation.frame_index` (1-based) and ``face_id`` holds
:attr:`FrameAnnotation.track_id` (-1 on a frame without a face). The face box is written
as ``face_x``, ``face_y`` (top-left corner), ``face_width``, ``face_height`` in pixels,
from ``box_xyxy``.

Formatting rules: fixed decimals (6 for the timestamp in seconds, 4 for scores and
probabilities, 2 for pixels), never scientific notation, never ``-0.0000`` (a value
that rounds to zero is written unsigned); a value that is ``None`` (no face, or a task
the head does not predict) or not finite is an empty cell.

Typed rows. :func:`typed_row` is the same row as Python values (int, float, str or
None), parsed back from the formatted cells so that a JSONL row holds exactly the
numbers the CSV prints. :func:`annotation_from_row` rebuilds a
:class:`~affstream.records.FrameAnnotation` from typed values, within printed precision.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
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
BOX_COLUMNS: tuple[str, ...] = ("face_x", "face_y", "face_width", "face_height")
AU_PRESENT_COLUMNS: tuple[str, ...] = tuple(f"{stem}_c" for stem in AU_COLUMN_STEMS)
AU_PROB_COLUMNS: tuple[str, ...] = tuple(f"{stem}_p" for stem in AU_COLUMN_STEMS)

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
    for label, column in zip(EXPR_LABELS, EXPR_COLUMNS, strict=True):
        docs[column] = f"Probability of the expression {label} in [0, 1]; the 8 sum to 1."
    for label, stem in zip(AU_LABELS, AU_COLUMN_STEMS, strict=True):
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
        str(int(ann.frame_index)),
        format_fixed(ann.time_s, TIME_DECIMALS),
        str(int(ann.track_id)),
        format_fixed(ann.confidence, SCORE_DECIMALS),
        "1" if ann.success else "0",
        *_box_cells(ann.box_xyxy),
        format_fixed(ann.valence, SCORE_DECIMALS),
        format_fixed(ann.arousal, SCORE_DECIMALS),
        ann.expression_label or "",
        *(
            [""] * len(EXPR_LABELS)
            if probs is None
            else [format_fixed(p, SCORE_DECIMALS) for p in probs]
        ),
        *_au_cells(ann.au_present, ann.au_probs),
    ]
    return row


# --------------------------------------------------------------------- typed values

Cell = int | float | str | None
"""One typed cell: int, finite float, expression name, or None for an empty cell."""

INT, FLAG, FLOAT, LABEL = "int", "flag", "float", "label"


def _column_kinds() -> dict[str, str]:
    kinds = {column: FLOAT for column in CSV_COLUMNS}
    kinds.update(frame=INT, face_id=INT, success=FLAG, expression=LABEL)
    kinds.update({column: FLAG for column in AU_PRESENT_COLUMNS})
    return kinds


COLUMN_KINDS: dict[str, str] = _column_kinds()
"""Value kind of every column, in :data:`CSV_COLUMNS` order: ``"int"``, ``"flag"`` (0 or
1), ``"float"`` (finite) or ``"label"`` (one of ``labels.EXPR_LABELS``)."""

REQUIRED_COLUMNS: frozenset[str] = frozenset({"frame", "face_id", "success"})
"""Columns that are never empty; any other cell may be."""

_INT_TEXT = re.compile(r"-?[0-9]+")
_FLOAT_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def parse_cell(column: str, text: str) -> Cell:
    """The typed value of one cell as :func:`format_row` writes it ("" -> None).

    Only the forms the writer produces are accepted (no exponent, no spaces, no
    ``nan``); ValueError naming the column otherwise. Kinds and ranges are checked by
    :func:`annotation_from_row`.
    """
    if text == "":
        return None
    kind = COLUMN_KINDS[column]
    if kind == LABEL:
        return text
    try:
        if kind in (INT, FLAG):
            if _INT_TEXT.fullmatch(text):
                return int(text)
        elif _FLOAT_TEXT.fullmatch(text):
            return float(text)
    except ValueError:  # more digits than Python converts
        pass
    what = "an integer" if kind in (INT, FLAG) else "a fixed-point number"
    raise ValueError(f"column {column}: {text[:24]!r} is not {what}")


def typed_row(ann: FrameAnnotation) -> list[Cell]:
    """:func:`format_row` as typed values: floats are the printed decimals exactly.

    ``len(CSV_COLUMNS)`` values: int for ``frame``, ``face_id``, ``success`` and the
    ``AU*_c`` flags, float for every measurement, the expression name as str, None
    for an empty cell.
    """
    return [parse_cell(column, text) for column, text in zip(CSV_COLUMNS, format_row(ann), strict=True)]


def _check_value(column: str, value: Any) -> None:
    if value is None:
        if column in REQUIRED_COLUMNS:
            raise ValueError(f"column {column}: empty, but every row has a value there")
        return
    kind = COLUMN_KINDS[column]
    if kind == LABEL:
        if not isinstance(value, str) or value not in EXPR_LABELS:
            raise ValueError(f"column {column}: {value!r} is not one of {', '.join(EXPR_LABELS)}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"column {column}: {value!r} is not a number")
    elif kind == FLOAT:
        if not _finite(value):
            raise ValueError(f"column {column}: {str(value)[:24]} is not a finite number")
    elif not isinstance(value, int):
        raise ValueError(f"column {column}: {value!r} is not an integer")
    elif kind == FLAG and value not in (0, 1):
        raise ValueError(f"column {column}: {value!r} is neither 0 nor 1")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _group(row: dict[str, Cell], columns: tuple[str, ...], what: str) -> list[Any] | None:
    """The values of ``columns``, all set, or None when all are empty."""
    values = [row[column] for column in columns]
    empty = [column for column, value in zip(columns, values, strict=True) if value is None]
    if len(empty) == len(columns):
        return None
    if empty:
        raise ValueError(f"column {empty[0]}: empty while other {what} columns have values")
    return values


def _float_or_nan(value: Cell) -> float:
    return math.nan if value is None else float(value)


def annotation_from_row(values: Sequence[Cell]) -> FrameAnnotation:
    """Rebuild the FrameAnnotation of one typed row (the inverse of :func:`typed_row`).

    ``values`` are in :data:`CSV_COLUMNS` order. The box comes back as (4,) float32
    xyxy pixels (``face_x + face_width`` ...), probabilities as float32 arrays,
    ``AU*_c`` as a (12,) bool array, the expression name as its index; an empty
    measurement is None (an empty ``timestamp`` or ``confidence`` is NaN, as a NaN
    was written empty). Raises ValueError naming the first offending column.
    """
    if len(values) != len(CSV_COLUMNS):
        raise ValueError(f"{len(values)} values, expected {len(CSV_COLUMNS)}")
    row = dict(zip(CSV_COLUMNS, values, strict=True))
    for column, value in row.items():
        _check_value(column, value)
    box = _group(row, BOX_COLUMNS, "face box")
    expr = _group(row, EXPR_COLUMNS, "expression probability")
    present = _group(row, AU_PRESENT_COLUMNS, "AU presence")
    au_probs = _group(row, AU_PROB_COLUMNS, "AU probability")
    label = row["expression"]
    return FrameAnnotation(
        frame_index=int(row["frame"]),
        time_s=_float_or_nan(row["timestamp"]),
        track_id=int(row["face_id"]),
        confidence=_float_or_nan(row["confidence"]),
        success=bool(row["success"]),
        box_xyxy=None if box is None else np.array(
            [box[0], box[1], box[0] + box[2], box[1] + box[3]], dtype=np.float32
        ),
        valence=None if row["valence"] is None else float(row["valence"]),
        arousal=None if row["arousal"] is None else float(row["arousal"]),
        expression=None if label is None else EXPR_LABELS.index(str(label)),
        expr_probs=None if expr is None else np.array(expr, dtype=np.float32),
        au_probs=None if au_probs is None else np.array(au_probs, dtype=np.float32),
        au_present=None if present is None else np.array(present, dtype=bool),
    )
