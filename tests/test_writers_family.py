"""Writer family: CSV and JSONL table writers (atomic and live), the readers, the factory,
and the JSON report module under its new name."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_writers import GOLDEN, golden_annotations

from affstream import writers
from affstream.errors import ConfigError, DataError, OutputError
from affstream.labels import AU_LABELS, EXPR_LABELS
from affstream.records import FrameAnnotation, RunCounts, RunReport, VideoInfo
from affstream.writers import (
    CSV_COLUMNS,
    WRITER_MODES,
    CsvWriter,
    JsonlWriter,
    TableWriter,
    dumps_json_report,
    format_row,
    get_writer,
    iter_csv,
    read_csv,
    read_jsonl,
    typed_row,
    write_json_report,
)
from affstream.writers.columns import COLUMN_KINDS

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
READERS = {"csv": read_csv, "jsonl": read_jsonl}
FORMATS = sorted(READERS)

# Printed precision (see writers/columns.py): 6 decimals for seconds, 4 for scores,
# 2 for pixels; the box's far corner adds the error of x and of the width.
TIME_TOL = 5e-7 + 1e-12
SCORE_TOL = 5e-5 + 1e-7
BOX_TOL = 0.01 + 5e-4


def write_rows(fmt: str, path: Path, rows: list[FrameAnnotation], **kwargs) -> None:
    with get_writer(fmt, path, **kwargs) as writer:
        for ann in rows:
            writer.write(ann)


def strict_json(text: str):
    def reject(token: str):
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=reject)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def one_line_error(excinfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# --- values within printed precision ------------------------------------------------


def assert_same_within_precision(got: FrameAnnotation, want: FrameAnnotation) -> None:
    assert (got.frame_index, got.track_id, got.success) == (want.frame_index, want.track_id, bool(want.success))
    for a, b, tol in ((got.time_s, want.time_s, TIME_TOL), (got.confidence, want.confidence, SCORE_TOL)):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol
    for a, b in ((got.valence, want.valence), (got.arousal, want.arousal)):
        if b is None or not math.isfinite(b):
            assert a is None
        else:
            assert isinstance(a, float) and abs(a - b) <= SCORE_TOL
    assert got.expression == (None if want.expression is None else int(want.expression))
    for name, tol in (("box_xyxy", BOX_TOL), ("expr_probs", SCORE_TOL), ("au_probs", SCORE_TOL)):
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None
        else:
            assert a.dtype == np.float32 and a.shape == np.shape(b)
            np.testing.assert_allclose(a, b, rtol=0, atol=tol)
    if want.au_present is None:
        assert got.au_present is None
    else:
        assert got.au_present.dtype == bool
        np.testing.assert_array_equal(got.au_present, np.asarray(want.au_present).astype(bool))


def random_annotations(seed: int, count: int = 40) -> list[FrameAnnotation]:
    """Random rows over the value ranges the pipeline produces, with the edge values
    (0, -0, 1, tiny, NaN, None) mixed in."""
    rng = np.random.default_rng(seed)

    def score(low: float = 0.0) -> float:
        special = [0.0, -0.0, 1.0, 1e-9, 0.00005, 0.99995, low]
        return float(rng.choice(special)) if rng.random() < 0.2 else float(rng.uniform(low, 1.0))

    def maybe(value, p_none: float = 0.25):
        return None if rng.random() < p_none else value

    rows = []
    time_s = 0.0
    for frame in range(1, count + 1):
        time_s += float(rng.uniform(0.0, 0.1))
        if rng.random() < 0.15:
            rows.append(FrameAnnotation(frame_index=frame, time_s=time_s, track_id=-1, confidence=0.0, success=False))
            continue
        x1, y1 = rng.uniform(0.0, 3840.0), rng.uniform(0.0, 2160.0)
        w, h = rng.uniform(1.0, 1000.0), rng.uniform(1.0, 1000.0)
        expr = maybe(rng.dirichlet(np.ones(len(EXPR_LABELS))).astype(np.float32))
        au = maybe(rng.uniform(0.0, 1.0, len(AU_LABELS)).astype(np.float32))
        present = None if au is None else maybe(au >= rng.uniform(0.2, 0.8), 0.1)
        valence = maybe(float("nan") if rng.random() < 0.05 else score(-1.0))
        rows.append(
            FrameAnnotation(
                frame_index=frame,
                time_s=time_s,
                track_id=int(rng.integers(0, 20)),
                confidence=score(),
                success=True,
                box_xyxy=np.array([x1, y1, x1 + w, y1 + h], dtype=np.float32),
                valence=valence,
                arousal=maybe(np.float32(score(-1.0))),
                expression=None if expr is None else int(np.argmax(expr)),
                expr_probs=expr,
                au_probs=au,
                au_present=present,
            )
        )
    return rows


# --- CSV round trip ---------------------------------------------------------------


def test_csv_round_trip_golden(tmp_path):
    out = tmp_path / "a.csv"
    want = golden_annotations()
    write_rows("csv", out, want)
    assert out.read_bytes() == (GOLDEN / "annotations.csv").read_bytes()
    got = read_csv(out)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert_same_within_precision(a, b)
        assert format_row(a) == format_row(b)  # the printed values are a fixed point
    assert [format_row(a) for a in iter_csv(out)] == [format_row(a) for a in got]


def test_golden_csv_file_reads_back(tmp_path):
    got = read_csv(GOLDEN / "annotations.csv")
    assert [format_row(a) for a in got] == [format_row(a) for a in golden_annotations()]
    assert got[0].box_xyxy is None and got[0].expression is None and got[0].au_present is None
    assert got[1].expression == EXPR_LABELS.index("Happiness")
    assert got[4].valence is None  # NaN was written as an empty cell


@pytest.mark.parametrize("seed", range(25))
def test_csv_round_trip_random(tmp_path, seed):
    want = random_annotations(seed)
    out = tmp_path / "a.csv"
    write_rows("csv", out, want)
    got = read_csv(out)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert_same_within_precision(a, b)
    again = tmp_path / "b.csv"
    write_rows("csv", again, got)
    assert again.read_bytes() == out.read_bytes()


# --- JSONL ------------------------------------------------------------------------


def test_jsonl_lines_equal_csv_cells(tmp_path):
    anns = golden_annotations() + random_annotations(99)
    write_rows("csv", tmp_path / "a.csv", anns)
    write_rows("jsonl", tmp_path / "a.jsonl", anns)
    raw = (tmp_path / "a.jsonl").read_text(encoding="utf-8")
    assert raw.endswith("\n") and "NaN" not in raw and "Infinity" not in raw
    lines = raw.splitlines()
    csv_lines = (tmp_path / "a.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(lines) == len(csv_lines) == len(anns)
    for line, csv_line in zip(lines, csv_lines, strict=True):
        record = strict_json(line)
        assert tuple(record) == CSV_COLUMNS
        for column, cell in zip(CSV_COLUMNS, csv_line.split(","), strict=True):
            value = record[column]
            kind = COLUMN_KINDS[column]
            if cell == "":
                assert value is None, column
            elif kind in ("int", "flag"):
                assert type(value) is int and str(value) == cell, column
            elif kind == "float":
                assert type(value) is float and value == float(cell), column
            else:
                assert value == cell, column


def test_typed_row_types():
    row = dict(zip(CSV_COLUMNS, typed_row(golden_annotations()[1]), strict=True))
    assert row["frame"] == 2 and row["face_id"] == 0 and row["success"] == 1
    assert type(row["success"]) is int and type(row["AU01_c"]) is int
    assert row["face_height"] == 139.62 and row["confidence"] == 0.9987
    assert row["expression"] == "Happiness"
    empty = typed_row(golden_annotations()[0])
    assert empty[:5] == [1, 0.0, -1, 0.0, 0] and empty[5:] == [None] * (len(CSV_COLUMNS) - 5)


def test_jsonl_round_trip_matches_csv(tmp_path):
    anns = golden_annotations() + random_annotations(7)
    write_rows("jsonl", tmp_path / "a.jsonl", anns)
    write_rows("csv", tmp_path / "a.csv", anns)
    from_jsonl = read_jsonl(tmp_path / "a.jsonl")
    assert [format_row(a) for a in from_jsonl] == [format_row(a) for a in read_csv(tmp_path / "a.csv")]
    for a, b in zip(from_jsonl, anns, strict=True):
        assert_same_within_precision(a, b)


def test_jsonl_reader_tolerates_only_a_truncated_last_line(tmp_path):
    out = tmp_path / "a.jsonl"
    anns = golden_annotations()
    write_rows("jsonl", out, anns)
    raw = out.read_bytes()
    lines = raw.splitlines(keepends=True)
    # killed in the middle of the last row: the rows before it stand
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][:37])
    assert [format_row(a) for a in read_jsonl(out)] == [format_row(a) for a in anns[:-1]]
    # a complete last row without its newline is still a row
    out.write_bytes(raw[:-1])
    assert len(read_jsonl(out)) == len(anns)
    # an empty file holds no rows
    out.write_bytes(b"")
    assert read_jsonl(out) == []


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda lines: [lines[0][:30] + b"\n", *lines[1:]], "line 1"),  # truncated, not last
        (lambda lines: [*lines[:2], b"\n", *lines[2:]], "line 3"),  # blank line
        (lambda lines: [*lines[:-1], lines[-1].replace(b'"valence":-1.0', b'"valence":NaN')], "NaN"),
        (lambda lines: [*lines[:-1], lines[-1][:-1].replace(b'"frame":', b'"frm":')], "columns"),
        (lambda lines: [*lines[:1], lines[1].replace(b'"success":1', b'"success":true'), *lines[2:]], "success"),
        (lambda lines: [*lines[:1], lines[1].replace(b'"Happiness"', b'"Joy"'), *lines[2:]], "expression"),
        (lambda lines: [*lines[:1], b"[1, 2]\n", *lines[2:]], "line 2"),
    ],
)
def test_jsonl_reader_refuses_damage(tmp_path, damage, needle):
    out = tmp_path / "a.jsonl"
    write_rows("jsonl", out, golden_annotations())
    out.write_bytes(b"".join(damage(out.read_bytes().splitlines(keepends=True))))
    with pytest.raises(DataError) as excinfo:
        read_jsonl(out)
    one_line_error(excinfo, str(out), needle)


# --- live mode --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_live_rows_are_on_disk_after_each_write(tmp_path, fmt):
    out = tmp_path / f"live.{fmt}"
    anns = golden_annotations()
    writer = get_writer(fmt, out, mode="live")
    assert writer.mode == "live" and writer.temp_path is None
    assert out.exists() and READERS[fmt](out) == []  # header (CSV) already on disk
    for count, ann in enumerate(anns, start=1):
        writer.write(ann)
        assert writer.rows == count
        got = READERS[fmt](out)  # read while the writer is still open
        assert [format_row(a) for a in got] == [format_row(a) for a in anns[:count]]
    writer.close()
    writer.close()  # idempotent
    assert [format_row(a) for a in READERS[fmt](out)] == [format_row(a) for a in anns]
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="closed"):
        writer.write(anns[0])


def test_live_csv_is_byte_identical_to_atomic(tmp_path):
    write_rows("csv", tmp_path / "live.csv", golden_annotations(), mode="live")
    assert (tmp_path / "live.csv").read_bytes() == (GOLDEN / "annotations.csv").read_bytes()


_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from test_writers import golden_annotations
from affstream.writers import get_writer

rows = golden_annotations()
writer = get_writer(sys.argv[1], sys.argv[2], mode="live")
for i in range(100_000):
    writer.write(rows[i % len(rows)])
    print(writer.rows, flush=True)
    time.sleep(0.001)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("fmt", FORMATS)
def test_live_file_survives_sigkill(tmp_path, fmt):
    out = tmp_path / f"killed.{fmt}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, fmt, str(out), str(TESTS)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        written = 0
        while written < 30:
            line = proc.stdout.readline()
            assert line, f"writer process ended early: {proc.stderr.read()}"
            written = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    raw = out.read_bytes()
    assert raw.endswith(b"\n")  # no half-written row
    lines = raw.decode("utf-8").splitlines()
    if fmt == "jsonl":
        assert all(tuple(strict_json(line)) == CSV_COLUMNS for line in lines)
    got = READERS[fmt](out)  # every line parses, with the strict readers
    assert len(got) >= written
    cycle = golden_annotations()
    assert [format_row(a) for a in got] == [format_row(cycle[i % len(cycle)]) for i in range(len(got))]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_live_refuses_existing_file_unless_overwrite(tmp_path, fmt):
    out = tmp_path / f"log.{fmt}"
    out.write_bytes(b"earlier session\n")
    with pytest.raises(OutputError) as excinfo:
        get_writer(fmt, out, mode="live")
    one_line_error(excinfo, str(out), "overwrite", "another name")
    assert out.read_bytes() == b"earlier session\n"
    write_rows(fmt, out, golden_annotations()[:2], mode="live", overwrite=True)
    assert len(READERS[fmt](out)) == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_live_abort_keeps_the_rows_written(tmp_path, fmt):
    out = tmp_path / f"log.{fmt}"
    anns = golden_annotations()
    with pytest.raises(RuntimeError, match="camera lost"), get_writer(fmt, out, mode="live") as writer:
        for ann in anns[:3]:
            writer.write(ann)
        raise RuntimeError("camera lost")
    assert writer.done
    assert [format_row(a) for a in READERS[fmt](out)] == [format_row(a) for a in anns[:3]]
    writer.close()  # after abort: nothing more to do
    with pytest.raises(ValueError):
        writer.write(anns[0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_live_bad_targets_are_output_errors(tmp_path, fmt):
    with pytest.raises(OutputError) as excinfo:
        get_writer(fmt, tmp_path / "nope" / f"a.{fmt}", mode="live")
    one_line_error(excinfo, "does not exist")
    with pytest.raises(OutputError) as excinfo:
        get_writer(fmt, tmp_path, mode="live", overwrite=True)
    one_line_error(excinfo, "folder")


# --- atomic mode (default, unchanged) -----------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_atomic_mode_publishes_on_close_only(tmp_path, fmt):
    out = tmp_path / f"a.{fmt}"
    out.write_bytes(b"previous complete output\n")
    writer = get_writer(fmt, out)
    assert writer.mode == "atomic"
    for ann in golden_annotations():
        writer.write(ann)
    assert out.read_bytes() == b"previous complete output\n"
    assert writer.temp_path.exists() and writer.temp_path.name.startswith(f".a.{fmt}.partial-")
    writer.close()
    assert len(READERS[fmt](out)) == len(golden_annotations())
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_atomic_mode_exception_leaves_previous_file(tmp_path, fmt):
    out = tmp_path / f"a.{fmt}"
    out.write_bytes(b"previous complete output\n")
    with pytest.raises(KeyboardInterrupt), get_writer(fmt, out, mode="atomic") as writer:
        writer.write(golden_annotations()[1])
        raise KeyboardInterrupt
    assert out.read_bytes() == b"previous complete output\n"
    assert leftovers(tmp_path) == []


def test_atomic_jsonl_matches_typed_rows(tmp_path):
    out = tmp_path / "a.jsonl"
    write_rows("jsonl", out, golden_annotations())
    records = [strict_json(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [list(r.values()) for r in records] == [typed_row(a) for a in golden_annotations()]


# --- CSV reader refuses what affstream did not write ---------------------------------

OPENFACE_HEADER = (
    "frame,face_id,timestamp,confidence,success,gaze_0_x,gaze_0_y,gaze_0_z,pose_Tx,AU01_r,AU02_r,AU01_c"
)
PYFEAT_HEADER = "frame,FaceRectX,FaceRectY,FaceRectWidth,FaceRectHeight,FaceScore,anger,disgust,AU01,AU02"


@pytest.mark.parametrize("header", [OPENFACE_HEADER, PYFEAT_HEADER])
def test_foreign_csv_is_refused(tmp_path, header):
    path = tmp_path / "other.csv"
    path.write_text(header + "\n" + ",".join(["1"] * len(header.split(","))) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        read_csv(path)
    message = one_line_error(excinfo, str(path), "foreign columns", "missing columns", "more", "affstream")
    assert len(message) < 400


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("", ("empty",)),
        (",".join(CSV_COLUMNS[::-1]) + "\n", ("out of order",)),
        (",".join(CSV_COLUMNS[:-1]) + "\n", ("missing columns: AU26_p",)),
    ],
)
def test_bad_csv_header_is_refused(tmp_path, text, needles):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        read_csv(path)
    one_line_error(excinfo, str(path), *needles)


def _golden_lines() -> list[str]:
    return (GOLDEN / "annotations.csv").read_text(encoding="utf-8").splitlines()


def _replace_cell(line: str, column: str, value: str) -> str:
    cells = line.split(",")
    cells[CSV_COLUMNS.index(column)] = value
    return ",".join(cells)


@pytest.mark.parametrize(
    ("line_no", "edit", "needles"),
    [
        (3, lambda s: s + ",", ("line 3", "45 cells", "expected 44")),
        (2, lambda s: s.rsplit(",", 1)[0], ("line 2", "43 cells")),
        (4, lambda s: _replace_cell(s, "valence", "abc"), ("line 4", "valence", "abc")),
        (4, lambda s: _replace_cell(s, "valence", "1e-05"), ("line 4", "valence")),
        (4, lambda s: _replace_cell(s, "arousal", "nan"), ("line 4", "arousal")),
        (5, lambda s: _replace_cell(s, "expression", "Joy"), ("line 5", "expression", "Joy")),
        (3, lambda s: _replace_cell(s, "success", "2"), ("line 3", "success")),
        (3, lambda s: _replace_cell(s, "frame", ""), ("line 3", "frame", "empty")),
        (3, lambda s: _replace_cell(s, "face_id", "0.5"), ("line 3", "face_id")),
        (3, lambda s: _replace_cell(s, "face_width", ""), ("line 3", "face_width")),
        (3, lambda s: _replace_cell(s, "expr_fear", ""), ("line 3", "expr_fear")),
    ],
)
def test_bad_csv_row_is_refused(tmp_path, line_no, edit, needles):
    lines = _golden_lines()
    lines[line_no - 1] = edit(lines[line_no - 1])
    path = tmp_path / "damaged.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        read_csv(path)
    one_line_error(excinfo, str(path), *needles)


def test_unreadable_csv_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as excinfo:
        read_csv(tmp_path / "missing.csv")
    one_line_error(excinfo, "missing.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(",".join(CSV_COLUMNS).encode() + b"\n\xe9\xff\n")
    with pytest.raises(DataError) as excinfo:
        read_csv(latin)
    one_line_error(excinfo, str(latin), "UTF-8")


def test_header_only_csv_has_no_rows(tmp_path):
    out = tmp_path / "empty.csv"
    get_writer("csv", out).close()
    assert read_csv(out) == []


# --- factory ------------------------------------------------------------------------


def test_factory_formats_and_modes(tmp_path):
    assert isinstance(get_writer(" JSONL ", tmp_path / "a.jsonl", mode="LIVE"), JsonlWriter)
    csv_writer = get_writer("csv", tmp_path / "a.csv")
    assert isinstance(csv_writer, CsvWriter) and isinstance(csv_writer, TableWriter)
    csv_writer.abort()
    assert WRITER_MODES == ("atomic", "live")
    assert set(writers.WRITERS) == {"csv", "json", "jsonl"}


def test_factory_errors_list_the_known_choices(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        get_writer("parquet", tmp_path / "a.parquet")
    one_line_error(excinfo, "parquet", "csv, json, jsonl")
    with pytest.raises(ConfigError) as excinfo:
        get_writer("csv", tmp_path / "a.csv", mode="append")
    one_line_error(excinfo, "append", "atomic, live")
    with pytest.raises(ConfigError):
        CsvWriter(tmp_path / "b.csv", mode="fast")
    assert list(tmp_path.iterdir()) == []


# --- JSON report under its new name -----------------------------------------------------


def _run_report() -> RunReport:
    source = VideoInfo(
        path="clips/café.mp4", codec="h264", width=640, height=360, rotation_deg=0,
        average_fps=30.0, frame_count=72, duration_s=2.4, time_base="1/15360",
    )
    return RunReport(
        affstream_version="0.1.0", meaningful=False, warning="random weights", source=source,
        outputs={"csv": Path("out/clip.csv")}, config={"thresholds": (0.5, 0.5)}, device="cpu",
        backbone={"name": "smoke"}, head={"kind": "mlp"}, counts=RunCounts(frames_decoded=72, rows=73),
        wall_s=1.23456789, frames_per_s=float("inf"), stage_times={"decode": {"s": np.float32(0.5), "calls": 3}},
    )


def test_json_report_accepts_mapping_or_to_dict(tmp_path):
    report = _run_report()
    text = dumps_json_report(report)
    assert text == dumps_json_report(report.to_dict()) and text.endswith("}\n")
    data = strict_json(text)
    assert list(data) == list(report.to_dict())
    assert data["timings"]["wall_s"] == 1.234568 and data["timings"]["frames_per_s"] is None
    assert data["outputs"] == {"csv": "out/clip.csv"} and data["counts"]["rows"] == 73
    assert strict_json(dumps_json_report({"run": report}))["run"] == data  # nested to_dict() too
    write_json_report(tmp_path / "r.json", report)
    assert (tmp_path / "r.json").read_text(encoding="utf-8") == text
    with pytest.raises(TypeError, match="report"):
        dumps_json_report([1, 2])


def test_old_report_names_are_gone():
    assert importlib.util.find_spec("affstream.writers.report") is None
    for name in ("write_report", "dumps_report", "report"):
        assert not hasattr(writers, name)
    assert set(writers.__all__) <= set(dir(writers))


def test_json_table_is_one_array_of_the_jsonl_records(tmp_path):
    from affstream.writers import JsonWriter
    from affstream.writers.jsonl import dumps_row

    anns = golden_annotations()
    with get_writer("json", tmp_path / "t.json") as writer:
        assert isinstance(writer, JsonWriter)
        for ann in anns:
            writer.write(ann)
        assert not (tmp_path / "t.json").exists()  # atomic: published on close
    records = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert records == [json.loads(dumps_row(ann)) for ann in anns]
    assert [list(r) for r in records] == [list(CSV_COLUMNS)] * len(anns)
    with get_writer("json", tmp_path / "empty.json"):
        pass
    assert json.loads((tmp_path / "empty.json").read_text(encoding="utf-8")) == []


def test_json_table_has_no_live_mode(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        get_writer("json", tmp_path / "t.json", mode="live")
    one_line_error(excinfo, "jsonl")
    assert list(tmp_path.iterdir()) == []
