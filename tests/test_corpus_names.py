"""corpus never replaces what a user wrote: the manifest is checked against the list of
inputs, a foreign manifest and every video's outputs before anything is written."""

from __future__ import annotations

import os
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


# ----------------------------------------------------------- nothing is skipped silently


def test_linked_folders_are_followed_and_loops_refused_with_a_row(tmp_path):
    from affstream.corpus.inputs import STATUS_FAILED, list_inputs

    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.mp4").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "y.mp4").write_bytes(b"y")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    _, items = list_inputs(root, tmp_path / "out")
    by_rel = {item.rel.as_posix(): item for item in items}
    assert set(by_rel) == {"a/x.mp4", "linked/y.mp4", "a/loop"}
    assert by_rel["linked/y.mp4"].status is None  # followed: annotated like the others
    assert by_rel["a/loop"].status == STATUS_FAILED and "loop" in by_rel["a/loop"].error


def test_a_folder_that_cannot_be_listed_is_a_failed_row(tmp_path, monkeypatch):
    """(As root, permissions do not stop listing, so the refusal is injected.)"""
    import os

    from affstream.corpus import inputs

    root = tmp_path / "root"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "z.mp4").write_bytes(b"z")
    (root / "ok.mp4").write_bytes(b"o")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(inputs.os, "scandir", scandir)
    _, items = inputs.list_inputs(root, tmp_path / "out")
    by_rel = {item.rel.as_posix(): item for item in items}
    assert set(by_rel) == {"locked", "ok.mp4"}
    assert by_rel["locked"].status == inputs.STATUS_FAILED
    assert "cannot be listed (Permission denied)" in by_rel["locked"].error


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists any folder")
def test_an_unreadable_folder_is_a_failed_row_for_real(tmp_path):
    from affstream.corpus.inputs import STATUS_FAILED, list_inputs

    root = tmp_path / "root"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "z.mp4").write_bytes(b"z")
    (root / "locked").chmod(0)
    try:
        _, items = list_inputs(root, tmp_path / "out")
    finally:
        (root / "locked").chmod(0o755)
    assert [(i.rel.as_posix(), i.status) for i in items] == [("locked", STATUS_FAILED)]
