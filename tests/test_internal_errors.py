"""A Python exception inside the library on one input (a defect, or a dependency whose
API moved under us) fails that input with one line saying it is an affstream error,
naming the exception, and pointing to ``affstream doctor``; the other inputs go on.

The defect is injected into every process (the worker processes included) by a
``sitecustomize`` module on PYTHONPATH: the orientation reader raises the
AttributeError PyAV 18.1.1 caused, for files whose name starts with ``bad``.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SMOKE = ["--pipeline", "smoke", "--device", "cpu"]
_MOVED_API = "'Type' object has no attribute 'type'"


@pytest.fixture
def injected_env(tmp_path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os

        from affstream.io import orientation

        _original = orientation.Orientation.of_frame.__func__

        def _of_frame(cls, frame, stream, name, is_image):
            if os.path.basename(str(name)).startswith("bad"):
                raise AttributeError({_MOVED_API!r})
            return _original(cls, frame, stream, name, is_image)

        orientation.Orientation.of_frame = classmethod(_of_frame)
    """))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def _check_internal_error_line(line: str, name: str) -> None:
    assert name in line
    assert "internal error" in line and f"AttributeError: {_MOVED_API}" in line
    assert "affstream doctor" in line and "please report the file" not in line


@pytest.mark.slow
def test_annotate_workers_fail_only_the_input_with_one_line(tmp_path, single_face_mp4, injected_env):
    good, bad = tmp_path / "good.mp4", tmp_path / "bad.mp4"
    shutil.copy(single_face_mp4, good)
    shutil.copy(single_face_mp4, bad)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "affstream", "annotate", str(bad), str(good), "-o", str(out), *SMOKE],
                          capture_output=True, text=True, timeout=600, env=injected_env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    _check_internal_error_line(errors[0], "bad.mp4")
    assert "crashed" not in done.stderr
    assert len((out / "good.csv").read_text().splitlines()) == 73
    assert not (out / "bad.csv").exists() and not (out / "bad.json").exists()


@pytest.mark.slow
def test_corpus_records_the_internal_error_and_goes_on(tmp_path, single_face_mp4, injected_env):
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(single_face_mp4, root / "bad.mp4")
    shutil.copy(single_face_mp4, root / "good.mp4")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "affstream", "corpus", str(root), "-o", str(out), *SMOKE,
                           "--workers", "1"], capture_output=True, text=True, timeout=600, env=injected_env)
    assert done.returncode == 1, done.stderr
    with (out / "manifest.csv").open(newline="") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert rows["good.mp4"]["status"] == "done"
    assert rows["bad.mp4"]["status"] == "failed"
    _check_internal_error_line(rows["bad.mp4"]["error"], "bad.mp4")
