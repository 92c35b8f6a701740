"""``affstream stream``: live sources on loopback (a PyAV sender in its own process,
MPEG-TS over UDP and TCP), newest-frame-wins with every frame logged, reconnect then
fail, stopping by signal, files that survive SIGKILL, and live == offline on a file
for per-frame and causal temporal heads. No hardware: cameras are tested through
their argument mapping."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from affstream.errors import SourceError
from affstream.io.live import KIND_CAMERA, KIND_FILE, KIND_URL, LiveFeed, camera_spec, parse_source, url_options
from affstream.writers.columns import CSV_COLUMNS
from affstream.writers.live import LIVE_TABLE_COLUMNS

HERE = Path(__file__).parent
SENDER = HERE / "live_sender.py"
SMOKE = ["--pipeline", "smoke", "--device", "cpu"]


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stream_cmd(source: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "affstream", "stream", source, "-o", str(out), *SMOKE, "--quiet", *extra]


def sender(clip: Path, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SENDER), str(clip), url, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def read_log(out: Path, stem: str) -> tuple[list[dict], list[dict], dict]:
    """CSV rows, JSONL records and the report; every CSV line must have every cell."""
    with (out / f"{stem}.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        assert tuple(next(reader)) == LIVE_TABLE_COLUMNS
        rows = []
        for cells in reader:
            assert len(cells) == len(LIVE_TABLE_COLUMNS), cells
            rows.append(dict(zip(LIVE_TABLE_COLUMNS, cells, strict=True)))
    records = [json.loads(line) for line in (out / f"{stem}.jsonl").read_text().splitlines()]
    report = json.loads((out / f"{stem}.json").read_text())
    return rows, records, report


def check_every_frame_logged(rows: list[dict], report: dict) -> None:
    frames = sorted({int(r["frame"]) for r in rows})
    assert frames == list(range(1, len(frames) + 1))  # one row (or one per face) per frame received
    assert len(frames) == report["counts"]["frames_received"]
    dropped = {int(r["frame"]) for r in rows if r["status"] == "dropped"}
    assert len(dropped) == report["counts"]["frames_dropped"]
    assert all(r["success"] == "0" and r["face_id"] == "-1" and r["valence"] == "" for r in rows
               if r["status"] == "dropped")
    times = [float(r["timestamp"]) for r in rows]
    assert times == sorted(times)  # the source's own times, in frame order


# ------------------------------------------------------------------------- fast


def test_camera_argument_mapping_per_platform():
    linux = camera_spec("0", "linux", size="1280x720", fps=30, pixel_format="mjpeg")
    assert (linux.kind, linux.format, linux.target) == (KIND_CAMERA, "v4l2", "/dev/video0")
    assert linux.options["video_size"] == "1280x720" and linux.options["framerate"] == "30"
    assert linux.options["input_format"] == "mjpeg"
    assert camera_spec("/dev/video2", "linux").target == "/dev/video2"
    mac = camera_spec("1", "darwin", pixel_format="uyvy422")
    assert (mac.format, mac.target, mac.options["pixel_format"]) == ("avfoundation", "1:none", "uyvy422")
    assert "framerate" in mac.options  # avfoundation needs a rate
    win = camera_spec("Integrated Camera", "win32", size="640x480")
    assert (win.format, win.target) == ("dshow", "video=Integrated Camera")
    with pytest.raises(SourceError, match="DirectShow opens cameras by name"):
        camera_spec("0", "win32")
    with pytest.raises(SourceError, match="WIDTHxHEIGHT"):
        camera_spec("0", "linux", size="big")
    with pytest.raises(SourceError, match="no FFmpeg camera input"):
        camera_spec("0", "sunos5")
    assert parse_source("0", platform="linux").format == "v4l2"


def test_url_and_file_sources():
    rtsp = url_options("rtsp://cam/stream", read_timeout_s=2.5)
    assert rtsp["rtsp_transport"] == "tcp" and rtsp["timeout"] == "2500000"  # microseconds; stimeout is gone
    assert url_options("udp://127.0.0.1:5000")["overrun_nonfatal"] == "1"
    assert "rw_timeout" in url_options("https://host/live.m3u8")
    assert parse_source("tcp://127.0.0.1:9").kind == KIND_URL
    with pytest.raises(SourceError, match="unknown stream protocol"):
        parse_source("gopher://x")
    with pytest.raises(SourceError, match="SRT"):
        parse_source("srt://127.0.0.1:9000")
    with pytest.raises(SourceError, match="no such file, camera index or URL"):
        parse_source("/nonexistent/clip.mp4")
    spec = parse_source(str(HERE / "data" / "single_face.mp4"), realtime=True)
    assert spec.kind == KIND_FILE and spec.realtime and not spec.live


def test_log_stem():
    from affstream.cli.stream import log_stem

    assert log_stem("0") == "camera0"
    assert log_stem("udp://127.0.0.1:5000?fifo_size=1") == "udp_127.0.0.1_5000"
    assert log_stem("rtsp://user:pw@cam.local/live") == "rtsp_cam.local_live"
    assert log_stem("videos/talk.mp4") == "talk"


def test_newest_frame_wins_and_every_frame_is_accounted_for(single_face_mp4):
    """A file paced in real time (30 fps) and a consumer taking 4 frames/s: frames
    waiting are replaced by newer ones, the replaced ones are reported in order."""
    feed = LiveFeed(parse_source(str(single_face_mp4), realtime=True))
    feed.start()
    seen, dropped_seen = [], []
    while not feed.finished:
        dropped, frame = feed.take(timeout=1.0)
        dropped_seen += [d.frame_index for d in dropped]
        if frame is not None:
            seen.append(frame.frame_index)
            assert frame.image.shape == (360, 640, 3)
            time.sleep(0.25)
    feed.stop()
    assert sorted(seen + dropped_seen) == list(range(1, 73))
    assert len(dropped_seen) > 36 and feed.stats.dropped == len(dropped_seen)
    assert seen == sorted(seen)


def test_file_without_realtime_drops_nothing(single_face_mp4):
    feed = LiveFeed(parse_source(str(single_face_mp4)))
    feed.start()
    seen = []
    while not feed.finished:
        dropped, frame = feed.take(timeout=1.0)
        assert not dropped
        if frame is not None:
            seen.append((frame.frame_index, frame.time_s))
            time.sleep(0.002)
    assert [i for i, _ in seen] == list(range(1, 73))
    assert seen[1][1] == pytest.approx(1 / 30, abs=1e-6)


def test_non_causal_temporal_head_is_refused_live():
    from affstream.errors import ConfigError
    from affstream.heads.base import load_head_checkpoint
    from affstream.pipeline.live import live_predictor
    from affstream.runtime import StageTimes

    head, _ = load_head_checkpoint(HERE / "golden" / "heads" / "temporal.safetensors")
    with pytest.raises(ConfigError, match="--causal"):
        live_predictor(head, StageTimes("cpu"), 10, 8, allow_lag=False)
    assert type(live_predictor(head, StageTimes("cpu"), 10, 8, allow_lag=True)).__name__ == "WindowPredictor"


# ------------------------------------------------------------------------- slow


def _offline_rows(clip: Path, head: str | None = None):
    from affstream.api import annotate

    return list(annotate(clip, pipeline="smoke", device="cpu", head=head))


def _assert_same_rows(live, offline) -> None:
    assert [(r.frame_index, r.track_id) for r in live] == [(r.frame_index, r.track_id) for r in offline]
    for a, b in zip(live, offline, strict=True):
        assert a.time_s == pytest.approx(b.time_s, abs=1e-6)
        if not b.success:
            assert not a.success
            continue
        np.testing.assert_allclose(a.box_xyxy, b.box_xyxy, atol=0.05)
        for name in ("valence", "arousal"):
            if getattr(b, name) is not None:
                assert getattr(a, name) == pytest.approx(getattr(b, name), abs=2e-4)
        for name in ("expr_probs", "au_probs"):
            if getattr(b, name) is not None:
                np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("head", [None, str(HERE / "golden" / "heads" / "temporal_causal.safetensors")],
                         ids=["zeroshot", "causal-temporal"])
def test_stream_of_a_file_equals_annotate(single_face_mp4, head):
    """Not real time, nothing dropped, detection on every frame: the live schedule gives
    the offline values on every frame (per-frame head; causal temporal head)."""
    import affstream

    session = affstream.stream(single_face_mp4, pipeline="smoke", device="cpu", head=head, detect_every=1)
    live = list(session)
    assert {r.status for r in live} == {"ok"}
    assert session.report()["counts"]["frames_dropped"] == 0
    _assert_same_rows([r.row for r in live], _offline_rows(single_face_mp4, head))


def _wait_udp_bound(port: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until a socket is bound to UDP ``port`` on 127.0.0.1 (read from /proc/net/udp)."""
    wanted = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(line.split()[1] == wanted for line in Path("/proc/net/udp").read_text().splitlines()[1:]):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing bound UDP port {port}")


@pytest.mark.slow
def test_udp_real_time_sender_then_gone(tmp_path, wolfgang_mp4):
    """A camera-like sender at 30 fps over UDP, gone after 240 frames: rows for every
    frame received, drops counted, latency not growing, then reconnecting for 1 s and
    a non-zero exit with one line; the files stay complete."""
    port = free_port()
    out = tmp_path / "out"
    receiver = subprocess.Popen(stream_cmd(f"udp://127.0.0.1:{port}", out, "--reconnect-s", "1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_udp_bound(port, receiver)  # the receiver has loaded its models and waits for data
    send = sender(wolfgang_mp4, f"udp://127.0.0.1:{port}", "--frames", "240")
    send.wait(timeout=120)
    _, stderr = receiver.communicate(timeout=120)
    assert receiver.returncode == 1, stderr
    assert "stopped sending" in stderr and "Traceback" not in stderr
    stem = f"udp_127.0.0.1_{port}"
    rows, records, report = read_log(out, stem)
    assert len(records) == len(rows) and [r["frame"] for r in records] == [int(r["frame"]) for r in rows]
    check_every_frame_logged(rows, report)
    assert 200 <= report["counts"]["frames_received"] <= 240
    assert report["error"] and report["source"]["codec"] == "h264" and report["source"]["width"] == 640
    analysed = [float(r["latency_ms"]) for r in rows if r["status"] == "ok"]
    quarter = max(1, len(analysed) // 4)
    first, last = np.median(analysed[:quarter]), np.median(analysed[-quarter:])
    assert last <= 2.0 * first + 300.0, (first, last)  # newest frame wins: latency stays bounded


@pytest.mark.slow
def test_tcp_sender_faster_than_the_models(tmp_path, wolfgang_mp4):
    """A sender at 4x real time over TCP (the sender listens, as a camera does): the
    models cannot keep up, frames are dropped and counted, latency stays bounded;
    --max-frames ends the session cleanly (exit 0)."""
    port = free_port(socket.SOCK_STREAM)
    send = sender(wolfgang_mp4, f"tcp://127.0.0.1:{port}?listen=1", "--speed", "4")
    time.sleep(1.0)
    out = tmp_path / "out"
    done = subprocess.run(stream_cmd(f"tcp://127.0.0.1:{port}", out, "--max-frames", "300"),
                          capture_output=True, text=True, timeout=180)
    send.kill()
    assert done.returncode == 0, done.stderr
    rows, _, report = read_log(out, f"tcp_127.0.0.1_{port}")
    check_every_frame_logged(rows, report)
    assert report["counts"]["frames_received"] >= 300
    assert report["counts"]["frames_dropped"] > 0.3 * report["counts"]["frames_received"]
    assert report["latency"]["max_ms"] < 5000.0


@pytest.mark.slow
def test_tcp_sender_restarts_and_the_session_reconnects(tmp_path, single_face_mp4):
    """The sender goes away after 60 frames and a new one listens again on the same
    port: the session reconnects, times go on increasing, every frame is logged."""
    port = free_port(socket.SOCK_STREAM)
    url = f"tcp://127.0.0.1:{port}"
    first = sender(single_face_mp4, url + "?listen=1", "--frames", "60")
    time.sleep(0.5)
    out = tmp_path / "out"
    receiver = subprocess.Popen(stream_cmd(url, out, "--max-frames", "100", "--reconnect-s", "20"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first.wait(timeout=120)
    second = sender(single_face_mp4, url + "?listen=1", "--loops", "3")
    _, stderr = receiver.communicate(timeout=180)
    second.kill()
    assert receiver.returncode == 0, stderr
    assert "reconnected" in stderr
    rows, _, report = read_log(out, f"tcp_127.0.0.1_{port}")
    check_every_frame_logged(rows, report)
    assert report["counts"]["reconnects"] == 1 and report["counts"]["frames_received"] == 100


def _wait_rows(path: Path, count: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") > count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path}: fewer than {count} rows before the deadline")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_with_complete_files(tmp_path, wolfgang_mp4, signum):
    out = tmp_path / "out"
    process = subprocess.Popen(stream_cmd(str(wolfgang_mp4), out, "--realtime"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_rows(out / "WolfgangLanger_Pexels.csv", 20, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    rows, records, report = read_log(out, "WolfgangLanger_Pexels")
    assert len(rows) == len(records) == report["counts"]["rows"]
    check_every_frame_logged(rows, report)
    assert report["stopped_by"] == signal.Signals(signum).name
    assert report["counts"]["frames_received"] < 472
    assert "frames received" in stderr


@pytest.mark.slow
def test_sigkill_leaves_parseable_logs(tmp_path, wolfgang_mp4):
    out = tmp_path / "out"
    process = subprocess.Popen(stream_cmd(str(wolfgang_mp4), out, "--realtime"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _wait_rows(out / "WolfgangLanger_Pexels.jsonl", 15, process)
    process.kill()
    process.wait(30)
    lines = (out / "WolfgangLanger_Pexels.csv").read_text().splitlines()
    assert tuple(lines[0].split(",")) == LIVE_TABLE_COLUMNS
    assert all(len(next(csv.reader([line]))) == len(LIVE_TABLE_COLUMNS) for line in lines[1:])
    records = [json.loads(line) for line in (out / "WolfgangLanger_Pexels.jsonl").read_text().splitlines()]
    assert len(records) >= 15 and all(set(CSV_COLUMNS) <= set(r) for r in records)
    assert not (out / "WolfgangLanger_Pexels.json").exists()  # the report is written at the end only


@pytest.mark.slow
def test_unopenable_source_is_one_line(tmp_path):
    port = free_port(socket.SOCK_STREAM)  # nobody listens there
    done = subprocess.run(stream_cmd(f"tcp://127.0.0.1:{port}", tmp_path / "out"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"tcp://127.0.0.1:{port}" in lines[0] and "cannot be opened" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_allow_lag_runs_a_non_causal_head_and_states_the_lag(single_face_mp4):
    """With --allow-lag a non-causal temporal head runs live: rows come once their
    window is complete, they equal annotate's, and the report says so."""
    import affstream

    head = str(HERE / "golden" / "heads" / "temporal.safetensors")
    session = affstream.stream(single_face_mp4, pipeline="smoke", device="cpu", head=head, detect_every=1,
                               allow_lag=True)
    live = list(session)
    report = session.report()
    assert report["lag"]["frames"] == 24 and "allow-lag" in report["lag"]["why"]
    _assert_same_rows([r.row for r in live], _offline_rows(single_face_mp4, head))
    # the first rows waited for their window: their latency exceeds that of a per-frame head's row
    assert max(r.latency_ms for r in live[:10]) > min(r.latency_ms for r in live[-10:])
