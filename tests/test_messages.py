"""Consistent and honest messages: the same failure has the same exit code and the same
kind of line in every command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(*args: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-m", "affstream", *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=environment)


@pytest.mark.slow
@pytest.mark.torch
def test_missing_weights_exit_2_in_annotate_and_stream(tmp_path, single_face_mp4):
    """Weights that are not cached and cannot be downloaded: a configuration failure
    (nothing processed), 2 in both commands, one error line naming the backbone."""
    offline = {"AFFSTREAM_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub"), "HF_HUB_OFFLINE": "1"}
    runs = {
        "annotate": _run("annotate", str(single_face_mp4), "-o", "a", "--backbone", "ViT-B-32:openai",
                         tmp_path=tmp_path, **offline),
        "stream": _run("stream", str(single_face_mp4), "-o", "s", "--backbone", "ViT-B-32:openai", "--quiet",
                       tmp_path=tmp_path, **offline),
    }
    for command, done in runs.items():
        assert done.returncode == 2, (command, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "ViT-B-32:openai" in errors[0], (command, done.stderr)
        assert "Traceback" not in done.stderr


@pytest.mark.torch
def test_annotate_a_folder_points_to_corpus(tmp_path, data_dir):
    done = _run("annotate", str(data_dir), "-o", "out", "--pipeline", "smoke", tmp_path=tmp_path)
    assert done.returncode == 1
    assert "is a directory" in done.stderr and "affstream corpus FOLDER -o OUT" in done.stderr
