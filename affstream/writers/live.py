"""The live session log: the per-frame table plus when each frame arrived.

Columns: :data:`~.columns.CSV_COLUMNS` (the 44 of ``annotate``, same formatting) then
:data:`LIVE_COLUMNS`: ``arrival_s`` (seconds of the session clock when the frame came
off the decoder, 6 decimals), ``latency_ms`` (arrival to row written, 3 decimals) and
``status`` (``ok`` or ``dropped``). A JSON Lines log has the same keys. Both writers
run in the table writers' ``live`` mode: written straight to the final name and
flushed row by row, so a killed session leaves files whose every complete line parses.
"""

from __future__ import annotations

import csv
import json

from ..records import LiveRow
from .base import TableWriter
from .columns import CSV_COLUMNS, format_fixed, format_row, typed_row

LIVE_COLUMNS: tuple[str, ...] = ("arrival_s", "latency_ms", "status")
"""Columns a live log adds after the per-frame table's."""

LIVE_TABLE_COLUMNS: tuple[str, ...] = (*CSV_COLUMNS, *LIVE_COLUMNS)

LIVE_COLUMN_DOCS: dict[str, str] = {
    "arrival_s": "Seconds of the session clock (monotonic, from the start) when the frame came off the decoder.",
    "latency_ms": "Milliseconds from the frame's arrival to its row being written.",
    "status": "`ok`: the frame was analysed (with or without a face); `dropped`: a newer frame replaced it "
              "while the models were busy (no outputs).",
}


def _extra_cells(live: LiveRow) -> list[str]:
    return [format_fixed(live.arrival_s, 6), format_fixed(live.latency_ms, 3), live.status]


class LiveCsvWriter(TableWriter):
    """A live session's CSV (:data:`LIVE_TABLE_COLUMNS`); ``write`` takes a LiveRow."""

    format_name = "csv"

    def _start(self) -> None:
        self._csv = csv.writer(self._handle, lineterminator="\n")
        self._csv.writerow(LIVE_TABLE_COLUMNS)

    def _write_row(self, live: LiveRow) -> None:  # type: ignore[override]
        self._csv.writerow([*format_row(live.row), *_extra_cells(live)])


class LiveJsonlWriter(TableWriter):
    """A live session's JSON Lines log; ``write`` takes a LiveRow."""

    format_name = "jsonl"

    def _write_row(self, live: LiveRow) -> None:  # type: ignore[override]
        record = dict(zip(CSV_COLUMNS, typed_row(live.row), strict=True))
        record.update(arrival_s=round(float(live.arrival_s), 6), latency_ms=round(float(live.latency_ms), 3),
                      status=live.status)
        self._handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
