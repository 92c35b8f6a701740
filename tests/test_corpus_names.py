"""corpus never replaces what a user wrote: the manifest is checked against the list of
inputs, a foreign manifest and every video's outputs before anything is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = ["--pipeline", "smoke", "--device", "cpu", "--workers", "1"]


def _corpus(source: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affstream", "corpus", str(source), "-o", str(out), *SMOKE],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def _one_error(done: subprocess.CompletedProcess) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    return errors[0]


def test_the_users_input_list_named_manifest_is_never_replaced(tmp_path, single_face_mp4):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(single_face_mp4, data / "clip.mp4")
    listing = data / "manifest.csv"
    listing.write_text("path,label,annotator\nclip.mp4,happy,ann\n")
    before = listing.read_bytes()
    done = _corpus(listing, data, tmp_path)
    assert done.returncode == 2
    assert "is the list of inputs" in _one_error(done)
    assert listing.read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == ["clip.mp4", "manifest.csv"]


def test_a_foreign_manifest_in_the_output_folder_is_never_replaced(tmp_path, single_face_mp4):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(single_face_mp4, videos / "clip.mp4")
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "manifest.csv"
    foreign.write_text("subject,session\n1,a\n")
    done = _corpus(videos, out, tmp_path)
    assert done.returncode == 2
    assert "not a manifest affstream wrote" in _one_error(done)
    assert foreign.read_text() == "subject,session\n1,a\n" and sorted(p.name for p in out.iterdir()) == ["manifest.csv"]


def test_a_video_whose_outputs_would_be_the_manifest_is_refused(tmp_path, single_face_mp4):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(single_face_mp4, videos / "manifest.mp4")
    out = tmp_path / "out"
    done = _corpus(videos, out, tmp_path)
    assert done.returncode == 2
    assert "would be the corpus manifest" in _one_error(done)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.torch
def test_affstreams_own_manifest_is_replaced_on_a_second_run(tmp_path, single_face_mp4):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(single_face_mp4, videos / "clip.mp4")
    out = tmp_path / "out"
    for _ in range(2):
        done = _corpus(videos, out, tmp_path)
        assert done.returncode == 0, done.stderr
    assert (out / "manifest.csv").read_text().startswith("path,size,status,")
