"""``affstream corpus``: probing, output mirroring, the manifest, resume after SIGKILL
(of the corpus process and of a worker), and the configuration fingerprint."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from affstream.corpus.inputs import STATUS_NOT_VIDEO, CorpusItem, has_media_signature, list_inputs
from affstream.files import PARTIAL_TAG

SMOKE = ["--pipeline", "smoke", "--device", "cpu", "--workers", "1"]


def corpus_cmd(source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "affstream", "corpus", str(source), "-o", str(out), *SMOKE, *extra]


def run_corpus_cli(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(corpus_cmd(source, out, *extra), capture_output=True, text=True, timeout=300)


def rows_by_rel(out: Path, root: Path) -> dict[str, dict]:
    with (out / "manifest.csv").open(newline="") as handle:
        return {Path(row["path"]).relative_to(root).as_posix(): row for row in csv.DictReader(handle)}


def final_outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.suffix in (".csv", ".json") and p.name != "manifest.csv"
            and not p.name.startswith(".")}


def without_timings(data: bytes) -> dict:
    report = json.loads(data)
    report.pop("timings")
    return report


def assert_same_outputs(out: Path, expected: dict[str, bytes]) -> None:
    got = final_outputs(out)
    assert sorted(got) == sorted(expected)
    for name, data in expected.items():
        if name.endswith(".csv"):
            assert got[name] == data, name
        else:
            assert without_timings(got[name]) == without_timings(data), name


def partials(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if PARTIAL_TAG in p.name]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, single_face_mp4, single_face_jpg, no_face_mp4) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(no_face_mp4, root / "a" / "deep" / "no_face.mp4")
    shutil.copy(single_face_jpg, root / "a" / "single_face.jpg")
    shutil.copy(single_face_jpg, root / "b" / "single_face.jpg")  # one name in two folders
    shutil.copy(single_face_mp4, root / "b" / "clip")  # a video without an extension
    (root / "b" / "corrupt.mp4").write_bytes(single_face_mp4.read_bytes()[:3000])
    (root / "fake.mp4").write_text("this is not a video\n")
    (root / "empty.mp4").write_bytes(b"")
    return root


EXPECTED_STATUS = {
    "a/deep/no_face.mp4": "done", "a/single_face.jpg": "done", "b/single_face.jpg": "done", "b/clip": "done",
    "b/corrupt.mp4": "failed", "fake.mp4": STATUS_NOT_VIDEO, "empty.mp4": "failed",
}
EXPECTED_FILES = sorted(f"{stem}.{ext}" for stem in ("a/deep/no_face", "a/single_face", "b/single_face", "b/clip")
                        for ext in ("csv", "json"))


@pytest.fixture(scope="module")
def baseline(corpus, tmp_path_factory) -> tuple[Path, dict[str, bytes], subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("baseline") / "out"
    done = run_corpus_cli(corpus, out)
    return out, final_outputs(out), done


# ---------------------------------------------------------------------------- fast


def test_media_signatures():
    assert has_media_signature(b"\x00\x00\x00\x20ftypisom")
    assert has_media_signature(b"\x1a\x45\xdf\xa3rest")
    assert has_media_signature(b"\xff\xd8\xff\xe0")
    assert not has_media_signature(b"this is not a video\n")
    assert not has_media_signature(b"")


def test_list_inputs_from_folder_glob_and_csv_list(tmp_path):
    (tmp_path / "in" / "s").mkdir(parents=True)
    for name in ("in/x.mp4", "in/s/y.mov", "in/s/z.txt"):
        (tmp_path / name).write_text("x")
    out = tmp_path / "in" / "out"  # the output folder inside the input is never searched
    out.mkdir()
    (out / "x.csv").write_text("frame\n")
    root, items = list_inputs(tmp_path / "in", out)
    assert [i.rel.as_posix() for i in items] == ["s/y.mov", "s/z.txt", "x.mp4"]
    _, items = list_inputs(tmp_path / "in", out, "*.mov")
    assert [i.rel.as_posix() for i in items] == ["s/y.mov"]
    listing = tmp_path / "list.csv"
    listing.write_text("id,path\n1,in/x.mp4\n2,in/s/y.mov\n")
    root, items = list_inputs(listing, out)
    assert root == (tmp_path / "in").absolute()
    assert [i.rel.as_posix() for i in items] == ["s/y.mov", "x.mp4"]
    text = tmp_path / "list.txt"
    text.write_text("in/x.mp4\n\nin/s/y.mov\n")
    assert len(list_inputs(text, out)[1]) == 2
    item = CorpusItem(Path("in/s/y.mov"), Path("s/y.mov"))
    assert item.outputs(Path("O")) == (Path("O/s/y.csv"), Path("O/s/y.json"))


def test_stem_collision_is_refused_before_anything_runs(tmp_path, single_face_jpg):
    (tmp_path / "in" / "a").mkdir(parents=True)
    shutil.copy(single_face_jpg, tmp_path / "in" / "a" / "x.jpg")
    shutil.copy(single_face_jpg, tmp_path / "in" / "a" / "x.jpeg")
    done = run_corpus_cli(tmp_path / "in", tmp_path / "out")
    assert done.returncode == 2, done.stderr
    assert "would both write" in done.stderr and "x.jpeg" in done.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_corpus_outputs_and_manifest(corpus, baseline):
    out, outputs, done = baseline
    assert done.returncode == 1, done.stderr  # corrupt.mp4 and empty.mp4 failed
    assert sorted(outputs) == EXPECTED_FILES
    rows = rows_by_rel(out, corpus)
    assert {rel: row["status"] for rel, row in rows.items()} == EXPECTED_STATUS
    clip = rows["b/clip"]
    assert (clip["frames"], clip["faces"], clip["tracks"]) == ("72", "72", "1")
    assert (clip["csv"], clip["json"]) == ("b/clip.csv", "b/clip.json")
    assert rows["a/deep/no_face.mp4"]["faces"] == "0"
    assert rows["b/corrupt.mp4"]["error"] and not rows["b/corrupt.mp4"]["csv"]
    report = json.loads(outputs["b/clip.json"])
    assert set(report["fingerprints"]) == {"input", "config"}
    assert report["fingerprints"]["input"]["size"] == (corpus / "b" / "clip").stat().st_size
    assert "failed" in done.stderr and "corrupt.mp4" in done.stderr
    assert not partials(out)


def _wait_for(predicate, process, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found.extend(int(c) for c in task.read_text().split())
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the corpus process; wait until its workers (orphaned) are gone too."""
    children = _children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    deadline = time.monotonic() + 60
    for child in children:
        while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
            status = Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}").exists() else ""
            if "zombie" in status:
                break
            time.sleep(0.1)


def _check_visible(out: Path, expected: dict[str, bytes]) -> None:
    """Every file under a final name is complete (identical to the baseline's)."""
    for name, data in final_outputs(out).items():
        if name.endswith(".csv"):
            assert data == expected[name], name
        else:
            assert without_timings(data) == without_timings(expected[name]), name


@pytest.mark.slow
def test_sigkill_twice_then_resume_is_identical(corpus, baseline, tmp_path):
    _, expected, _ = baseline
    out = tmp_path / "out"
    # 1: killed once the first report is published (the longest video, b/clip, goes first)
    first = subprocess.Popen(corpus_cmd(corpus, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: (out / "b" / "clip.json").exists(), first)
    _kill_tree(first)
    _check_visible(out, expected)
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "b" / "clip.json", out / "b" / "clip.csv")}
    # 2: resumed, killed while a CSV is being written (a partial file exists)
    second = subprocess.Popen(corpus_cmd(corpus, out, "--resume"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: any(p.name.startswith(".no_face.csv") for p in partials(out)), second)
    _kill_tree(second)
    _check_visible(out, expected)
    # 3: resumed to the end
    done = run_corpus_cli(corpus, out, "--resume")
    assert done.returncode == 1, done.stderr
    assert_same_outputs(out, expected)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept  # b/clip was not redone
    rows = rows_by_rel(out, corpus)
    assert rows["b/clip"]["status"] == "skipped"
    assert {rel: row["status"] for rel, row in rows.items() if rel != "b/clip"} == \
        {rel: s for rel, s in EXPECTED_STATUS.items() if rel != "b/clip"}
    assert not [p for p in partials(out) if p.suffix in (".csv", ".json")
                and str(os.getpid()) in p.name]  # nothing of ours left behind


@pytest.mark.slow
def test_resume_skips_same_config_and_redoes_changed_config(corpus, baseline, tmp_path):
    src, expected, _ = baseline
    out = tmp_path / "out"
    shutil.copytree(src, out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    done = run_corpus_cli(corpus, out, "--resume")
    assert done.returncode == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps  # nothing redone
    assert {r["status"] for rel, r in rows_by_rel(out, corpus).items() if EXPECTED_STATUS[rel] == "done"} == {"skipped"}
    # another detect.min_score: another configuration fingerprint, so every video is redone
    # (--glob keeps this to the two quick images)
    toml = tmp_path / "changed.toml"
    toml.write_text('[embed]\nbackbone = "affstream-tiny:random"\nbatch_size = 64\n'
                    '[head]\nhead = "zeroshot"\n[detect]\nmin_score = 0.8\n')
    done = subprocess.run([sys.executable, "-m", "affstream", "corpus", str(corpus), "-o", str(out),
                           "--pipeline", str(toml), "--device", "cpu", "--workers", "1", "--resume",
                           "--glob", "*.jpg"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for rel in ("a/single_face.json", "b/single_face.json"):
        path = out / rel
        assert path.stat().st_mtime_ns != stamps[path]
        old, new = json.loads(expected[rel]), json.loads(path.read_bytes())
        assert new["fingerprints"]["config"] != old["fingerprints"]["config"]
        assert new["fingerprints"]["input"] == old["fingerprints"]["input"]
    rows = rows_by_rel(out, corpus)
    assert {rel: r["status"] for rel, r in rows.items()} == {"a/single_face.jpg": "done", "b/single_face.jpg": "done"}


@pytest.mark.slow
def test_worker_killed_mid_video_loses_only_that_video(tmp_path, single_face_mp4, single_face_jpg):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(single_face_mp4, root / "clip.mp4")
    shutil.copy(single_face_jpg, root / "still.jpg")
    out = tmp_path / "out"
    process = subprocess.Popen(corpus_cmd(root, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def workers() -> list[int]:
        return [c for c in _children(process.pid)
                if Path(f"/proc/{c}/cmdline").exists() and b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]

    assert _wait_for(lambda: bool(partials(out)) and bool(workers()), process)
    victims = workers()
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    assert "retrying" in stderr
    rows = rows_by_rel(out, root)
    assert {rel: r["status"] for rel, r in rows.items()} == {"clip.mp4": "done", "still.jpg": "done"}
    assert rows["clip.mp4"]["frames"] == "72"
    assert (out / "clip.csv").read_bytes().count(b"\n") == 73
    assert not partials(out)


# ---------------------------------------------------------------------------- Ray engine

MANIFEST_TIMING = ("seconds",)


def manifest_without_timings(out: Path, root: Path) -> dict[str, dict]:
    return {rel: {k: v for k, v in row.items() if k not in MANIFEST_TIMING} for rel, row in rows_by_rel(out, root).items()}


def ray_cmd(source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "affstream", "corpus", str(source), "-o", str(out), "--pipeline", "smoke",
            "--device", "cpu", "--engine", "ray", *extra]


@pytest.mark.slow
def test_ray_engine_same_outputs_and_manifest_as_local(corpus, baseline, tmp_path):
    pytest.importorskip("ray.data")
    local_out, expected, _ = baseline
    out = tmp_path / "out"
    # one actor, so it gets the baseline worker's torch threads (all the CPUs): with another
    # thread count float sums run in another order and a printed value can differ in its
    # last digit (seen on an AVX2 machine), which says nothing about the engine
    done = subprocess.run(ray_cmd(corpus, out, "--workers", "1"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr  # the same two failures as the local engine
    assert "Traceback" not in done.stderr
    assert_same_outputs(out, expected)
    assert manifest_without_timings(out, corpus) == manifest_without_timings(local_out, corpus)
    assert not partials(out)
    # resume on Ray: exactly the finished videos are skipped, nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    again = subprocess.run(ray_cmd(corpus, out, "--workers", "1", "--resume"), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 1, again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps
    rows = rows_by_rel(out, corpus)
    assert {rel for rel, r in rows.items() if r["status"] == "skipped"} == \
        {rel for rel, s in EXPECTED_STATUS.items() if s == "done"}


def _actor_pids() -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"MapBatches(_CorpusActor)" in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def _partial_pids(out: Path, stem: str) -> set[int]:
    """PIDs in the names of ``stem``'s partial CSVs (``.STEM.csv.partial-HOST-PID-...``)."""
    found = set()
    for path in partials(out):
        if path.name.startswith(f".{stem}.csv"):
            found.add(int(path.name.split(PARTIAL_TAG, 1)[1].split("-")[-2]))
    return found


@pytest.mark.slow
def test_ray_actor_killed_twice_on_a_video_fails_only_that_video(tmp_path, wolfgang_mp4, single_face_jpg):
    """A native crash kills the Ray actor; Ray restarts it and retries the video. The
    attempts are counted outside the actors: once retried, a second crash on the same
    video is its last, and the other video is still done."""
    pytest.importorskip("ray.data")
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(wolfgang_mp4, root / "clip.mp4")  # the longest: first
    shutil.copy(single_face_jpg, root / "still.jpg")
    out = tmp_path / "out"
    process = subprocess.Popen(ray_cmd(root, out, "--workers", "1"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    killed: set[int] = set()
    for _ in range(2):
        assert _wait_for(lambda: bool(_partial_pids(out, "clip") - killed), process, timeout=300)
        victim = (_partial_pids(out, "clip") - killed).pop()
        assert victim in _actor_pids()
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    rows = rows_by_rel(out, root)
    assert {rel: r["status"] for rel, r in rows.items()} == {"clip.mp4": "failed", "still.jpg": "done"}
    assert "crashed on this video, 2 times" in rows["clip.mp4"]["error"]
    assert not (out / "clip.csv").exists() and not (out / "clip.json").exists()
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_events_drive_the_progress_display(tmp_path, single_face_mp4, single_face_jpg):
    """run_corpus reports planned / started / progress / finished, and the CLI's progress
    display turns them into its counts (frames from the reports, bytes for the ETA)."""
    from affstream.api import resolve_config
    from affstream.cli._ui import CorpusProgress
    from affstream.corpus import run_corpus

    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(single_face_mp4, root / "clip.mp4")
    shutil.copy(single_face_jpg, root / "still.jpg")
    (root / "notes.mp4").write_text("not a video")
    events = []
    progress = CorpusProgress(Console(file=io.StringIO(), force_terminal=True, width=100))
    with progress:
        def on_event(kind, item, data):
            events.append((kind, None if item is None else item.rel.as_posix(), dict(data)))
            progress.event(kind, item, data)

        run_corpus(root, tmp_path / "out", resolve_config("smoke", device="cpu"), workers=1, on_event=on_event)
    kinds = [kind for kind, _, _ in events]
    assert kinds[0] == "finished" and events[0][1] == "notes.mp4"  # decided before any video ran
    assert kinds[1] == "planned" and events[1][2] == {"videos": 2, "bytes": (root / "clip.mp4").stat().st_size
                                                      + (root / "still.jpg").stat().st_size}
    clip = [(kind, data) for kind, rel, data in events if rel == "clip.mp4"]
    assert clip[0][0] == "started" and clip[-1][0] == "finished"
    done = [data["done"] for kind, data in clip if kind == "progress"]
    assert done == sorted(done) and done[-1] >= 64 and {data["total"] for kind, data in clip if kind == "progress"} == {72}
    assert progress.frames == 73 and progress.failed == 0 and progress.bytes_done == events[1][2]["bytes"]
    assert not progress.running
