"""``affstream corpus --format parquet``: one Parquet dataset for the corpus, whose
values equal the CSVs'."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
ds = pytest.importorskip("pyarrow.dataset")

from affstream.corpus import run_corpus  # noqa: E402
from affstream.corpus.parquet import parquet_current, parquet_on_event, parquet_path, schema  # noqa: E402
from affstream.writers.columns import COLUMN_KINDS, CSV_COLUMNS, FLAG, typed_row  # noqa: E402
from affstream.writers.csv import read_csv  # noqa: E402


def smoke_config():
    from affstream.api import resolve_config

    return resolve_config("smoke", device="cpu")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, single_face_jpg, no_face_mp4) -> Path:
    root = tmp_path_factory.mktemp("pq_corpus")
    (root / "sub").mkdir()
    shutil.copy(single_face_jpg, root / "face.jpg")
    shutil.copy(no_face_mp4, root / "sub" / "clip.mp4")
    (root / "notes.mp4").write_text("not a video\n")
    return root


def expected_rows(csv_path: Path) -> list[list]:
    rows = []
    for ann in read_csv(csv_path):
        values = typed_row(ann)
        rows.append([bool(v) if v is not None and COLUMN_KINDS[c] == FLAG else v
                     for c, v in zip(CSV_COLUMNS, values, strict=True)])
    return rows


@pytest.mark.torch  # the corpus CLI in a subprocess
def test_parquet_dataset_equals_csvs(small_corpus, tmp_path):
    out = tmp_path / "out"
    result = run_corpus(small_corpus, out, smoke_config(), workers=1, on_event=parquet_on_event(out))
    done = [item for item in result.items if item.status == "done"]
    assert sorted(item.rel.as_posix() for item in done) == ["face.jpg", "sub/clip.mp4"]
    assert (out / "parquet" / "face.parquet").is_file()
    assert (out / "parquet" / "sub" / "clip.parquet").is_file()
    assert not [p for p in (out / "parquet").rglob("*") if p.is_file() and p.suffix != ".parquet"]

    table = ds.dataset(out / "parquet", format="parquet").to_table()  # the whole corpus, one call
    assert table.schema.remove_metadata().equals(schema(pa))
    assert table.column_names == ["video", *CSV_COLUMNS]
    assert table.schema.field("frame").type == pa.int64()
    assert table.schema.field("success").type == pa.bool_()
    assert table.schema.field("AU01_c").type == pa.bool_()
    assert table.schema.field("valence").type == pa.float64()
    assert table.schema.field("expression").type == pa.string()
    rows = table.to_pylist()
    for item in done:
        csv_path, _ = item.outputs(out)
        got = [[row[c] for c in CSV_COLUMNS] for row in rows if row["video"] == item.rel.as_posix()]
        want = expected_rows(csv_path)
        assert want and got == want, item.rel
    assert len(rows) == sum(len(read_csv(item.outputs(out)[0])) for item in done)
    no_face = [row for row in rows if row["video"] == "sub/clip.mp4"]
    assert all(row["face_id"] == -1 and row["success"] is False and row["valence"] is None for row in no_face)

    # resume: skipped videos keep their current Parquet file; a stale one is rewritten
    face = next(item for item in done if item.rel.as_posix() == "face.jpg")
    assert parquet_current(face, out)
    stale = parquet_path(face, out)
    pa.parquet.write_table(pa.table({"x": [1]}), str(stale))
    assert not parquet_current(face, out)
    again = run_corpus(small_corpus, out, smoke_config(), workers=1, resume=True, on_event=parquet_on_event(out))
    assert {item.rel.as_posix(): item.status for item in again.items if item.status != "not a video"} == {
        "face.jpg": "skipped", "sub/clip.mp4": "skipped"}
    assert parquet_current(face, out)
    assert ds.dataset(out / "parquet", format="parquet").to_table().num_rows == len(rows)


def test_missing_pyarrow_hint(monkeypatch, tmp_path):
    import builtins

    from affstream.errors import ConfigError

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ConfigError, match=r'pip install "affstream\[parquet\]"'):
        parquet_on_event(tmp_path)
