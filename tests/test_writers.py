"""Writers: CSV columns and formatting (golden file), JSON report (golden file), atomicity."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from affstream.errors import AffstreamError, ConfigError
from affstream.files import atomic_path, atomic_write_text
from affstream.labels import AU_COLUMN_STEMS, EXPR_LABELS
from affstream.records import FrameAnnotation
from affstream.writers import (
    COLUMN_DOCS,
    CSV_COLUMNS,
    CsvWriter,
    format_row,
    get_writer,
    write_json_report,
)
from affstream.writers.columns import format_fixed

GOLDEN = Path(__file__).parent / "golden"


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def golden_annotations() -> list[FrameAnnotation]:
    """Fixed rows covering every formatting case the golden CSV pins down."""
    expr_a = f32(0.05, 0.02, 0.01, 0.02, 0.80, 0.03, 0.05, 0.02)
    au_a = f32(0.9, 0.1, 0.5, 0.73, 0.0, 1.0, 0.61, 0.05, 0.2, 0.3, 0.99, 0.45)
    # face 1: tiny probabilities and negative zero must print as plain 0.0000
    expr_b = f32(1e-9, 0.0, 0.25, 0.25, 0.25, 0.25, 1e-9, -0.0)
    au_b = f32(1e-9, 0.5, 1e-5, 0.00005, -0.0, 0.12345, 0.99999, 0.4, 0.6, 0.0, 1.0, 0.5)
    return [
        # 1: a frame with no face
        FrameAnnotation(frame_index=1, time_s=0.0, track_id=-1, confidence=0.0, success=False),
        # 2: two faces with every task predicted
        FrameAnnotation(
            frame_index=2, time_s=1001 / 30000, track_id=0, confidence=0.99871, success=True,
            box_xyxy=f32(100.25, 50.5, 220.75, 190.125), valence=0.31234, arousal=-0.5,
            expression=4, expr_probs=expr_a, au_probs=au_a, au_present=au_a >= 0.5,
        ),
        FrameAnnotation(
            frame_index=2, time_s=1001 / 30000, track_id=1, confidence=0.9, success=True,
            box_xyxy=f32(400.0, 60.0, 480.5, 160.0), valence=-0.0, arousal=-0.00004,
            expression=2, expr_probs=expr_b, au_probs=au_b,
            au_present=np.array([0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1, 1], dtype=np.uint8),
        ),
        # 3: a head that predicts only expressions (va and AUs empty)
        FrameAnnotation(
            frame_index=3, time_s=2002 / 30000, track_id=0, confidence=0.95, success=True,
            box_xyxy=f32(101.0, 51.0, 221.0, 191.0), expression=0,
            expr_probs=f32(0.6, 0.1, 0.05, 0.05, 0.1, 0.05, 0.025, 0.025),
        ),
        # 4: tiny timestamp (no scientific notation), va-only head, NaN valence -> empty,
        #    numpy scalar inputs, box touching the frame's origin
        FrameAnnotation(
            frame_index=4, time_s=1e-7, track_id=2, confidence=np.float32(0.5), success=True,
            box_xyxy=f32(0.0, 0.0, 64.0, 64.0), valence=float("nan"), arousal=np.float32(1.0),
        ),
        # 5: a long video: large timestamp and frame index, valence at -1
        FrameAnnotation(
            frame_index=123457, time_s=4119.852396, track_id=17, confidence=1.0, success=True,
            box_xyxy=f32(1279.5, 719.25, 1920.0, 1080.0), valence=-1.0, arousal=0.0,
        ),
    ]


GOLDEN_REPORT = {
    "affstream_version": "0.1.0",
    "source": {"path": Path("clips/café.mp4"), "width": 640, "height": 360, "average_fps": 29.97002997002997},
    "config": {"track": {"iou_min": 0.3, "max_missed_frames": 30}, "thresholds": (0.6, 0.7, 0.7)},
    "counts": {"frames": np.int64(72), "faces": np.int32(70), "rows": 73, "tracks": 1},
    "timings_s": {"decode": np.float64(0.125), "embed": np.float32(1.5), "head": float("nan")},
    "au_thresholds": np.array([0.5, 0.25], dtype=np.float32),
    "per_track_frames": {np.int64(0): 70},
    "meaningful": np.bool_(False),
    "fps_peak": float("inf"),
    "warnings": [],
    "note": None,
}


def write_csv(path: Path, rows: list[FrameAnnotation]) -> None:
    with CsvWriter(path) as writer:
        for ann in rows:
            writer.write(ann)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


# --- columns -----------------------------------------------------------------------


def test_column_order():
    assert CSV_COLUMNS[:12] == (
        "frame", "timestamp", "face_id", "confidence", "success",
        "face_x", "face_y", "face_width", "face_height", "valence", "arousal", "expression",
    )
    assert CSV_COLUMNS[12:20] == tuple("expr_" + label.lower() for label in EXPR_LABELS)
    assert CSV_COLUMNS[20:24] == ("AU01_c", "AU01_p", "AU02_c", "AU02_p")
    assert CSV_COLUMNS[-2:] == ("AU26_c", "AU26_p")
    assert len(CSV_COLUMNS) == 12 + 8 + 2 * len(AU_COLUMN_STEMS) == 44
    assert len(set(CSV_COLUMNS)) == len(CSV_COLUMNS)


def test_column_docs_cover_every_column_in_order():
    assert tuple(COLUMN_DOCS) == CSV_COLUMNS
    assert all(doc.strip() and "\n" not in doc for doc in COLUMN_DOCS.values())


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [
        (None, 4, ""),
        (float("nan"), 4, ""),
        (float("inf"), 4, ""),
        (-0.0, 4, "0.0000"),
        (-0.00004, 4, "0.0000"),
        (-0.00005001, 4, "-0.0001"),
        (1e-9, 4, "0.0000"),
        (1e-7, 6, "0.000000"),
        (1e20, 2, "100000000000000000000.00"),
        (np.float32(0.5), 4, "0.5000"),
        (-10.0, 2, "-10.00"),
    ],
)
def test_format_fixed(value, decimals, text):
    assert format_fixed(value, decimals) == text


def test_format_row_no_face_is_empty_measurements():
    row = format_row(FrameAnnotation(frame_index=9, time_s=0.3, track_id=-1, confidence=0.0, success=False))
    assert row[:5] == ["9", "0.300000", "-1", "0.0000", "0"]
    assert row[5:] == [""] * (len(CSV_COLUMNS) - 5)


def test_format_row_rejects_wrong_shapes():
    base = {"frame_index": 1, "time_s": 0.0, "track_id": 0, "confidence": 1.0, "success": True}
    with pytest.raises(ValueError, match="expr_probs"):
        format_row(FrameAnnotation(**base, expr_probs=np.zeros(7, dtype=np.float32)))
    with pytest.raises(ValueError, match="expression"):
        format_row(FrameAnnotation(**base, expression=8))
    with pytest.raises(ValueError, match="box_xyxy"):
        format_row(FrameAnnotation(**base, box_xyxy=np.zeros((2, 2), dtype=np.float32)))


# --- CSV ---------------------------------------------------------------------------


def test_csv_matches_golden_file(tmp_path):
    out = tmp_path / "annotations.csv"
    write_csv(out, golden_annotations())
    assert out.read_bytes() == (GOLDEN / "annotations.csv").read_bytes()


def test_csv_reads_back_with_stdlib(tmp_path):
    out = tmp_path / "a.csv"
    anns = golden_annotations()
    write_csv(out, anns)
    raw = out.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    assert b"e-" not in raw and b"e+" not in raw and b"-0.0000," not in raw
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + len(anns)
    assert all(len(r) == len(CSV_COLUMNS) for r in rows)
    table = [dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows[1:]]
    assert [r["frame"] for r in table] == ["1", "2", "2", "3", "4", "123457"]
    assert table[1]["expression"] == "Happiness"
    assert float(table[1]["face_width"]) == pytest.approx(120.5)
    assert math.isclose(sum(float(table[1][c]) for c in CSV_COLUMNS[12:20]), 1.0, abs_tol=1e-3)


def test_csv_writer_reports_rows_and_header_only_file(tmp_path):
    out = tmp_path / "empty.csv"
    writer = get_writer("CSV", out)
    assert isinstance(writer, CsvWriter)
    assert not out.exists()
    writer.close()
    assert out.read_text(encoding="utf-8") == ",".join(CSV_COLUMNS) + "\n"
    assert writer.rows == 0
    with pytest.raises(ValueError):
        writer.write(golden_annotations()[0])


def test_unknown_format_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="xlsx"):
        get_writer("xlsx", tmp_path / "a.xlsx")


# --- atomicity -----------------------------------------------------------------------


def test_exception_inside_writer_leaves_nothing(tmp_path):
    out = tmp_path / "a.csv"
    with pytest.raises(RuntimeError, match="boom"), CsvWriter(out) as writer:
        writer.write(golden_annotations()[0])
        assert writer.temp_path.exists()
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_exception_keeps_previous_complete_file(tmp_path):
    out = tmp_path / "a.csv"
    out.write_bytes(b"previous complete output\n")
    with pytest.raises(KeyboardInterrupt), CsvWriter(out) as writer:
        for ann in golden_annotations():
            writer.write(ann)
        raise KeyboardInterrupt
    assert out.read_bytes() == b"previous complete output\n"
    assert leftovers(tmp_path) == []


def test_unfinished_writer_never_shows_final_name(tmp_path):
    out = tmp_path / "a.csv"
    writer = CsvWriter(out)
    for ann in golden_annotations():
        writer.write(ann)
    assert not out.exists()
    tmp = writer.temp_path
    assert tmp.parent == tmp_path and tmp.name.startswith(".a.csv.partial-")
    assert tmp.exists()
    writer.abort()
    assert not tmp.exists() and not out.exists()
    writer.close()  # after abort: nothing to publish
    assert not out.exists()


def test_close_replaces_previous_file_and_cleans_up(tmp_path):
    out = tmp_path / "a.csv"
    out.write_text("old\n")
    write_csv(out, golden_annotations())
    assert out.read_bytes() == (GOLDEN / "annotations.csv").read_bytes()
    assert leftovers(tmp_path) == []


def test_output_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "r.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_missing_output_folder_is_a_user_error(tmp_path):
    with pytest.raises(AffstreamError, match="does not exist"):
        CsvWriter(tmp_path / "nope" / "a.csv")
    with pytest.raises(AffstreamError, match="folder"):
        write_json_report(tmp_path, {})


def test_atomic_path_success_and_failure(tmp_path):
    out = tmp_path / "overlay.mp4"
    with atomic_path(out) as tmp:
        assert tmp.exists() and tmp.suffix == ".mp4" and tmp.name.startswith(".overlay.mp4.partial-")
        tmp.write_bytes(b"video")
        assert not out.exists()
    assert out.read_bytes() == b"video"
    with pytest.raises(OSError), atomic_path(out) as tmp:
        tmp.write_bytes(b"half")
        raise OSError("disk full")
    assert out.read_bytes() == b"video"
    assert leftovers(tmp_path) == []


# --- JSON report -------------------------------------------------------------------------


def test_report_matches_golden_file(tmp_path):
    out = tmp_path / "report.json"
    write_json_report(out, GOLDEN_REPORT)
    assert out.read_bytes() == (GOLDEN / "report.json").read_bytes()


def test_report_is_strict_json_with_plain_values(tmp_path):
    out = tmp_path / "report.json"
    write_json_report(out, GOLDEN_REPORT)

    def reject(token: str):
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads(out.read_text(encoding="utf-8"), parse_constant=reject)
    assert list(data) == list(GOLDEN_REPORT)  # insertion order kept
    assert data["timings_s"] == {"decode": 0.125, "embed": 1.5, "head": None}
    assert data["counts"]["frames"] == 72 and isinstance(data["counts"]["frames"], int)
    assert data["meaningful"] is False and data["fps_peak"] is None
    assert data["au_thresholds"] == [0.5, 0.25]
    assert data["per_track_frames"] == {"0": 70}
    assert data["source"]["path"] == "clips/café.mp4"


def test_report_rejects_unknown_types(tmp_path):
    with pytest.raises(TypeError, match=r"report\.bad"):
        write_json_report(tmp_path / "r.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_abandoned_writer_removes_its_temp_file(tmp_path):
    import gc

    writer = CsvWriter(tmp_path / "a.csv")
    writer.write(golden_annotations()[1])
    tmp = writer.temp_path
    assert tmp.exists()
    del writer
    gc.collect()
    assert not tmp.exists()
    assert list(tmp_path.iterdir()) == []
