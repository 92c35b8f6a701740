"""Reports for a whole output folder: one page per video and an ``index.html``.

The folder is what ``affstream annotate -o OUT`` or ``affstream corpus -o OUT`` wrote. A
corpus folder mirrors the input tree and holds ``manifest.csv``: its rows name every
input with its status and outputs (failed and skipped inputs included, so the index
lists them too), and its ``path`` column finds the videos. Without a manifest every
affstream CSV under the folder is taken (other CSVs are left alone).

A video whose page cannot be made (a damaged CSV) is listed as failed in the index and
the others go on; :class:`IndexResult` tells the caller, who exits non-zero.
"""

from __future__ import annotations

import csv
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path

from ..errors import AffstreamError, DataError
from ..files import atomic_write_text
from ..labels import EXPR_LABELS
from ..writers.columns import CSV_COLUMNS
from ..writers.csv import read_text_cell
from .outputs import check_output
from .report import ReportResult, clock, page, read_run_report, report_path, write_report

_LOG = logging.getLogger("affstream")

INDEX_NAME = "index.html"
MANIFEST_NAME = "manifest.csv"  # as affstream corpus writes it
_HEADER_MAX = 1 << 16
REPORT_FAILED = "report failed"


@dataclass
class IndexEntry:
    """One video of the folder: ``name`` (its path relative to the folder, or as the
    manifest gives it), ``csv`` and ``report`` paths (None when absent), ``status``
    ("done", "failed", or a manifest status such as "not a video"), ``error`` (one
    line) and the ``result`` of its page."""

    name: str
    csv: Path | None
    video: Path | None = None
    status: str = "done"
    error: str = ""
    result: ReportResult | None = None
    meaningful: bool | None = None


@dataclass(frozen=True)
class IndexResult:
    """The index page ``path`` and every entry; ``failed``: the entries whose page failed
    (not the inputs a corpus run had already failed)."""

    path: Path
    entries: list[IndexEntry]

    @property
    def failed(self) -> list[IndexEntry]:
        return [e for e in self.entries if e.status == REPORT_FAILED]


def is_affstream_csv(path: Path) -> bool:
    """Whether the first line of ``path`` is the header of affstream's per-frame CSV."""
    try:
        with path.open("r", encoding="utf-8", newline="") as handle:
            header = next(csv.reader([handle.readline(_HEADER_MAX)]), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header is not None and tuple(h.strip("\r\n") for h in header) == CSV_COLUMNS


def find_entries(folder: str | Path) -> list[IndexEntry]:
    """The videos of an output folder (see the module docstring), in path order."""
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        return _manifest_entries(folder, manifest)
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if name.endswith(".csv") and not name.startswith(".") and is_affstream_csv(path):
                found.append(IndexEntry(name=_video_name(folder, path), csv=path))
    return found


def _video_name(folder: Path, csv_path: Path) -> str:
    """The video's name for the index: its file name from the run report (else the CSV's
    stem), in the CSV's folder relative to ``folder``."""
    source = ((read_run_report(csv_path) or {}).get("source") or {}).get("path")
    name = Path(source).name if isinstance(source, str) and source else csv_path.stem
    return (csv_path.parent.relative_to(folder) / name).as_posix()


def _manifest_entries(folder: Path, manifest: Path) -> list[IndexEntry]:
    entries = []
    try:
        with manifest.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AffstreamError(f"{manifest}: cannot be read ({exc}); run affstream corpus again") from None
    for row in rows:
        name = read_text_cell(row.get("path") or "") or "?"
        table = read_text_cell(row.get("csv") or "")
        status = row.get("status") or ""
        if not table:
            entries.append(IndexEntry(name=name, csv=None, status=status or "failed",
                                      error=read_text_cell(row.get("error") or "")))
            continue
        csv_path = _inside(folder, table)
        if csv_path is None:  # a manifest is read back, so it is untrusted: pages stay inside FOLDER
            entries.append(IndexEntry(name=name, csv=None, status="failed",
                                      error=f"{manifest}: its row for {name} names the CSV {table!r} outside {folder}; "
                                            "run affstream corpus again"))
            continue
        entries.append(IndexEntry(name=name, csv=csv_path, video=_video_named(name, csv_path),
                                  status="done" if status in ("done", "skipped") else status))
    return sorted(entries, key=lambda e: e.name)


def _inside(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` if that stays inside ``folder`` (no absolute path, no ``..``
    or link out of it), else None."""
    if not relative or Path(relative).is_absolute():
        return None
    path = folder / relative
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return None
    return path


def _video_named(name: str, csv_path: Path) -> Path | None:
    """The manifest's video, only if it is the file the CSV's run report says was annotated
    (the manifest alone cannot make a page open an arbitrary file)."""
    source = ((read_run_report(csv_path) or {}).get("source") or {}).get("path")
    if not name or not isinstance(source, str) or not Path(name).is_file():
        return None
    try:
        return Path(name) if os.path.samefile(name, source) else None
    except OSError:
        return None


def write_reports(
    folder: str | Path, *, overwrite: bool = False, on_entry: Callable[[IndexEntry], None] | None = None
) -> IndexResult:
    """Write every video's page beside its CSV, then ``FOLDER/index.html``.

    ``on_entry`` is called after each video. Raises OutputError when the index cannot be
    written (e.g. another tool's ``index.html`` is there and not ``overwrite``), before any
    page is made, DataError when the folder holds no affstream CSV; a failing page is
    recorded in its entry (status "report failed").
    """
    folder = Path(folder)
    index = check_output(folder / INDEX_NAME, inputs=[], overwrite=overwrite)
    entries = find_entries(folder)
    if not entries:
        raise DataError(
            f"{folder}: holds no affstream CSV and no {MANIFEST_NAME}; give an output folder of affstream annotate or corpus"
        )
    for entry in entries:
        if entry.csv is not None and entry.status == "done":
            try:
                entry.result = write_report(entry.csv, report_path(entry.csv), video=entry.video, overwrite=overwrite)
            except AffstreamError as exc:
                entry.status, entry.error = REPORT_FAILED, str(exc)
                _LOG.debug("report: %s", exc)
            run = read_run_report(entry.csv)
            entry.meaningful = None if run is None else bool(run.get("meaningful", True))
        if on_entry is not None:
            on_entry(entry)
    atomic_write_text(index, index_html(folder, entries))
    return IndexResult(index, entries)


def _faces_text(result: ReportResult) -> str:
    parts = []
    for face in result.summary.faces[:4]:
        text = f"face {face.track_id}"
        if face.dominant is not None:
            text += f": {EXPR_LABELS[face.dominant]} {face.expr_share[face.dominant]:.0%}"
        if face.valence_mean is not None:
            text += f", V {face.valence_mean:+.2f} A {face.arousal_mean:+.2f}"
        parts.append(text)
    more = len(result.summary.faces) - 4
    return "; ".join(parts) + (f"; {more} more" if more > 0 else "")


def index_html(folder: Path, entries: list[IndexEntry]) -> str:
    """The index page: one row per video, linking its page."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for entry in entries:
        result = entry.result
        if result is not None:
            link = os.path.relpath(result.path, folder).replace(os.sep, "/")
            name = f'<a href="{escape(link)}">{escape(entry.name)}</a>'
            s = result.summary
            cells = [
                name,
                escape(entry.status),
                f'<td class="num">{escape(clock(s.duration_s))}</td>',
                f'<td class="num">{s.frames}</td>',
                f'<td class="num">{len(s.faces)}</td>',
                escape(_faces_text(result)),
                f'<td class="num">{result.key_frames}</td>',
            ]
        else:
            status = f'<span class="status-failed">{escape(entry.status)}</span>'
            cells = [escape(entry.name), status, "", "", "", escape(entry.error), ""]
        rows.append("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>")
    made = sum(e.result is not None for e in entries)
    random = sum(e.meaningful is False for e in entries)
    banner = (
        (
            f'<div class="banner" role="alert">{random} of {made} video(s) were annotated with random model '
            "weights (a smoke/test run): their affect outputs are meaningless.</div>"
        )
        if random
        else ""
    )
    header = (
        "<tr><th>video</th><th>status</th><th>duration</th><th>frames</th><th>faces</th>"
        "<th>per face: most frequent expression, mean valence / arousal</th><th>key frames</th></tr>"
    )
    body = (
        f'<header><h1>{escape(folder.name or str(folder))}</h1><p class="sub">affstream reports · {escape(now)} · '
        f"{made} page(s), {len(entries) - made} without</p></header>{banner}"
        f'<table class="videos"><thead>{header}</thead><tbody>{"".join(rows)}</tbody></table>'
        "<footer>Each page is self-contained: it needs no network.</footer>"
    )
    return page(f"{folder.name}: affstream reports", body)
