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


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143)])
def test_a_stop_while_a_live_source_opens_is_an_interrupt(tmp_path, signum, code):
    """Nothing is sent to the UDP port, so the open waits (up to its 10 s timeout); a
    Ctrl-C or SIGTERM then is a stop (128 + signal), not "nothing arrived" (exit 1), and
    leaves no output folder."""
    import signal
    import socket
    import threading
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "affstream", "-v", "stream", f"udp://127.0.0.1:{port}",
                                "-o", "out", "--pipeline", "smoke", "--device", "cpu", "--quiet"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    loaded = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if "pipeline smoke" in line:  # the models are loaded: next, the source opens
                loaded.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert loaded.wait(180), "".join(lines)
        time.sleep(2.0)  # inside the open (its timeout is 10 s)
        process.send_signal(signal.Signals(signum))
        assert process.wait(60) == code, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
    time.sleep(0.2)
    text = "".join(lines)
    assert "nothing arrived" not in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (["--csv", "t.json"], "--csv and the session report would be the same file"),
    (["--jsonl", "t.json"], "--jsonl and the session report would be the same file"),
    (["--csv", "u.log", "--jsonl", "u.log"], "--csv and --jsonl would be the same file"),
    (["--csv", "u.log", "--jsonl", "./u.log"], "--csv and --jsonl would be the same file"),
])
def test_stream_outputs_that_collide_are_refused_before_anything_loads(tmp_path, single_face_mp4, args, words):
    done = _run("stream", str(single_face_mp4), *args, "--pipeline", "smoke", "--quiet", tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], done.stderr
    assert "SMOKE" not in done.stderr  # refused before the models load
    assert list(tmp_path.iterdir()) == []  # no header left behind


def test_stream_never_writes_over_its_source(tmp_path, single_face_mp4):
    source = tmp_path / "take.csv"  # a video named like a log
    source.write_bytes(single_face_mp4.read_bytes())
    before = source.read_bytes()
    for extra in ([], ["--overwrite"]):
        done = _run("stream", str(source), "--csv", str(source), *extra, "--pipeline", "smoke", "--quiet",
                    tmp_path=tmp_path)
        assert done.returncode == 2, done.stderr  # an output that cannot be: usage, as in annotate
        assert "is the source" in done.stderr
    assert source.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["take.csv"]


def test_corpus_names_a_file_that_is_not_a_video_once(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "notes.txt").write_text("hello\n")
    (root / "fake.mp4").write_text("not a video\n")
    done = _run("corpus", str(root), "-o", "out", "--pipeline", "smoke", "--workers", "1", tmp_path=tmp_path)
    lines = [line for line in done.stderr.splitlines() if "not a video:" in line]
    assert len(lines) == 2, done.stderr
    for line in lines:
        name = line.split("not a video: ", 1)[1].split(" ", 1)[0]
        assert line.count(name) == 1, line  # the path once, not again inside the reason
    assert "error:" not in done.stderr


@pytest.mark.torch
def test_output_that_is_not_a_terminal_is_whole_lines(tmp_path, single_face_jpg):
    """A log file or a pipe gets whole lines: a long name is never folded at 80 columns."""
    long_name = tmp_path / ("d" * 70) / ("clip_" + "x" * 90 + ".mp4")
    done = _run("annotate", str(single_face_jpg), str(long_name), "-o", "out", "--pipeline", "smoke",
                "--device", "cpu", tmp_path=tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "x" * 90 in line]
    assert lines and all(str(long_name) in line for line in lines), done.stderr
    assert any(line.startswith(str(single_face_jpg)) and "done" in line for line in done.stderr.splitlines())
