"""The per-frame table as CSV: a streaming writer and a reader for what it wrote.

Format: UTF-8, ``\\n`` line endings, one header line (:data:`~.columns.CSV_COLUMNS`,
44 columns, OpenFace names ``frame`` and ``face_id``), then one row per
:class:`~affstream.records.FrameAnnotation` as :func:`~.columns.format_row` renders it.
:class:`CsvWriter` publishes atomically by default or writes a live log
(:class:`~.base.TableWriter`). :func:`read_csv` / :func:`iter_csv` rebuild the
records from such a file, within its printed precision, and refuse any other CSV
with a one-line :class:`~affstream.errors.DataError`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import DataError
from ..records import FrameAnnotation
from ..validate import show
from .base import TableWriter
from .columns import CSV_COLUMNS, annotation_from_row, format_row, parse_cell

_NAMED = 3  # foreign / missing columns named in an error message, at most

# OWASP's rule for CSV files opened in a spreadsheet: a cell starting with one of these is
# taken as a formula, so a text cell (a file name, an error message) gets a leading "'"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(text: str) -> str:
    """A text cell of a CSV that holds names (manifests): a spreadsheet shows it as text,
    never evaluates it (``=HYPERLINK(...)`` -> ``'=HYPERLINK(...)``). :func:`read_text_cell`
    undoes it."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def read_text_cell(cell: str) -> str:
    """The text :func:`text_cell` was given."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_STARTS) else cell


class CsvWriter(TableWriter):
    """Write FrameAnnotations to ``path`` as CSV.

    ``mode="atomic"`` (default): nothing appears under ``path`` until close().
    ``mode="live"``: header and rows go straight to ``path``, flushed row by row.
    See :class:`~.base.TableWriter` for close / abort and the context manager.
    """

    format_name = "csv"

    def _start(self) -> None:
        self._csv = csv.writer(self._handle, lineterminator="\n")
        self._csv.writerow(CSV_COLUMNS)

    def _write_row(self, ann: FrameAnnotation) -> None:
        self._csv.writerow(format_row(ann))


def _some(names: Sequence[str]) -> str:
    # a quoted header field may hold a line break: escape it, the error stays one line
    shown = ", ".join(name if name.isprintable() else show(name, 40) for name in names[:_NAMED])
    return shown if len(names) <= _NAMED else f"{shown} and {len(names) - _NAMED} more"


def _header_problem(header: Sequence[str]) -> str:
    foreign = [name for name in header if name not in CSV_COLUMNS]
    missing = [name for name in CSV_COLUMNS if name not in header]
    parts = []
    if foreign:
        parts.append(f"foreign columns: {_some(foreign)}")
    if missing:
        parts.append(f"missing columns: {_some(missing)}")
    return "; ".join(parts) or "columns repeated or out of order"


def iter_csv(path: str | Path) -> Iterator[FrameAnnotation]:
    """Yield the FrameAnnotation of every row of a per-frame CSV that affstream wrote.

    Values come back within printed precision (see :func:`~.columns.annotation_from_row`).
    Raises DataError, naming the file (and the line and column of a bad cell), for
    an unreadable or empty file, a header other than ``CSV_COLUMNS`` (an OpenFace or
    py-feat CSV, say), a row with the wrong number of cells or an unparsable value.
    """
    for where, values in iter_csv_cells(path):
        try:
            yield annotation_from_row(values)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}; the file is damaged, write it again") from None


def iter_csv_cells(path: str | Path) -> Iterator[tuple[str, list]]:
    """Per data row of a per-frame CSV affstream wrote: ``("FILE, line N", cells)``, the
    cells typed as :func:`~.columns.parse_cell` reads them (int, float, str or None),
    exactly the printed values. Same checks and errors as :func:`iter_csv`. A live
    session's CSV (:mod:`.live`) is read too: its 44 table columns."""
    path = Path(path)
    hint = "give a per-frame CSV written by affstream annotate"
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: is empty; {hint}")
            from .live import LIVE_TABLE_COLUMNS

            width = len(header)
            if tuple(header) not in (CSV_COLUMNS, LIVE_TABLE_COLUMNS):
                raise DataError(f"{path}: not an affstream per-frame CSV ({_header_problem(header)}); {hint}")
            for cells in reader:
                where = f"{path}, line {reader.line_num}"
                if len(cells) == width:  # a live log's last columns (arrival, latency, status) are not read here
                    cells = cells[: len(CSV_COLUMNS)]
                if len(cells) != len(CSV_COLUMNS):
                    raise DataError(
                        f"{where}: {len(cells)} cells, expected {len(CSV_COLUMNS)}; "
                        "the file is damaged, write it again"
                    )
                try:
                    values = [parse_cell(c, t) for c, t in zip(CSV_COLUMNS, cells, strict=True)]
                except ValueError as exc:
                    raise DataError(f"{where}: {exc}; the file is damaged, write it again") from None
                yield where, values
    except UnicodeDecodeError:
        raise DataError(f"{path}: is not UTF-8 text; {hint}") from None
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV ({exc}); {hint}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); check the path") from None


def read_csv(path: str | Path) -> list[FrameAnnotation]:
    """All rows of :func:`iter_csv` as a list (same errors)."""
    return list(iter_csv(path))
