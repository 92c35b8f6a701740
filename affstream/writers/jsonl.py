"""The per-frame table as JSON Lines: a streaming writer and a reader for what it wrote.

Format: UTF-8, one JSON object per :class:`~affstream.records.FrameAnnotation` per line,
``\\n``-terminated, no header. Keys are :data:`~.columns.CSV_COLUMNS` in order; values
are :func:`~.columns.typed_row`'s: ints for ``frame``, ``face_id``, ``success`` and the
``AU*_c`` flags, floats rounded to exactly the decimals the CSV prints (so CSV and JSONL
agree cell for cell), the expression name as a string, ``null`` for an empty cell.
Strict JSON: never ``NaN`` or ``Infinity``.

:func:`read_jsonl` tolerates a truncated last line (a live log whose process was
killed mid-row) and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..records import FrameAnnotation
from .base import TableWriter
from .columns import CSV_COLUMNS, annotation_from_row, typed_row


def dumps_row(ann: FrameAnnotation) -> str:
    """One JSONL line for ``ann``, without its newline (compact separators)."""
    record = dict(zip(CSV_COLUMNS, typed_row(ann), strict=True))
    return json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class JsonlWriter(TableWriter):
    """Write FrameAnnotations to ``path`` as JSON Lines.

    ``mode="atomic"`` (default): nothing appears under ``path`` until close().
    ``mode="live"``: rows go straight to ``path``, flushed line by line.
    See :class:`~.base.TableWriter` for close / abort and the context manager.
    """

    format_name = "jsonl"

    def _write_row(self, ann: FrameAnnotation) -> None:
        self._handle.write(dumps_row(ann) + "\n")


class _Pairs(list):
    """A JSON object's (key, value) pairs in file order (duplicates kept)."""


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")


def _decode(raw: bytes) -> Any:
    """The JSON value of one line; ValueError if it is not UTF-8 strict JSON."""
    return json.loads(raw.decode("utf-8"), object_pairs_hook=_Pairs, parse_constant=_reject_constant)


def _annotation(pairs: Any) -> FrameAnnotation:
    if not isinstance(pairs, _Pairs) or tuple(key for key, _ in pairs) != CSV_COLUMNS:
        raise ValueError("not an object with the per-frame columns as keys, in order")
    return annotation_from_row([value for _, value in pairs])


def iter_jsonl(path: str | Path) -> Iterator[FrameAnnotation]:
    """Yield the FrameAnnotation of every line of a per-frame JSONL file affstream wrote.

    A last line that lacks its newline and is not valid JSON (a live log whose
    process was killed mid-row) is skipped. Raises DataError naming the file and line
    for anything else that is not such a row, and for an unreadable file. An empty
    file holds no rows.
    """
    path = Path(path)
    hint = "give a per-frame JSONL file written by affstream"
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    value = _decode(raw)
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
                    if not raw.endswith(b"\n"):
                        return  # truncated by a killed writer: the rows before it stand
                    raise DataError(f"{path}, line {number}: not JSON ({exc}); {hint}") from None
                try:
                    row = _annotation(value)
                except ValueError as exc:
                    raise DataError(f"{path}, line {number}: {exc}; {hint}") from None
                yield row
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); check the path") from None


def read_jsonl(path: str | Path) -> list[FrameAnnotation]:
    """All rows of :func:`iter_jsonl` as a list (same errors)."""
    return list(iter_jsonl(path))
