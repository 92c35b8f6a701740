"""The annotate command: outputs, bad inputs and exit codes (click's CliRunner)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from affstream.cli import main


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(result, name: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines, result.stderr
    assert any(name in line for line in lines), lines
    assert "Traceback" not in result.output + result.stderr
    return lines[0]


def test_help_does_not_import_torch():
    code = ("import sys; from affstream.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules, 'av' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_smoke_annotate_writes_csv_and_json(single_face_mp4, tmp_path):
    result = run_cli("annotate", str(single_face_mp4), "-o", str(tmp_path), "--pipeline", "smoke", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # stdout stays clean
    assert "meaningless" in result.stderr
    rows = list(csv.reader((tmp_path / "single_face.csv").read_text().splitlines()))
    assert len(rows) == 1 + 72
    report = json.loads((tmp_path / "single_face.json").read_text())
    assert report["meaningful"] is False


@pytest.mark.parametrize(
    "fixture_name, expect",
    [
        ("zero_byte_file", "empty"),
        ("text_file", "not a readable video"),
        ("audio_only_file", "no video stream"),
    ],
)
def test_bad_inputs_exit_nonzero_with_one_line(request, tmp_path, fixture_name, expect):
    path = request.getfixturevalue(fixture_name)
    result = run_cli("annotate", str(path), "-o", str(tmp_path), "--pipeline", "smoke", "--device", "cpu")
    assert result.exit_code == 1
    line = one_line_error(result, path.name)
    assert expect.lower() in line.lower()
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    result = run_cli("annotate", str(missing), "-o", str(tmp_path / "out"), "--pipeline", "smoke", "--device", "cpu")
    assert result.exit_code == 1
    one_line_error(result, "nope.mp4")


def test_truncated_clip_is_annotated_and_errors_counted(truncated_clip, tmp_path):
    result = run_cli("annotate", str(truncated_clip), "-o", str(tmp_path), "--pipeline", "smoke", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / f"{truncated_clip.stem}.json").read_text())
    assert report["counts"]["decode_errors"] > 0
    rows = list(csv.reader((tmp_path / f"{truncated_clip.stem}.csv").read_text().splitlines()))
    assert len(rows) - 1 == report["counts"]["frames_decoded"] > 0


def test_one_bad_file_does_not_stop_the_others(single_face_jpg, zero_byte_file, tmp_path):
    result = run_cli("annotate", str(zero_byte_file), str(single_face_jpg), "-o", str(tmp_path),
                     "--pipeline", "smoke", "--device", "cpu")
    assert result.exit_code == 1
    one_line_error(result, zero_byte_file.name)
    assert (tmp_path / "single_face.csv").is_file() and (tmp_path / "single_face.json").is_file()
    assert not (tmp_path / f"{zero_byte_file.stem}.csv").exists()


def test_bad_configuration_exits_2(single_face_jpg, tmp_path):
    result = run_cli("annotate", str(single_face_jpg), "-o", str(tmp_path), "--pipeline", "nonexistent")
    assert result.exit_code == 2
    one_line_error(result, "nonexistent")
    result = run_cli("annotate", str(single_face_jpg), "-o", str(tmp_path), "--pipeline", "smoke",
                     "--backbone", "NoSuchArch:random")
    assert result.exit_code == 2
    one_line_error(result, "NoSuchArch")


def test_offline_backbone_fails_fast_with_instructions(single_face_jpg, tmp_path, monkeypatch):
    monkeypatch.setenv("AFFSTREAM_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_cli("annotate", str(single_face_jpg), "-o", str(tmp_path), "--backbone", "ViT-B-32:openai", "--device", "cpu")
    assert result.exit_code == 2
    line = one_line_error(result, "ViT-B-32")
    assert "--backbone" in line or "weights" in line.lower()


def test_two_inputs_with_one_stem_are_refused_before_work(single_face_jpg, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / single_face_jpg.name
    twin.write_bytes(single_face_jpg.read_bytes())
    out = tmp_path / "out"
    result = run_cli("annotate", str(single_face_jpg), str(twin), "-o", str(out), "--pipeline", "smoke")
    assert result.exit_code == 2
    one_line_error(result, "single_face.csv")
    assert not any(out.glob("*.csv"))


def test_unusable_output_directory_exits_2(single_face_jpg, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = run_cli("annotate", str(single_face_jpg), "-o", str(blocker / "sub"), "--pipeline", "smoke")
    assert result.exit_code == 2
    one_line_error(result, "afile")


def test_unusable_cache_directory_warns_once_and_runs_without_cache(single_face_jpg, tmp_path, monkeypatch):
    blocker = tmp_path / "cachefile"
    blocker.write_text("x")
    monkeypatch.setenv("AFFSTREAM_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("COLUMNS", "1000")  # the log handler wraps at the console width
    out = tmp_path / "out"
    result = run_cli("annotate", str(single_face_jpg), "-o", str(out), "--pipeline", "smoke", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert (out / "single_face.csv").is_file() and (out / "single_face.json").is_file()
    warned = [line for line in result.stderr.splitlines() if "cachefile" in line]
    assert len(warned) == 1 and "AFFSTREAM_CACHE" in warned[0], result.stderr
    assert "Traceback" not in result.stderr
    assert blocker.read_text() == "x"


def test_all_inputs_missing_exits_1_without_loading_models(tmp_path, monkeypatch):
    import affstream.pipeline

    def no_models(*args, **kwargs):
        raise AssertionError("models loaded although no input exists")

    monkeypatch.setattr(affstream.pipeline, "load_stages", no_models)
    result = run_cli("annotate", str(tmp_path / "a.mp4"), str(tmp_path), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    one_line_error(result, "a.mp4")
    assert "is a directory" in result.stderr


def test_many_inputs_end_with_a_summary_table_and_names_shown_verbatim(single_face_jpg, tmp_path):
    odd = tmp_path / "talk [" / "] [final].jpg"  # the path reads "talk [/] [final].jpg": rich markup
    odd.parent.mkdir()
    odd.write_bytes(single_face_jpg.read_bytes())
    missing = tmp_path / "gone [x].mp4"
    result = run_cli("annotate", str(odd), str(missing), "-o", str(tmp_path / "out"), "--pipeline", "smoke",
                     "--device", "cpu")
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    one_line_error(result, "gone [x].mp4")
    table = result.stderr[result.stderr.index("input"):]
    assert "status" in table and "done" in table and "failed" in table
    assert "] [final].jpg" in table and "1 of 2 input(s) failed" in result.stderr
    assert (tmp_path / "out" / "] [final].csv").is_file()


def test_bad_device_or_head_exits_2_before_models_load(single_face_jpg, tmp_path, monkeypatch):
    import affstream.detect.mtcnn

    def no_detector(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(affstream.detect.mtcnn, "MTCNNDetector", no_detector)
    for option, value, words in (("--head", str(tmp_path / "nohead"), "head.head"),
                                 ("--device", "cuda:7", "device")):
        result = run_cli("annotate", str(single_face_jpg), "-o", str(tmp_path / "out"), "--pipeline", "smoke",
                         option, value)
        assert result.exit_code == 2, result.stderr
        assert words in one_line_error(result, value.split("/")[-1])


def test_foreign_file_under_an_output_name_needs_overwrite(single_face_jpg, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "single_face.csv").write_text("my,own,notes\n1,2,3\n", encoding="utf-8")
    args = ("annotate", str(single_face_jpg), "-o", str(out), "--pipeline", "smoke", "--device", "cpu")
    refused = run_cli(*args)
    assert refused.exit_code == 2
    assert "overwrite" in one_line_error(refused, "single_face.csv")
    assert (out / "single_face.csv").read_text(encoding="utf-8").startswith("my,own,notes")
    replaced = run_cli(*args, "--overwrite")
    assert replaced.exit_code == 0, replaced.stderr
    assert (out / "single_face.csv").read_text(encoding="utf-8").startswith("frame,timestamp,face_id")
    again = run_cli(*args)  # affstream's own outputs are replaced without --overwrite
    assert again.exit_code == 0, again.stderr


def test_an_input_named_like_its_report_is_never_overwritten(single_face_jpg, tmp_path):
    clip = tmp_path / "clip.json"
    clip.write_bytes(single_face_jpg.read_bytes())
    result = run_cli("annotate", str(clip), "-o", str(tmp_path), "--pipeline", "smoke", "--overwrite")
    assert result.exit_code == 2
    one_line_error(result, "clip.json")
    assert clip.read_bytes() == single_face_jpg.read_bytes()


def test_special_files_fail_on_their_own_without_blocking(single_face_jpg, tmp_path):
    import os

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # opening it for reading would block forever
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop)
    result = run_cli("annotate", str(fifo), str(loop), str(single_face_jpg), "-o", str(tmp_path / "out"),
                     "--pipeline", "smoke", "--device", "cpu")
    assert result.exit_code == 1
    one_line_error(result, "pipe.mp4")
    errors = {name: line for line in result.stderr.splitlines() if line.startswith("error:")
              for name in ("pipe.mp4", "loop.mp4") if name in line}
    assert "FIFO" in errors["pipe.mp4"] and "symbolic link loop" in errors["loop.mp4"]
    assert "no such file" not in result.stderr
    assert (tmp_path / "out" / "single_face.csv").is_file()
