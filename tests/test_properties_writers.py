"""Property tests: the per-frame table round trip (CSV, JSONL, JSON) and CSV header checks.

Any valid list of FrameAnnotations written and read back comes back within the printed
precision (:mod:`affstream.writers.columns`: 6 decimals for the timestamp, 4 for scores
and probabilities, 2 for pixels), absent values stay None, the CSV and JSONL readers
agree exactly, and writing the read rows again gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affstream.errors import DataError
from affstream.labels import AU_LABELS, EXPR_LABELS
from affstream.records import FrameAnnotation
from affstream.writers import CSV_COLUMNS, format_row, get_writer, read_csv, read_jsonl, typed_row

MAX_PIXEL = 8192.0
MAX_TIME = 1e6
# Half a unit in the last printed decimal, plus room for the float32 storage of arrays.
TIME_TOL = 0.5e-6 + 1e-9
SCORE_TOL = 0.5e-4 + 1e-7
PIXEL_TOL = 0.5e-2 + MAX_PIXEL * 2.0**-23  # x1, y1: one rounding, float32 on read
PIXEL_FAR_TOL = 2 * 0.5e-2 + 3 * MAX_PIXEL * 2.0**-23  # x2 = x1 + width: two roundings

ROUND_TRIP = settings(max_examples=30, deadline=None)

unit = st.floats(0.0, 1.0, allow_nan=False, width=32)
signed_unit = st.floats(-1.0, 1.0, allow_nan=False)
pixel = st.floats(0.0, MAX_PIXEL, allow_nan=False, width=32)


@st.composite
def boxes(draw) -> np.ndarray:
    """(4,) float32 xyxy with 0 <= x1 <= x2 <= MAX_PIXEL (same for y)."""
    x1, x2 = sorted((draw(pixel), draw(pixel)))
    y1, y2 = sorted((draw(pixel), draw(pixel)))
    return np.array([x1, y1, x2, y2], dtype=np.float32)


@st.composite
def expr_probs(draw) -> np.ndarray:
    """(8,) float32 probabilities in [0, 1] summing to 1 (up to float32 rounding)."""
    raw = np.array(draw(st.lists(unit, min_size=len(EXPR_LABELS), max_size=len(EXPR_LABELS))), dtype=np.float64)
    if raw.sum() == 0:
        raw[draw(st.integers(0, len(EXPR_LABELS) - 1))] = 1.0
    return np.clip(raw / raw.sum(), 0.0, 1.0).astype(np.float32)


@st.composite
def face_rows(draw, frame_index: int, time_s: float, track_id: int) -> FrameAnnotation:
    """A face row with each task (va, expr, au) independently present or absent."""
    with_va, with_expr, with_au = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    probs = draw(expr_probs()) if with_expr else None
    au = np.array(draw(st.lists(unit, min_size=len(AU_LABELS), max_size=len(AU_LABELS))), dtype=np.float32)
    threshold = draw(st.floats(0.0, 1.0))
    return FrameAnnotation(
        frame_index=frame_index,
        time_s=time_s,
        track_id=track_id,
        confidence=draw(unit),
        success=True,
        box_xyxy=draw(boxes()),
        valence=draw(signed_unit) if with_va else None,
        arousal=draw(signed_unit) if with_va else None,
        expression=int(np.argmax(probs)) if with_expr else None,
        expr_probs=probs,
        au_probs=au if with_au else None,
        au_present=(au >= threshold) if with_au else None,
    )


@st.composite
def tables(draw, max_frames: int = 5) -> list[FrameAnnotation]:
    """Rows of consecutive frames: each frame a no-face row or 1..3 face rows."""
    frame = draw(st.integers(1, 10**7))
    time_s = draw(st.floats(0.0, MAX_TIME, allow_nan=False))
    rows: list[FrameAnnotation] = []
    for _ in range(draw(st.integers(0, max_frames))):
        n_faces = draw(st.integers(0, 3))
        if n_faces == 0:
            rows.append(FrameAnnotation(frame_index=frame, time_s=time_s, track_id=-1, confidence=0.0, success=False))
        else:
            ids = draw(st.lists(st.integers(0, 10**6), min_size=n_faces, max_size=n_faces, unique=True))
            rows.extend(draw(face_rows(frame, time_s, tid)) for tid in sorted(ids))
        frame += draw(st.integers(1, 3))
        time_s = min(MAX_TIME, time_s + draw(st.floats(0.0, 1.0)))
    return rows


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (function-scoped fixtures do not reset between examples)."""
    with tempfile.TemporaryDirectory(prefix="affstream-prop-") as folder:
        yield Path(folder)


def write(fmt: str, path: Path, rows: list[FrameAnnotation]) -> bytes:
    with get_writer(fmt, path) as writer:
        for ann in rows:
            writer.write(ann)
    assert writer.rows == len(rows)
    return path.read_bytes()


def assert_close_or_none(got, want, tol: float, what: str) -> None:
    if want is None:
        assert got is None, f"{what}: None came back as {got!r}"
        return
    assert got is not None, f"{what}: {want!r} came back as None"
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                               rtol=0, atol=tol, err_msg=what)


def assert_within_precision(got: FrameAnnotation, want: FrameAnnotation) -> None:
    assert got.frame_index == want.frame_index
    assert got.track_id == want.track_id
    assert got.success is bool(want.success)
    assert abs(got.time_s - want.time_s) <= TIME_TOL
    assert abs(got.confidence - want.confidence) <= SCORE_TOL
    if want.box_xyxy is None:
        assert got.box_xyxy is None
    else:
        assert got.box_xyxy is not None and got.box_xyxy.dtype == np.float32
        assert_close_or_none(got.box_xyxy[:2], want.box_xyxy[:2], PIXEL_TOL, "box x1, y1")
        assert_close_or_none(got.box_xyxy[2:], want.box_xyxy[2:], PIXEL_FAR_TOL, "box x2, y2")
    assert_close_or_none(got.valence, want.valence, SCORE_TOL, "valence")
    assert_close_or_none(got.arousal, want.arousal, SCORE_TOL, "arousal")
    assert got.expression == want.expression
    assert_close_or_none(got.expr_probs, want.expr_probs, SCORE_TOL, "expr_probs")
    assert_close_or_none(got.au_probs, want.au_probs, SCORE_TOL, "au_probs")
    if want.au_present is None:
        assert got.au_present is None
    else:
        assert got.au_present is not None and got.au_present.dtype == bool
        np.testing.assert_array_equal(got.au_present, want.au_present)


def assert_identical(a: FrameAnnotation, b: FrameAnnotation) -> None:
    """Field by field equality, arrays by value and dtype (no tolerance)."""
    for name in FrameAnnotation.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray), name
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            assert x == y and type(x) is type(y), f"{name}: {x!r} != {y!r}"


# ------------------------------------------------------------------------- round trip


@ROUND_TRIP
@given(tables())
def test_csv_round_trip_within_printed_precision(rows):
    """Written as CSV and read back, every row is the same within printed precision
    (6 decimals for time, 4 for scores, 2 for pixels) and absent values stay None."""
    with scratch() as folder:
        write("csv", folder / "t.csv", rows)
        back = read_csv(folder / "t.csv")
    assert len(back) == len(rows)
    for got, want in zip(back, rows, strict=True):
        assert_within_precision(got, want)


@ROUND_TRIP
@given(tables())
def test_csv_and_jsonl_readers_agree(rows):
    """The same rows written as CSV and as JSONL read back to identical records, and the
    JSONL values are typed_row's (the numbers the CSV prints)."""
    with scratch() as folder:
        write("csv", folder / "t.csv", rows)
        jsonl = write("jsonl", folder / "t.jsonl", rows)
        from_csv = read_csv(folder / "t.csv")
        from_jsonl = read_jsonl(folder / "t.jsonl")
    assert len(from_csv) == len(from_jsonl) == len(rows)
    for a, b in zip(from_csv, from_jsonl, strict=True):
        assert_identical(a, b)
    lines = jsonl.decode("utf-8").splitlines()
    assert [list(json.loads(line).values()) for line in lines] == [typed_row(ann) for ann in rows]


@ROUND_TRIP
@given(tables())
def test_json_array_holds_the_jsonl_records(rows):
    """The "json" format is one array whose objects are exactly the JSONL lines' objects,
    keys in CSV_COLUMNS order."""
    with scratch() as folder:
        jsonl = write("jsonl", folder / "t.jsonl", rows)
        array = json.loads(write("json", folder / "t.json", rows).decode("utf-8"))
    records = [json.loads(line) for line in jsonl.decode("utf-8").splitlines()]
    assert array == records
    assert all(tuple(record) == CSV_COLUMNS for record in array)


@ROUND_TRIP
@given(tables())
def test_rewriting_read_rows_is_byte_identical(rows):
    """Reading a table and writing the rows again reproduces the file byte for byte
    (CSV, JSONL and JSON alike): the printed form is a fixed point."""
    with scratch() as folder:
        first = {fmt: write(fmt, folder / f"a.{fmt}", rows) for fmt in ("csv", "jsonl", "json")}
        back_csv = read_csv(folder / "a.csv")
        back_jsonl = read_jsonl(folder / "a.jsonl")
        assert write("csv", folder / "b.csv", back_csv) == first["csv"]
        assert write("jsonl", folder / "b.jsonl", back_jsonl) == first["jsonl"]
        assert write("json", folder / "b.json", back_csv) == first["json"]
        assert write("csv", folder / "c.csv", back_jsonl) == first["csv"]
    assert [format_row(a) for a in back_csv] == [format_row(a) for a in rows]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 10**7), st.floats(0.0, MAX_TIME), st.booleans(), st.data())
def test_format_row_cells(frame, time_s, face, data):
    """format_row gives len(CSV_COLUMNS) cells; no cell uses an exponent or a signed zero;
    a no-face row has every measurement empty."""
    if face:
        ann = data.draw(face_rows(frame, time_s, data.draw(st.integers(0, 10**6))))
    else:
        ann = FrameAnnotation(frame_index=frame, time_s=time_s, track_id=-1, confidence=0.0, success=False)
    cells = format_row(ann)
    assert len(cells) == len(CSV_COLUMNS)
    for column, cell in zip(CSV_COLUMNS, cells, strict=True):
        assert "e" not in cell.lower() or column == "expression", (column, cell)
        assert not (cell.startswith("-") and not cell.strip("-0.")), (column, cell)
    if ann.track_id == -1:
        row = dict(zip(CSV_COLUMNS, cells, strict=True))
        assert row["face_id"] == "-1" and row["success"] == "0"
        assert all(row[c] == "" for c in CSV_COLUMNS if c not in ("frame", "timestamp", "face_id", "confidence", "success"))


# ----------------------------------------------------------------------- header checks

column_name = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")), min_size=0, max_size=12
)


@st.composite
def mutated_headers(draw) -> tuple[str, list[str]]:
    """CSV_COLUMNS with one column renamed, dropped or added (a new or repeated name), or two swapped."""
    header = list(CSV_COLUMNS)
    kind = draw(st.sampled_from(["rename", "drop", "add", "swap"]))
    if kind == "swap":
        i, j = draw(st.lists(st.integers(0, len(header) - 1), min_size=2, max_size=2, unique=True))
        header[i], header[j] = header[j], header[i]
    elif kind == "rename":
        at = draw(st.integers(0, len(header) - 1))
        header[at] = draw(column_name.filter(lambda name: name != CSV_COLUMNS[at]))
    elif kind == "drop":
        del header[draw(st.integers(0, len(header) - 1))]
    else:
        header.insert(draw(st.integers(0, len(header))), draw(st.one_of(column_name, st.sampled_from(CSV_COLUMNS))))
    return kind, header


def csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(mutated_headers(), tables(max_frames=1))
def test_csv_with_a_changed_header_is_refused_in_one_line(mutation, rows):
    """A CSV whose header differs from CSV_COLUMNS by one renamed, dropped or added column
    (or two swapped ones) is refused with a one-line DataError naming the file, whatever
    the rows below it. Names here hold no line break (see the test below for those)."""
    _, header = mutation
    with scratch() as folder:
        path = folder / "t.csv"
        body = write("csv", path, rows).decode("utf-8").split("\n", 1)[1]
        path.write_text(csv_line(header) + body, encoding="utf-8")
        with pytest.raises(DataError) as excinfo:
            read_csv(path)
    message = str(excinfo.value)
    assert len(message.splitlines()) == 1, message
    assert str(path) in message


line_break = st.sampled_from(["\n", "\u2028", "\u2029", "\x85", "\x0b", "\x0c"])


@settings(max_examples=20, deadline=None)
@given(column_name, line_break, column_name, st.integers(0, len(CSV_COLUMNS) - 1))
def test_header_name_with_a_line_break_is_refused_in_one_line(head, brk, tail, at):
    """A renamed header column whose (quoted) name holds a line break is refused with a
    DataError that is still one line, as every AffstreamError message must be."""
    header = list(CSV_COLUMNS)
    header[at] = head + brk + tail
    with scratch() as folder:
        path = folder / "t.csv"
        path.write_text(csv_line(header), encoding="utf-8")
        with pytest.raises(DataError) as excinfo:
            read_csv(path)
    assert len(str(excinfo.value).splitlines()) == 1, str(excinfo.value)
