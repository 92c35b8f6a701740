"""JSON output: the per-video JSON report (``OUT/<stem>.json``), and the per-frame
table as one JSON array (:class:`JsonWriter`).

The report is written atomically.

The pipeline assembles the content (source metadata, configuration, backbone and head
identity, counts, timings, the ``meaningful`` flag), as a mapping or as an object with
a ``to_dict()`` method (:class:`affstream.records.RunReport`); this module only turns
it into strict JSON: an object with ``to_dict()`` becomes its dict, numpy scalars and
arrays become plain numbers and lists, tuples become lists, paths become strings,
other dataclasses become objects, and NaN / infinity become ``null`` (JSON has no
such numbers). Keys keep their insertion order; indent 2; UTF-8; one trailing newline.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..files import atomic_write_text
from ..records import FrameAnnotation
from .base import TableWriter
from .jsonl import dumps_row


def to_jsonable(value: Any, where: str = "report") -> Any:
    """A copy of ``value`` made only of dict, list, str, int, float (finite), bool and None.

    ``where`` names the position for the error message. Raises TypeError for a value
    with no JSON form (a pipeline bug).
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), where)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where)
    if isinstance(value, PurePath):
        return str(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return to_jsonable(to_dict(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where)
    if isinstance(value, Mapping):
        return {_key(k, where): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} has no JSON form")


def _key(key: Any, where: str) -> str:
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, str):
        return key
    if isinstance(key, (bool, int, float)) or key is None:
        return json.dumps(key)
    raise TypeError(f"{where}: dictionary key {key!r} is not a string or number")


def dumps_json_report(report: Mapping[str, Any] | Any) -> str:
    """The report (a mapping, or an object with ``to_dict()``) as strict JSON text.

    Indent 2, insertion order, trailing newline. TypeError if ``report`` is neither
    or holds a value with no JSON form (a pipeline bug).
    """
    clean = to_jsonable(report)
    if not isinstance(clean, dict):
        raise TypeError(f"report: {type(report).__name__} is not a mapping and has no to_dict()")
    return json.dumps(clean, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n"


def write_json_report(path: str | Path, report: Mapping[str, Any] | Any) -> None:
    """Write ``report`` to ``path`` as JSON, atomically (temporary file + fsync + rename)."""
    atomic_write_text(path, dumps_json_report(report))


class JsonWriter(TableWriter):
    """The per-frame table as one JSON array of row objects (the JSONL records, see
    :mod:`.jsonl`), streamed to disk (memory stays flat) and published atomically.

    Atomic mode only: a half-written array is not JSON, so for a live log use JSONL.
    """

    format_name = "json"

    def __init__(self, path: str | Path, *, mode: str = "atomic", overwrite: bool = False) -> None:
        if str(mode).strip().lower() == "live":
            raise ConfigError(f"{path}: the json format has no live mode (a cut-off array is not JSON); "
                              "use jsonl for a live log")
        super().__init__(path, mode=mode, overwrite=overwrite)

    def _start(self) -> None:
        self._handle.write("[")

    def _write_row(self, ann: FrameAnnotation) -> None:
        self._handle.write(("\n" if self._rows == 0 else ",\n") + dumps_row(ann))

    def _finish(self) -> None:
        self._handle.write("\n]\n" if self._rows else "]\n")
