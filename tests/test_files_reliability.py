"""Reliability of the one atomic-publish mechanism (affstream.files) and its users.

* temporary names carry their owner (host, pid) and a later write of the same output
  removes the ones a killed run left behind (SIGTERM, SIGHUP, SIGKILL, ``timeout``);
* a full disk (a real 64 KiB tmpfs, and ``/dev/full``) gives one-line OutputErrors,
  never a stray temporary file, and the other inputs of a run are still processed;
* an unusable cache folder (cannot be created, read-only) warns once and the run goes
  on without caching.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from affstream import files
from affstream.errors import OutputError
from affstream.files import (
    AtomicFile,
    atomic_path,
    atomic_write_text,
    remove_stale_partials,
    sha256_file,
    sha256_file_cached,
    usable_cache_dir,
)
from affstream.records import FrameAnnotation
from affstream.writers import CSV_COLUMNS, get_writer

REPO = Path(__file__).resolve().parents[1]


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def row(k: int) -> FrameAnnotation:
    return FrameAnnotation(frame_index=k + 1, time_s=k / 30, track_id=-1, confidence=0.0, success=False)


def assert_one_line(exc: BaseException, *needles: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text
    # raised "from None": no chained OSError traceback is printed with it
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__
    return text


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def host_tag() -> str:
    return files._host_tag()


# ------------------------------------------------------------------ owner in temp names


def test_temp_name_carries_host_pid_and_keeps_prefix_and_suffix(tmp_path):
    out = AtomicFile(tmp_path / "clip.csv")
    try:
        name = out.temp_path.name
        assert re.fullmatch(rf"\.clip\.csv\.partial-{re.escape(host_tag())}-{os.getpid()}-[0-9a-f]{{8}}\.csv", name)
    finally:
        out.discard()
    with atomic_path(tmp_path / "overlay.mp4") as tmp:
        assert tmp.name.startswith(".overlay.mp4.partial-") and tmp.suffix == ".mp4"
        assert f"-{os.getpid()}-" in tmp.name


@pytest.mark.parametrize("hostname", ["web-01.example.com", "we ird/ho:st\\name", "", "ü" * 80, "..."])
def test_host_tag_is_a_short_valid_file_name_part(monkeypatch, hostname):
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    tag = files._host_tag()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,24}", tag), tag


def _stray(folder: Path, name: str, middle: str, suffix: str, *, age_s: float = 0.0) -> Path:
    path = folder / f".{name}.partial-{middle}{suffix}"
    path.write_text("half")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_remove_stale_partials_rule(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="affstream")
    gone, me = dead_pid(), os.getpid()
    here = host_tag()
    dead = _stray(tmp_path, "a.csv", f"{here}-{gone}-0123abcd", ".csv")
    alive = _stray(tmp_path, "a.csv", f"{here}-{me}-0123abce", ".csv")
    other_host = _stray(tmp_path, "a.csv", f"{here}x-{gone}-0123abcf", ".csv")
    old_legacy = _stray(tmp_path, "a.csv", "89abcdef", ".csv", age_s=2 * 3600)
    new_legacy = _stray(tmp_path, "a.csv", "89abcde0", ".csv", age_s=60)
    other_name = _stray(tmp_path, "b.csv", f"{here}-{gone}-0123abcd", ".csv")
    prefix_name = _stray(tmp_path, "a.csv.partial-x.csv", f"{here}-{gone}-0123abcd", ".csv")
    wrong_suffix = _stray(tmp_path, "a.csv", f"{here}-{gone}-0123abcd", ".json")
    final = tmp_path / "a.csv"
    final.write_text("previous\n")

    removed = remove_stale_partials(final)

    assert sorted(removed) == sorted([dead, old_legacy])
    assert not dead.exists() and not old_legacy.exists()
    for kept in (alive, other_host, new_legacy, other_name, prefix_name, wrong_suffix, final):
        assert kept.exists(), kept
    logged = [r for r in caplog.records if r.levelno == logging.INFO and "temporary file" in r.getMessage()]
    assert len(logged) == 2
    assert any(dead.name in r.getMessage() and str(gone) in r.getMessage() for r in logged)


def test_permission_error_means_the_owner_is_alive(tmp_path, monkeypatch):
    stray = _stray(tmp_path, "a.csv", f"{host_tag()}-4242-0123abcd", ".csv")

    def kill(pid, sig):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert remove_stale_partials(tmp_path / "a.csv") == []
    assert stray.exists()


def test_remove_stale_partials_of_a_missing_folder_is_a_no_op(tmp_path):
    assert remove_stale_partials(tmp_path / "nope" / "a.csv") == []


_KILLED_WRITER = textwrap.dedent("""
    import sys
    from affstream.records import FrameAnnotation
    from affstream.writers import get_writer
    writer = get_writer("csv", sys.argv[1])
    for k in range(3000):
        writer.write(FrameAnnotation(frame_index=k + 1, time_s=k / 30, track_id=-1, confidence=0.0, success=False))
    writer._handle.flush()
    print(writer.temp_path, flush=True)
    import time
    time.sleep(60)
""")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "SIGKILL", "timeout"])
def test_a_killed_run_leaves_a_partial_that_the_next_write_removes(tmp_path, caplog, how):
    caplog.set_level(logging.INFO, logger="affstream")
    out = tmp_path / "clip.csv"
    command = [sys.executable, "-c", _KILLED_WRITER, str(out)]
    if how == "timeout":
        if shutil.which("timeout") is None:
            pytest.skip("no timeout(1) on this system")
        command = ["timeout", "5", *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        temp = Path(proc.stdout.readline().strip())
        assert temp.exists()
        if how != "timeout":
            proc.send_signal(getattr(signal, how))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode != 0
    assert partials(tmp_path) == [temp.name]  # the kill skipped every cleanup
    assert not out.exists()

    with get_writer("csv", out) as writer:  # the next run of the same output
        writer.write(row(0))
    assert partials(tmp_path) == []
    assert out.read_text().splitlines()[0].split(",") == list(CSV_COLUMNS)
    assert any(temp.name in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_a_live_writers_temp_file_is_not_touched(tmp_path):
    out = tmp_path / "clip.csv"
    first = get_writer("csv", out)
    try:
        atomic_write_text(out, "other writer\n")  # same output name, same (live) process
        assert first.temp_path.exists()
    finally:
        first.abort()


# ------------------------------------------------------------------------ a full disk


def _fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` until writing fails with ENOSPC."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def _unmount(mnt: Path) -> None:
    """Unmount ``mnt``; lazily if a file on it is still open (a failing test's writer)."""
    if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 64 KiB tmpfs (root only; skipped where mounting is not permitted)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a 64 KiB tmpfs needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount(8) / umount(8) on this system")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        _unmount(mnt)


NO_SPACE = "no space left on the device; free space or choose another output folder"


@pytest.mark.parametrize("n_rows", [1, 2000])  # fails on close (buffered) / while writing
def test_csv_writer_on_a_full_disk(tiny_fs, n_rows):
    _fill(tiny_fs)
    out = tiny_fs / "clip.csv"
    with pytest.raises(OutputError) as excinfo, get_writer("csv", out) as writer:
        for k in range(n_rows):
            writer.write(row(k))
    assert_one_line(excinfo.value, str(out), NO_SPACE)
    assert partials(tiny_fs) == []
    assert not out.exists()


def test_csv_writer_failing_write_aborts_without_a_context_manager(tiny_fs):
    _fill(tiny_fs)
    out = tiny_fs / "clip.csv"
    writer = get_writer("csv", out)
    with pytest.raises(OutputError):
        for k in range(2000):
            writer.write(row(k))
    assert writer.done and partials(tiny_fs) == []
    writer.abort()  # still harmless
    writer.close()
    assert not out.exists()


def test_atomic_write_text_on_a_full_disk_keeps_the_previous_file(tiny_fs):
    out = tiny_fs / "report.json"
    out.write_text('{"previous": true}\n')
    _fill(tiny_fs)
    for text in ("{}\n" * 10, "x" * 200_000):  # buffered until commit / written at once
        with pytest.raises(OutputError) as excinfo:
            atomic_write_text(out, text)
        assert_one_line(excinfo.value, str(out), NO_SPACE)
        assert partials(tiny_fs) == []
        assert out.read_text() == '{"previous": true}\n'


def test_atomic_path_on_a_full_disk(tiny_fs):
    _fill(tiny_fs)
    out = tiny_fs / "features.npy"
    with pytest.raises(OutputError) as excinfo, atomic_path(out) as tmp, open(tmp, "wb") as handle:
        handle.write(b"\0" * 100_000)
    assert_one_line(excinfo.value, str(out), NO_SPACE)
    assert partials(tiny_fs) == [] and not out.exists()


def test_an_unrelated_error_inside_atomic_path_propagates_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "a.bin"):
        (tmp_path / "missing-input.bin").read_bytes()
    assert partials(tmp_path) == []


def _to_dev_full(handle) -> None:
    """Point an open handle's descriptor at /dev/full (every write: ENOSPC)."""
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, handle.fileno())
    finally:
        os.close(full)


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")


@needs_dev_full
def test_commit_removes_the_temp_file_when_closing_fails_again(tmp_path):
    out = AtomicFile(tmp_path / "a.json")
    out.handle.write("{}" * 100)
    _to_dev_full(out.handle)
    with pytest.raises(OutputError) as excinfo:
        out.commit()
    assert_one_line(excinfo.value, "a.json", NO_SPACE)
    assert out.handle.closed and not out.temp_path.exists()
    assert list(tmp_path.iterdir()) == []


@needs_dev_full
def test_discard_and_abort_never_raise_for_the_file_they_give_up(tmp_path):
    out = AtomicFile(tmp_path / "a.json")
    out.handle.write("{}" * 100)
    _to_dev_full(out.handle)
    out.discard()  # close flushes the buffer: ENOSPC, swallowed
    assert not out.temp_path.exists()

    writer = get_writer("csv", tmp_path / "b.csv")
    writer.write(row(0))
    _to_dev_full(writer._handle)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@needs_dev_full
def test_an_abandoned_file_is_removed_even_if_closing_fails(tmp_path):
    import gc

    out = AtomicFile(tmp_path / "a.json")
    out.handle.write("{}" * 100)
    _to_dev_full(out.handle)
    temp = out.temp_path
    del out
    gc.collect()
    assert not temp.exists()


@pytest.mark.parametrize("step, code, fix", [
    ("fsync", errno.EIO, "input/output error"),
    ("replace", errno.EXDEV, "cannot replace"),
    ("fsync", errno.EDQUOT, "disk quota exceeded"),
])
def test_fsync_and_rename_failures_are_one_line_errors(tmp_path, monkeypatch, step, code, fix):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OutputError) as excinfo:
        atomic_write_text(tmp_path / "a.json", "{}\n")
    assert_one_line(excinfo.value, "a.json", fix)
    with pytest.raises(OutputError), atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    with pytest.raises(OutputError), get_writer("csv", tmp_path / "c.csv") as writer:
        writer.write(row(0))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_text_embedding_cache_on_a_full_disk_only_warns(tiny_fs, caplog):
    import torch

    from affstream.heads import text

    _fill(tiny_fs)
    caplog.set_level(logging.WARNING, logger="affstream")
    path = tiny_fs / "text" / "emb.safetensors"
    (tiny_fs / "text").mkdir()
    text._write_cache(path, {"expr_text": torch.zeros(8, 512)}, {"format": 1})  # safetensors: SafetensorError
    assert not path.exists() and partials(tiny_fs / "text") == []
    assert any("emb.safetensors" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    text._write_cache(None, {"expr_text": torch.zeros(8, 512)}, {"format": 1})  # no usable cache: nothing
    assert text._read_cache(None, 512) is None


# --------------------------------------------------------- a full disk, end to end


@pytest.fixture(scope="module")
def smoke_stages():
    from affstream.api import resolve_config
    from affstream.pipeline import load_stages

    return load_stages(resolve_config("smoke", device="cpu"))


def _two_inputs(tmp_path: Path, single_face_jpg: Path) -> list[Path]:
    inputs = []
    for name in ("first.jpg", "second.jpg"):
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(single_face_jpg, path)
        inputs.append(path)
    return inputs


def test_full_disk_fails_one_input_and_the_others_go_on(tiny_fs, tmp_path, single_face_jpg, smoke_stages):
    from affstream.pipeline.offline import InputObserver, annotate_inputs

    inputs = _two_inputs(tmp_path, single_face_jpg)
    filler = _fill(tiny_fs)

    class FreeSpaceAfterFirst(InputObserver):
        def finished(self, result):
            if filler.exists():
                filler.unlink()

    results = annotate_inputs(inputs, tiny_fs, stages=smoke_stages, observer=FreeSpaceAfterFirst())
    assert [r.ok for r in results] == [False, True]
    message = results[0].error
    assert "\n" not in message and "first." in message and NO_SPACE in message
    assert partials(tiny_fs) == []
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["second.csv", "second.json"]
    assert json.loads((tiny_fs / "second.json").read_text())["affstream_version"]


def test_full_disk_every_input_fails_on_its_own(tiny_fs, tmp_path, single_face_jpg, smoke_stages):
    from affstream.pipeline.offline import annotate_inputs

    inputs = _two_inputs(tmp_path, single_face_jpg)
    _fill(tiny_fs)
    results = annotate_inputs(inputs, tiny_fs, stages=smoke_stages)
    assert [r.ok for r in results] == [False, False]
    for result, stem in zip(results, ("first", "second"), strict=True):
        assert "\n" not in result.error and f"{stem}." in result.error and NO_SPACE in result.error
    assert partials(tiny_fs) == []
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler.bin"]


# --------------------------------------------------------------------- the cache folder


def test_cache_folder_that_cannot_be_created_warns_once(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "cachefile"
    blocker.write_text("x")
    monkeypatch.setenv("AFFSTREAM_CACHE", str(blocker / "cache"))
    caplog.set_level(logging.WARNING, logger="affstream")
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    assert usable_cache_dir() is None
    assert sha256_file_cached(weights) == sha256_file(weights)
    assert sha256_file_cached(weights) == sha256_file(weights)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(blocker / "cache") in warnings[0] and "AFFSTREAM_CACHE" in warnings[0]
    assert "\n" not in warnings[0]


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only filesystem (a read-only tmpfs; root bypasses chmod)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a read-only tmpfs needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        _unmount(mnt)


def test_read_only_cache_folder_is_the_same_case(read_only_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AFFSTREAM_CACHE", str(read_only_dir))
    caplog.set_level(logging.WARNING, logger="affstream")
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    assert usable_cache_dir() is None
    assert sha256_file_cached(weights) == sha256_file(weights)
    usable_cache_dir()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(read_only_dir) in warnings[0] and "AFFSTREAM_CACHE" in warnings[0]


def test_usable_cache_folder_is_created_on_demand(tmp_path, monkeypatch):
    monkeypatch.setenv("AFFSTREAM_CACHE", str(tmp_path / "a" / "b"))
    assert usable_cache_dir() == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    sha256_file_cached(weights)
    assert (tmp_path / "a" / "b" / "sha256.json").is_file()
