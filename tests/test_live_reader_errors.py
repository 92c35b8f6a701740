"""An unexpected error inside the live reader thread (e.g. a dependency whose API moved,
as PyAV 18.1.1's side data did) ends the session as an error: one line, non-zero exit,
never "the source ended" with exit 0."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from affstream.io import live
from affstream.io.live import LiveFeed, parse_source

_MOVED_API = "'Type' object has no attribute 'type'"


def _broken_orientation(*_args, **_kwargs):
    raise AttributeError(_MOVED_API)


def test_reader_thread_exception_sets_the_error(monkeypatch, single_face_mp4):
    monkeypatch.setattr(live.Orientation, "of_frame", _broken_orientation)
    feed = LiveFeed(parse_source(str(single_face_mp4)))
    feed.start()
    frames = []
    while not feed.finished:
        _, frame = feed.take(timeout=1.0)
        if frame is not None:
            frames.append(frame)
    feed.stop()
    assert frames == []
    assert feed.error is not None and "\n" not in feed.error
    assert str(single_face_mp4) in feed.error
    assert "internal error" in feed.error and f"AttributeError: {_MOVED_API}" in feed.error
    assert "affstream doctor" in feed.error


@pytest.mark.slow
def test_stream_cli_exits_non_zero_with_one_line(tmp_path, single_face_mp4):
    """The real CLI in its own process, the reader broken the way PyAV 18.1.1 broke it."""
    out = tmp_path / "out"
    driver = textwrap.dedent(f"""
        import sys
        import affstream.io.orientation as orientation

        def broken(*args, **kwargs):
            raise AttributeError({_MOVED_API!r})

        orientation.Orientation.of_frame = broken
        from affstream.cli import run
        sys.argv = ["affstream", "stream", {str(single_face_mp4)!r}, "-o", {str(out)!r}, "--pipeline", "smoke",
                    "--device", "cpu", "--quiet"]
        run()
    """)
    done = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "internal error" in errors[0] and "AttributeError" in errors[0]
    report = json.loads((out / "single_face.json").read_text())
    assert report["error"] and "internal error" in report["error"]
    assert report["counts"]["frames_received"] == 0
