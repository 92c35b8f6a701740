"""Stopping and crashing, with real processes and real signals: the CLI exits 128 +
signal with one line and leaves no partial file; a worker that dies on one input fails
only that input. Each test runs ``affstream`` in a subprocess (a signal must not reach
pytest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120.0


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "affstream", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"affstream ended ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name) if folder.exists() else []


def workers_of(pid: int) -> list[int]:
    """Ids of the worker processes started by ``pid`` (Linux /proc; multiprocessing's
    resource tracker, also a child, is not a worker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


@pytest.mark.parametrize("signum, code, words", [
    (signal.SIGTERM, 143, "stopped by SIGTERM"),
    (signal.SIGHUP, 129, "stopped by SIGHUP"),
    (signal.SIGINT, 130, "interrupted"),
])
def test_a_stop_signal_mid_video_leaves_nothing_partial(wolfgang_mp4, tmp_path, signum, code, words):
    out = tmp_path / "out"
    proc = start_cli("annotate", str(wolfgang_mp4), "-o", str(out), "--pipeline", "smoke", "--device", "cpu",
                     cwd=tmp_path)
    wait_for(lambda: bool(partials(out)), proc, "the CSV is being written")
    time.sleep(0.5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    lines = [line for line in stderr.splitlines() if words in line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert partials(out) == [] and sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize("delay_s", [0.4, 1.0, 1.8])
def test_ctrl_c_while_models_load_exits_130(single_face_jpg, tmp_path, delay_s):
    """Whenever Ctrl-C arrives during start-up (imports of torch, model loading), the
    status is 130 with a message, never click's "Aborted!" nor death by SIGINT (-2)."""
    proc = start_cli("annotate", str(single_face_jpg), "-o", str(tmp_path / "out"), "--pipeline", "smoke",
                     "--device", "cpu", cwd=tmp_path)
    time.sleep(delay_s)  # importing torch / loading the models
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (very fast machine)")
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Aborted" not in stderr and "Traceback" not in stderr


def test_a_crashing_worker_loses_only_its_input(single_face_mp4, single_face_jpg, wolfgang_mp4, tmp_path):
    """The worker process is killed with SIGSEGV (what a native crash does) while it is
    on the second input; the first and third inputs are written, the second fails
    with the signal named, and the exit code is 1."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(single_face_jpg.read_bytes())
    out = tmp_path / "out"
    proc = start_cli("annotate", str(photo), str(wolfgang_mp4), str(single_face_mp4), "-o", str(out),
                     "--pipeline", "smoke", "--device", "cpu", cwd=tmp_path)
    # the second input's own partial file: the first input's JSON is published before its CSV,
    # so "photo.json exists and some partial exists" can still be the first input finishing
    wait_for(lambda: any("WolfgangLanger_Pexels" in name for name in partials(out)), proc,
             "the second input is being written")
    workers = workers_of(proc.pid)
    assert workers, "no worker process"
    for pid in workers:
        os.kill(pid, signal.SIGSEGV)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1, stderr
    assert "killed by SIGSEGV" in stderr and "WolfgangLanger_Pexels.mp4" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir() if ".partial" not in p.name) == [
        "photo.csv", "photo.json", "single_face.csv", "single_face.json"]
    # the crashed worker could not clean up; its temporary file is left for the next run to remove
    assert all("WolfgangLanger_Pexels" in name for name in partials(out))


def test_sigterm_to_the_parent_stops_its_worker_cleanly(single_face_jpg, wolfgang_mp4, tmp_path):
    out = tmp_path / "out"
    proc = start_cli("annotate", str(single_face_jpg), str(wolfgang_mp4), "-o", str(out), "--pipeline", "smoke",
                     "--device", "cpu", cwd=tmp_path)
    wait_for(lambda: any("WolfgangLanger_Pexels" in name for name in partials(out)), proc,
             "the second input is being written")
    workers = workers_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert partials(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["single_face.csv", "single_face.json"]
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
