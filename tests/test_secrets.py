"""No secret is written or served: credentials in a source URL are masked in every place a
source is named (the report, stderr, the dashboard label, the preview page, error lines),
while the source itself is still opened with them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from affstream.io.live import open_error, parse_source
from affstream.redact import redact

HERE = Path(__file__).parent
SENDER = HERE / "live_sender.py"
SMOKE = ["--pipeline", "smoke", "--device", "cpu", "--quiet"]
SECRET = "hunter2-Zq9"


@pytest.mark.parametrize("text, shown", [
    (f"rtsp://admin:{SECRET}@cam.local/stream", "rtsp://admin:***@cam.local/stream"),
    (f"rtsp://admin:a@b{SECRET}@cam.local:554/s", "rtsp://admin:***@cam.local:554/s"),  # "@" in the password
    (f"rtmp://u:{SECRET}@host/app?key={SECRET}&x=1", "rtmp://u:***@host/app?key=***&x=1"),
    (f"https://host/live.m3u8?token={SECRET}", "https://host/live.m3u8?token=***"),
    (f"srt://host:9000?passphrase={SECRET}&latency=20", "srt://host:9000?passphrase=***&latency=20"),
    (f"error: 'rtsp://u:{SECRET}@h/s': Connection refused", "error: 'rtsp://u:***@h/s': Connection refused"),
    ("udp://127.0.0.1:5000", "udp://127.0.0.1:5000"),
    ("rtsp://cam.local:554/stream", "rtsp://cam.local:554/stream"),
    ("/data/clips/take:1@home.mp4", "/data/clips/take:1@home.mp4"),  # a path, not a URL
])
def test_redact(text, shown):
    assert redact(text) == shown


def test_the_spec_names_the_source_without_its_password():
    url = f"rtsp://admin:{SECRET}@cam.local/stream?token={SECRET}"
    spec = parse_source(url)
    assert spec.target == url  # opened with its credentials
    assert SECRET not in spec.label and spec.label == "rtsp://admin:***@cam.local/stream?token=***"
    error = open_error(spec, ConnectionRefusedError(f"Connection refused: '{url}'"))
    assert SECRET not in str(error)


def test_unknown_protocol_error_masks_the_password():
    with pytest.raises(Exception) as caught:
        parse_source(f"gopher://me:{SECRET}@host/x")
    assert SECRET not in str(caught.value) and "gopher://me:***@host/x" in str(caught.value)


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.torch
def test_a_session_with_credentials_writes_and_prints_none(tmp_path, single_face_mp4):
    """A real session over TCP whose URL carries a user and password: rows arrive (the URL
    was used as given), and neither the report, the logs nor stderr hold the password."""
    port = _free_tcp_port()
    send = subprocess.Popen([sys.executable, str(SENDER), str(single_face_mp4), f"tcp://127.0.0.1:{port}?listen=1",
                             "--frames", "40"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        out = tmp_path / "out"
        done = subprocess.run([sys.executable, "-m", "affstream", "-v", "stream",
                               f"tcp://viewer:{SECRET}@127.0.0.1:{port}", "-o", str(out), *SMOKE,
                               "--max-frames", "40", "--reconnect-s", "1"],
                              capture_output=True, text=True, timeout=300)
    finally:
        send.kill()
        send.wait()
    assert SECRET not in done.stderr and SECRET not in done.stdout
    files = list(out.iterdir())
    assert files and all(SECRET not in path.name for path in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    report = json.loads(next(p for p in files if p.suffix == ".json").read_text())
    assert report["source"]["source"] == f"tcp://viewer:***@127.0.0.1:{port}"
    assert report["counts"]["frames_received"] > 0


@pytest.mark.slow
@pytest.mark.torch
def test_an_unreachable_source_with_credentials_is_one_masked_line(tmp_path):
    port = _free_tcp_port()  # nobody listens
    done = subprocess.run([sys.executable, "-m", "affstream", "stream", f"tcp://viewer:{SECRET}@127.0.0.1:{port}",
                           "-o", str(tmp_path / "out"), *SMOKE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert SECRET not in done.stderr and "viewer:***@" in done.stderr
    assert not (tmp_path / "out").exists()  # a session that never started leaves no empty folder
