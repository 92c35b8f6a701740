"""Files affstream reads back are untrusted, and the CSVs it writes with names are safe to
open in a spreadsheet."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from affstream.corpus.state import MANIFEST_COLUMNS, write_manifest
from affstream.pictures.index import find_entries
from affstream.writers.csv import read_text_cell, text_cell

GOLDEN_CSV = Path(__file__).parent / "golden" / "annotations.csv"


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\",\"y\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx",
                                  "plain.mp4", "'quoted", "", "a=b"])
def test_text_cells_round_trip_and_never_start_a_formula(text):
    cell = text_cell(text)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert read_text_cell(cell) == text


def _manifest(folder: Path, rows: list[dict]) -> None:
    full = [{column: row.get(column, "") for column in MANIFEST_COLUMNS} for row in rows]
    write_manifest(folder, full)


def test_the_manifest_neutralises_names_a_spreadsheet_would_evaluate(tmp_path):
    _manifest(tmp_path, [{"path": "=cmd|' /C calc'!A0.mp4", "status": "failed", "error": "-bad", "csv": "@x.csv",
                          "json": "+x.json", "size": "10"}])
    with (tmp_path / "manifest.csv").open(newline="") as handle:
        row = next(csv.DictReader(handle))
    assert all(not row[c].startswith(("=", "+", "-", "@")) for c in MANIFEST_COLUMNS)
    assert row["size"] == "10"


def test_report_index_keeps_pages_inside_the_folder(tmp_path):
    """A crafted manifest row naming a CSV outside FOLDER (absolute, ``..``, a link out)
    fails that row; nothing outside is used; a row inside still works."""
    folder = tmp_path / "out"
    folder.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(GOLDEN_CSV, outside / "x.csv")
    shutil.copy(GOLDEN_CSV, folder / "good.csv")
    (folder / "link").symlink_to(outside, target_is_directory=True)
    _manifest(folder, [
        {"path": "a.mp4", "status": "done", "csv": str(outside / "x.csv")},
        {"path": "b.mp4", "status": "done", "csv": "../elsewhere/x.csv"},
        {"path": "c.mp4", "status": "done", "csv": "link/x.csv"},
        {"path": "d.mp4", "status": "done", "csv": "good.csv"},
        {"path": "/etc/passwd", "status": "done", "csv": "good.csv"},
    ])
    entries = {entry.name: entry for entry in find_entries(folder)}
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        assert entries[name].csv is None and entries[name].status == "failed"
        assert "outside" in entries[name].error
    assert entries["d.mp4"].csv == folder / "good.csv"
    # the manifest alone cannot make a page open any file as the video
    assert entries["/etc/passwd"].video is None
