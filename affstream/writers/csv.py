"""Streaming per-frame CSV writer, published atomically when complete.

Rows go straight to a temporary file beside the target (memory stays flat however
long the video); :meth:`CsvWriter.close` renames it onto the final name. Format:
UTF-8, ``\\n`` line endings, one header line (:data:`~.columns.CSV_COLUMNS`), then
one row per :class:`~affstream.records.FrameAnnotation` as :func:`~.columns.format_row`
renders it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import TracebackType

from ..records import FrameAnnotation
from ..files import AtomicFile
from .columns import CSV_COLUMNS, format_row


class CsvWriter:
    """Write FrameAnnotations to ``path`` as CSV; nothing appears under ``path`` until close().

    Use as a context manager: a normal exit closes (publishes) the file, an exception
    aborts it (the temporary file is deleted, a previous ``path`` is left untouched).
    """

    format_name = "csv"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._out = AtomicFile(self.path, encoding="utf-8", newline="")
        self._csv = csv.writer(self._out.handle, lineterminator="\n")
        self._rows = 0
        try:
            self._csv.writerow(CSV_COLUMNS)
        except BaseException:
            self._out.discard()
            raise

    @property
    def rows(self) -> int:
        """Data rows written so far (the header not counted)."""
        return self._rows

    @property
    def temp_path(self) -> Path:
        """Where the rows are written until close()."""
        return self._out.temp_path

    def write(self, ann: FrameAnnotation) -> None:
        """Append one row. Raises ValueError after close() or abort()."""
        if self._out.done:
            raise ValueError(f"{self.path}: CSV writer is already closed")
        self._csv.writerow(format_row(ann))
        self._rows += 1

    def close(self) -> None:
        """Flush, fsync and atomically rename the temporary file onto ``path``. Idempotent."""
        self._out.commit()

    def abort(self) -> None:
        """Delete the temporary file; ``path`` is untouched. No-op after close()."""
        self._out.discard()

    def __enter__(self) -> "CsvWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
