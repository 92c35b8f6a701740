"""check_outputs: outputs never overwrite an input, nor a file affstream did not write."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from affstream.cli import main
from affstream.errors import ConfigError
from affstream.pipeline.outputs import check_outputs, output_paths
from affstream.records import FrameAnnotation
from affstream.writers import CSV_COLUMNS, get_writer, write_json_report


def affstream_outputs(folder: Path, stem: str) -> tuple[Path, Path]:
    """A CSV and a JSON report as affstream writes them."""
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    with get_writer("csv", csv_path) as writer:
        writer.write(FrameAnnotation(frame_index=1, time_s=0.0, track_id=-1, confidence=0.0, success=False))
    write_json_report(json_path, {"affstream_version": "0.1.0", "counts": {"rows": 1}})
    return csv_path, json_path


def one_line(exc: BaseException, *needles: str) -> str:
    text = str(exc)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text
    return text


# ------------------------------------------------------------------- inputs are sacred


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_input_named_like_its_own_report_is_refused(tmp_path, overwrite):
    clip = tmp_path / "clip.json"
    clip.write_bytes(b"\x00\x00\x00\x18ftypisom video bytes")
    with pytest.raises(ConfigError) as excinfo:
        check_outputs([clip], tmp_path, overwrite=overwrite)
    one_line(excinfo.value, str(clip), "input")
    assert clip.read_bytes() == b"\x00\x00\x00\x18ftypisom video bytes"


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_a_hard_link_or_symlink_to_an_input_is_refused(tmp_path, overwrite):
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    out.mkdir()
    clip, other = videos / "clip.mp4", videos / "other.mp4"
    clip.write_bytes(b"video")
    other.write_bytes(b"video 2")
    os.link(clip, out / "other.csv")  # other's output is the same file as clip
    with pytest.raises(ConfigError) as excinfo:
        check_outputs([clip, other], out, overwrite=overwrite)
    one_line(excinfo.value, str(out / "other.csv"), str(clip))
    (out / "other.csv").unlink()
    (out / "clip.json").symlink_to(clip)
    with pytest.raises(ConfigError) as excinfo:
        check_outputs([clip], out, overwrite=overwrite)
    one_line(excinfo.value, str(out / "clip.json"), str(clip))
    assert clip.read_bytes() == b"video"


def test_a_missing_input_at_an_output_path_is_refused_by_path(tmp_path):
    clip = tmp_path / "sub" / ".." / "clip.csv"  # does not exist: compared by resolved path
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError):
        check_outputs([clip], tmp_path, overwrite=True)


def test_cli_refuses_to_overwrite_the_input_and_keeps_it(tmp_path, single_face_jpg):
    clip = tmp_path / "clip.json"
    shutil.copyfile(single_face_jpg, clip)
    before = clip.read_bytes()
    result = CliRunner().invoke(main, ["annotate", str(clip), "-o", str(tmp_path), "--pipeline", "smoke",
                                       "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines and "clip.json" in lines[0] and "Traceback" not in result.stderr
    assert clip.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json"]


# ---------------------------------------------------------- files affstream did not write


def test_own_previous_outputs_are_replaced_without_overwrite(tmp_path):
    affstream_outputs(tmp_path, "clip")
    check_outputs([tmp_path / "in" / "clip.mp4"], tmp_path)


FOREIGN = [
    ("clip.csv", b"frame, face_id, timestamp, confidence\n1,0,0.0,0.98\n", "csv"),  # OpenFace
    ("clip.csv", b"", "csv"),
    ("clip.csv", ",".join(CSV_COLUMNS[:-1]).encode() + b"\n", "csv"),
    ("clip.csv", b"\xff\xfe not text", "csv"),
    ("clip.json", b'{"name": "my notes"}\n', "json"),
    ("clip.json", b'["affstream_version"]\n', "json"),
    ("clip.json", b"not json at all", "json"),
    ("clip.json", b"", "json"),
]


@pytest.mark.parametrize("name, content, kind", FOREIGN)
def test_a_file_affstream_did_not_write_is_refused_unless_overwrite(tmp_path, name, content, kind):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    with pytest.raises(ConfigError) as excinfo:
        check_outputs([tmp_path / "clip.mp4"], out)
    one_line(excinfo.value, str(out / name), "overwrite")
    assert (out / name).read_bytes() == content
    check_outputs([tmp_path / "clip.mp4"], out, overwrite=True)


def test_a_fifo_under_an_output_name_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    os.mkfifo(tmp_path / "clip.json")
    with pytest.raises(ConfigError) as excinfo:
        check_outputs([tmp_path / "in" / "clip.mp4"], tmp_path)
    one_line(excinfo.value, "clip.json", "overwrite")
    check_outputs([tmp_path / "in" / "clip.mp4"], tmp_path, overwrite=True)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_under_an_output_name_is_refused(tmp_path, overwrite):
    (tmp_path / "clip.csv").mkdir()
    with pytest.raises(ConfigError) as excinfo:
        check_outputs([tmp_path / "in" / "clip.mp4"], tmp_path, overwrite=overwrite)
    one_line(excinfo.value, "clip.csv", "folder")


def test_a_dangling_symlink_under_an_output_name_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "clip.csv").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError):
        check_outputs([tmp_path / "in" / "clip.mp4"], tmp_path)
    check_outputs([tmp_path / "in" / "clip.mp4"], tmp_path, overwrite=True)


# -------------------------------------------------------------------- the existing checks


def test_two_inputs_with_one_stem_are_refused(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        check_outputs([tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mkv"], tmp_path / "out")
    one_line(excinfo.value, "clip.csv")


def test_an_output_folder_that_cannot_be_created_is_refused(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as excinfo:
        check_outputs([tmp_path / "clip.mp4"], blocker / "sub")
    one_line(excinfo.value, "afile")


def test_output_paths():
    assert output_paths("videos/clip.mp4", "out") == (Path("out/clip.csv"), Path("out/clip.json"))


# ------------------------------------------------------------------- end to end, twice


def test_rerunning_over_its_own_outputs_keeps_working(tmp_path, single_face_jpg):
    from affstream.api import resolve_config
    from affstream.pipeline import load_stages
    from affstream.pipeline.offline import annotate_inputs

    stages = load_stages(resolve_config("smoke", device="cpu"))
    for _ in range(2):
        results = annotate_inputs([single_face_jpg], tmp_path, stages=stages)
        assert [r.ok for r in results] == [True], results
    assert json.loads((tmp_path / "single_face.json").read_text())["affstream_version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single_face.csv", "single_face.json"]
