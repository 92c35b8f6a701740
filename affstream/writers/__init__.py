"""Output writers: the per-frame table (CSV, JSONL) and the per-video JSON report.

Per-frame table writers share :class:`TableWriter` (``write``, ``rows``, ``close``,
``abort``, context manager) and its two modes: ``"atomic"`` (default; the file appears
complete under its name on close) and ``"live"`` (a session log written straight to
its name, flushed row by row). :func:`get_writer` opens one by format name.
:func:`read_csv` / :func:`read_jsonl` read back what the table writers wrote.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import WRITER_MODES, TableWriter, check_mode
from .columns import COLUMN_DOCS, CSV_COLUMNS, annotation_from_row, format_row, typed_row
from .csv import CsvWriter, iter_csv, read_csv
from .json import JsonWriter, dumps_json_report, to_jsonable, write_json_report
from .jsonl import JsonlWriter, iter_jsonl, read_jsonl

WRITERS: dict[str, type[TableWriter]] = {"csv": CsvWriter, "json": JsonWriter, "jsonl": JsonlWriter}
"""Per-frame table writers by format name."""


def get_writer(fmt: str, path: str | Path, *, mode: str = "atomic", overwrite: bool = False) -> TableWriter:
    """Open a per-frame writer for format ``fmt`` ("csv", "json" or "jsonl") on ``path``.

    ``mode`` is "atomic" (publish on close) or "live" (a log written and flushed row by
    row; an existing ``path`` is refused unless ``overwrite``). ConfigError for an
    unknown format or mode; OutputError if ``path`` cannot be created.
    """
    key = str(fmt).strip().lower()
    if key not in WRITERS:
        raise ConfigError(f"unknown output format '{fmt}' (known: {', '.join(sorted(WRITERS))})")
    return WRITERS[key](path, mode=check_mode(mode), overwrite=overwrite)


__all__ = [
    "COLUMN_DOCS",
    "CSV_COLUMNS",
    "WRITERS",
    "WRITER_MODES",
    "CsvWriter",
    "JsonWriter",
    "JsonlWriter",
    "TableWriter",
    "annotation_from_row",
    "dumps_json_report",
    "format_row",
    "get_writer",
    "iter_csv",
    "iter_jsonl",
    "read_csv",
    "read_jsonl",
    "to_jsonable",
    "typed_row",
    "write_json_report",
]
