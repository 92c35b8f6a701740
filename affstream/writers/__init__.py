"""Output writers: per-frame CSV and the per-video JSON report, written atomically."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..files import AtomicFile, atomic_path, atomic_write_text
from .columns import COLUMN_DOCS, CSV_COLUMNS, format_row
from .csv import CsvWriter
from .report import dumps_report, to_jsonable, write_report

WRITERS: dict[str, type[CsvWriter]] = {"csv": CsvWriter}
"""Per-frame table writers by format name (``jsonl`` to come)."""


def get_writer(fmt: str, path: str | Path) -> CsvWriter:
    """Open a per-frame writer for format ``fmt`` ("csv") that publishes to ``path`` on close().

    Raises ConfigError for an unknown format.
    """
    key = fmt.strip().lower()
    if key not in WRITERS:
        known = ", ".join(sorted(WRITERS))
        raise ConfigError(f"unknown output format '{fmt}' (known: {known})")
    return WRITERS[key](path)


__all__ = [
    "AtomicFile",
    "COLUMN_DOCS",
    "CSV_COLUMNS",
    "CsvWriter",
    "WRITERS",
    "atomic_path",
    "atomic_write_text",
    "dumps_report",
    "format_row",
    "get_writer",
    "to_jsonable",
    "write_report",
]
