"""``affstream stream --preview``: the session's observer hook, the preview's hub and
server without models (records, stats, the JPEG with its overlay, the event stream, the
end, 127.0.0.1 only, foreign Host refused), a taken port as one line, and the page in
headless Chromium against a real ``stream`` of a file source (pictures and charts
update, no console error, the end is shown), with a screenshot kept in
``$AFFSTREAM_TEST_SCREENSHOTS`` when set."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from browser import Chromium, find_chromium
from PIL import Image

from affstream.pictures.preview import LivePreview, PreviewHub
from affstream.pipeline.live import ObservedFrame
from affstream.records import STATUS_DROPPED, STATUS_OK, FrameAnnotation, LiveRow

HERE = Path(__file__).parent
SMOKE = ["--pipeline", "smoke", "--device", "cpu"]
CHROMIUM = find_chromium()
BOX = np.array([200.0, 80.0, 320.0, 230.0], dtype=np.float32)  # x0, y0, x1, y1 of the fake face


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keep(shot: Path) -> None:
    folder = os.environ.get("AFFSTREAM_TEST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(folder) / shot.name)


def listening_sockets(port: int) -> list[tuple[str, str]]:
    """(table, local address in hex) of every socket listening on TCP ``port`` (Linux /proc)."""
    found = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append((table, address))
    return found


# ------------------------------------------------------------------------- fast: no models


def fake_frame(index: int, face: bool = True, dropped: bool = False, size=(360, 640)) -> ObservedFrame:
    """Frame ``index`` at 30 fps: a grey gradient picture and one face (track 0) whose
    valence moves with time, or no face, or dropped (no picture)."""
    t = (index - 1) / 30.0
    arrival = 0.5 + t
    if dropped:
        row = FrameAnnotation(frame_index=index, time_s=t, track_id=-1, confidence=0.0, success=False)
        return ObservedFrame(index, t, None, (LiveRow(row, arrival, 2.0, STATUS_DROPPED),))
    height, width = size
    image = np.broadcast_to(np.linspace(40, 200, width, dtype=np.uint8)[None, :, None], (height, width, 3)).copy()
    if not face:
        row = FrameAnnotation(frame_index=index, time_s=t, track_id=-1, confidence=0.0, success=False)
        return ObservedFrame(index, t, image, (LiveRow(row, arrival, 40.0, STATUS_OK),))
    probs = np.full(8, 0.05, dtype=np.float32)
    probs[4] = 0.65
    au = np.linspace(0.1, 0.9, 12, dtype=np.float32)
    row = FrameAnnotation(frame_index=index, time_s=t, track_id=0, confidence=0.99, success=True,
                          box_xyxy=BOX * (width / 640.0), valence=float(np.sin(t)), arousal=-0.3, expression=4,
                          expr_probs=probs, au_probs=au, au_present=au >= 0.5)
    return ObservedFrame(index, t, image, (LiveRow(row, arrival, 40.0 + index, STATUS_OK),))


class Events:
    """A reader of ``/events`` on its own thread: (event, data) pairs in a queue."""

    def __init__(self, port: int, token: str) -> None:
        self.events: queue.Queue = queue.Queue()
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("GET", f"/events?token={token}")
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type").startswith("text/event-stream")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind, data = None, []
        for raw in self.response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and kind is not None:
                self.events.put((kind, json.loads("\n".join(data))))
                kind, data = None, []
        self.events.put(("closed", None))

    def until(self, wanted: str, timeout: float = 10.0) -> list[tuple[str, object]]:
        """Every event up to and including the first ``wanted`` one."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            kind, data = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            seen.append((kind, data))
            if kind == wanted:
                return seen
            assert kind != "closed", seen


def get(port: int, path: str, host: str | None = None, token: str | None = None,
        cookie: str | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host} if host else {}
    if cookie:
        headers["Cookie"] = cookie
    if token is not None:
        path += ("&" if "?" in path else "?") + f"token={token}"
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


def test_preview_server_without_models():
    clock = [0.0]
    hub = PreviewHub(clock=lambda: clock[0])
    preview = LivePreview.start(0, source="synthetic source", hub=hub)
    try:
        host, port = preview.address
        token = preview.token
        assert len(token) >= 32 and host == "127.0.0.1" and preview.url == f"http://127.0.0.1:{port}/?token={token}"
        if Path("/proc/net/tcp").exists():
            assert listening_sockets(port) == [("tcp", "0100007F")]  # 127.0.0.1 only, no IPv6, no 0.0.0.0
        # without the token (or with another), no route answers: another local account sees nothing
        for path in ("/", "/events", "/frame.jpg", "/state.json", "/nothing"):
            assert get(port, path)[0] == 403
            assert get(port, path, token=token[:-1] + ("A" if token[-1] != "A" else "B"))[0] == 403
            assert get(port, path, cookie=f"affstream_preview_{port}=wrong")[0] == 403

        status, headers, body = get(port, "/", token=token)
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(f"affstream_preview_{port}={token};") and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie and headers["Referrer-Policy"] == "no-referrer"
        assert get(port, "/state.json", cookie=f"affstream_preview_{port}={token}")[0] == 200  # the page's requests
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        page = body.decode()
        assert "synthetic source" in page and "affstream-live" in page
        assert 'src="http' not in page and 'href="http' not in page and "url(" not in page  # nothing from elsewhere
        assert "connect-src 'self'" in headers["Content-Security-Policy"]
        assert get(port, "/", host=f"attacker.example:{port}", token=token)[0] == 403  # DNS rebinding
        assert get(port, "/", host=f"localhost:{port}", token=token)[0] == 200
        assert get(port, "/frame.jpg", token=token)[0] == 404  # no picture yet
        assert get(port, "/nothing", token=token)[0] == 404

        reader = Events(port, token)
        for index in range(1, 31):  # 1 s of frames with a face, but one without and the last dropped
            clock[0] = 0.5 + (index - 1) / 30.0 + 0.05
            hub.observe(fake_frame(index, face=index != 15, dropped=index == 30))
            time.sleep(0.005)
        seen = reader.until("frame")
        rows = [r for kind, data in seen if kind == "rows" for r in data]
        assert rows and rows[0]["f"] == 1 and rows[0]["faces"][0]["id"] == 0
        face = rows[0]["faces"][0]
        assert face["e"][4] == pytest.approx(0.65) and len(face["au"]) == 12 and sum(face["on"]) == 6
        assert face["v"] == pytest.approx(0.0) and face["a"] == pytest.approx(-0.3)

        deadline = time.monotonic() + 10
        while (hub.state()["stats"]["frames"] < 30 or hub.state()["picture"]["f"] != 29) and time.monotonic() < deadline:
            time.sleep(0.05)
        state = json.loads(get(port, "/state.json", token=token)[2])
        stats = state["stats"]
        assert (stats["frames"], stats["analysed"], stats["dropped"]) == (30, 29, 1)
        assert stats["fps_in"] == pytest.approx(30.0, rel=0.05) and stats["latency_ms"]["median"] is not None
        assert state["picture"]["w"] == 640 and state["ended"] is None

        status, headers, jpeg = get(port, "/frame.jpg", token=token)
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert headers["X-Frame-Index"] == "29"  # the newest picture (frame 30 was dropped)
        with Image.open(io.BytesIO(jpeg)) as image:
            assert image.size == (640, 360)
            pixels = np.asarray(image.convert("RGB")).astype(int)
        raw = fake_frame(1).image.astype(int)
        # the overlay: the box edge is drawn (far from the gradient), the face inside it is not
        x0, y0, x1, y1 = BOX.astype(int)
        assert np.abs(pixels[y0 - 2 : y0 + 1, x0 + 20 : x1 - 20] - raw[y0 - 2 : y0 + 1, x0 + 20 : x1 - 20]).mean() > 30
        assert np.abs(pixels[y0 + 30 : y1 - 30, x0 + 30 : x1 - 30] - raw[y0 + 30 : y1 - 30, x0 + 30 : x1 - 30]).mean() < 6

        # a second page opened later gets the history first
        late = Events(port, token)
        history = [r for kind, data in late.until("rows") if kind == "rows" for r in data]
        assert [r["f"] for r in history][:3] == [1, 2, 3]

        preview.close({"text": "all done"})
        for events in (reader, late):
            assert events.until("end")[-1] == ("end", {"text": "all done"})
        hub.observe(fake_frame(31))  # after the end: ignored
    finally:
        preview.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors through /proc")
def test_half_open_connections_cannot_exhaust_the_preview():
    """400 connections that never send a request: the server holds at most MAX_CONNECTIONS
    of them (the rest are closed on arrival), drops those after the request timeout, keeps
    drawing, and then answers the page again."""
    from affstream.pictures.preview.server import MAX_CONNECTIONS

    hub = PreviewHub()
    preview = LivePreview.start(0, source="synthetic source", hub=hub, request_timeout_s=1.0)
    port, token = preview.address[1], preview.token
    idle: list[socket.socket] = []
    try:
        before = _open_fds()
        for _ in range(400):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.5)
        held_by_server = _open_fds() - before - len(idle)
        assert held_by_server <= MAX_CONNECTIONS + 4, held_by_server
        hub.watch(+1)
        hub.observe(fake_frame(1))
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline:  # the held ones time out after 1 s
            try:
                status = get(port, "/state.json", token=token)[0]
            except (ConnectionError, http.client.HTTPException, TimeoutError):
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200
        while hub.state()["picture"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.state()["picture"]["f"] == 1  # the drawing thread survived
        hub.watch(-1)
    finally:
        for sock in idle:
            sock.close()
        preview.close()


def test_preview_scales_big_pictures_down():
    hub = PreviewHub(max_side=320)
    for index in (1, 2):
        hub.observe(fake_frame(index, size=(720, 1280)))
    hub.finish({"text": "end"})  # never started: drawn on this thread
    picture = hub.jpeg()
    assert (picture.width, picture.height, picture.frame_index) == (320, 180, 2)
    with Image.open(io.BytesIO(picture.jpeg)) as image:
        assert image.size == (320, 180)
    assert hub.ended and hub.state()["ended"] == {"text": "end"}


def test_pictures_are_drawn_only_while_watched():
    hub = PreviewHub()
    hub.start()
    try:
        for index in range(1, 6):
            hub.observe(fake_frame(index))
        deadline = time.monotonic() + 10
        while hub.state()["stats"]["frames"] < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert hub.state()["picture"] is None  # rows are taken, but nobody watches: nothing drawn
        hub.watch(+1)
        hub.observe(fake_frame(6))
        while hub.state()["picture"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hub.state()["picture"]["f"] == 6
        hub.watch(-1)
    finally:
        hub.finish()


@pytest.mark.slow
def test_a_taken_preview_port_is_one_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "affstream", "stream", str(HERE / "data" / "single_face.mp4"),
                               "--preview-port", str(port), "-o", str(tmp_path / "out"), *SMOKE, "--quiet"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"preview port {port}" in errors[0] and "in use" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "preview: http" not in done.stderr
    assert not list((tmp_path / "out").glob("*.csv"))  # the session never started


# ------------------------------------------------------------------------- slow: real sessions


@pytest.mark.slow
def test_observer_sees_every_frame_with_its_picture_and_rows(single_face_mp4, caplog):
    """A real session (file paced in real time, so frames are dropped): the observer gets
    every frame once, in order, after its rows were handed out, with the analysed picture;
    a failing observer is detached and the session goes on."""
    import affstream

    seen: list[ObservedFrame] = []
    handed: list[LiveRow] = []

    def observer(frame: ObservedFrame) -> None:
        assert all(row in handed for row in frame.rows)  # its rows were handed out first
        seen.append(frame)

    session = affstream.stream(single_face_mp4, pipeline="smoke", device="cpu", realtime=True)
    session.observer = observer
    for row in session:
        handed.append(row)
        time.sleep(0.03)  # a slow consumer: frames are dropped
    assert [f.frame_index for f in seen] == list(range(1, 73))
    assert [row for frame in seen for row in frame.rows] == handed
    dropped = [f for f in seen if f.dropped]
    assert dropped and all(f.image is None and f.rows[0].status == STATUS_DROPPED for f in dropped)
    analysed = [f for f in seen if not f.dropped]
    assert all(f.image.shape == (360, 640, 3) and f.image.dtype == np.uint8 for f in analysed)
    assert all(r.row.frame_index == f.frame_index for f in seen for r in f.rows)
    assert session._images == {}

    # a lagged (non-causal temporal) head: rows come a window later, each with its own picture
    lagged: list[ObservedFrame] = []
    session = affstream.stream(single_face_mp4, pipeline="smoke", device="cpu", allow_lag=True, max_frames=30,
                               head=str(HERE / "golden" / "heads" / "temporal.safetensors"))
    session.observer = lagged.append
    rows = list(session)
    received = session.report()["counts"]["frames_received"]
    assert session.lagged and received >= 30 and sorted(f.frame_index for f in lagged) == list(range(1, received + 1))
    assert [r for f in lagged for r in f.rows] == rows
    assert all((f.image is None) == f.dropped for f in lagged)  # (a frame waiting when it stops is dropped)
    assert sum(not f.dropped for f in lagged) >= 29 and all(f.image.shape == (360, 640, 3) for f in lagged if not f.dropped)
    assert session._images == {}

    calls = []

    def broken(frame: ObservedFrame) -> None:
        calls.append(frame.frame_index)
        raise ValueError("boom")

    session = affstream.stream(single_face_mp4, pipeline="smoke", device="cpu", max_frames=10)
    session.observer = broken
    with caplog.at_level(logging.WARNING, logger="affstream"):
        rows = list(session)
    assert len({r.row.frame_index for r in rows}) >= 10 and calls == [1] and session.observer is None
    assert "observer failed (ValueError: boom)" in caplog.text


_STATE = """(() => {
  const canvas = document.getElementById('video');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 0, lit = 0;
  for (let i = 0; i < data.length; i += 61) { hash = (hash * 31 + data[i]) >>> 0; lit += data[i] > 16 ? 1 : 0; }
  const va = document.querySelector('svg.live-va');
  return {
    state: document.documentElement.getAttribute('data-state'),
    pictures: Number(document.documentElement.getAttribute('data-pictures') || 0),
    records: Number(document.documentElement.getAttribute('data-records') || 0),
    frame: canvas.getAttribute('data-frame'),
    size: [canvas.width, canvas.height],
    hash: hash, lit: lit,
    faces: Array.from(document.querySelectorAll('article.face-live')).map(a => a.getAttribute('data-face')),
    valence: va ? va.querySelector('path.line-valence').getAttribute('d') : '',
    arousal: va ? va.querySelector('path.line-arousal').getAttribute('d') : '',
    points: va ? Number(va.getAttribute('data-points')) : 0,
    bars: Array.from(document.querySelectorAll('.face-live .expr-bars .fill')).map(f => f.style.width),
    aus: document.querySelectorAll('.face-live .au-grid .au').length,
    now: (document.querySelector('.face-live .face-now') || {}).textContent || '',
    tiles: Array.from(document.querySelectorAll('#stats .tile-value')).map(t => t.textContent),
    caption: document.getElementById('video-caption').textContent,
    ended: document.getElementById('ended').hidden ? null : document.getElementById('ended').textContent,
    banner: (document.querySelector('.banner') || {}).textContent || '',
  };
})()"""


def _wait_page(browser: Chromium, done, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = browser.evaluate(_STATE)
        if done(state):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.2)


def _read_url(process: subprocess.Popen, lines: list[str], timeout: float = 180.0) -> str:
    """The preview URL from the stream's stderr (read on a thread into ``lines``)."""
    found: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if line.startswith("preview: "):
                found.put(line.split(" ", 1)[1].strip())

    threading.Thread(target=read, daemon=True).start()
    try:
        return found.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError("no preview URL on stderr: " + "".join(lines)) from None


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_preview_page_of_a_real_stream(tmp_path, wolfgang_mp4):
    port = free_tcp_port()
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "affstream", "stream", str(wolfgang_mp4), "--realtime", "--preview",
                                "--preview-port", str(port), *SMOKE, "--quiet", "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        url = _read_url(process, lines)
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        base = url.split("?", 1)[0]
        assert listening_sockets(port) == [("tcp", "0100007F")]  # 127.0.0.1 only
        with Chromium(CHROMIUM, width=1280, height=860) as browser:
            browser.open(url, offline=False)
            first = _wait_page(browser, lambda s: s["pictures"] >= 1 and s["points"] >= 5 and s["tiles"][0] != "\u2013")
            assert first["state"] == "live" and first["size"] == [640, 360] and first["lit"] > 100
            assert first["faces"] == ["0"] and first["valence"].startswith("M") and first["arousal"].startswith("M")
            assert len(first["bars"]) == 8 and all(w.endswith("%") for w in first["bars"]) and first["aus"] == 12
            assert "valence" in first["now"] and "arousal" in first["now"] and "SMOKE" in first["banner"]
            assert first["caption"].startswith("frame ")
            time.sleep(1.5)
            second = _wait_page(browser, lambda s: s["pictures"] >= first["pictures"] + 3)
            assert second["frame"] != first["frame"] and second["hash"] != first["hash"]
            assert second["records"] > first["records"] and second["valence"] != first["valence"]
            assert second["tiles"] != first["tiles"] or second["caption"] != first["caption"]
            assert browser.errors == []
            outside = [u for u in browser.requests if not u.startswith((base, "data:", "about:", "blob:"))]
            assert outside == [], "the page asked for something other than its server"
            shot = browser.screenshot(tmp_path / "stream_preview.png", full_page=False)

            assert process.poll() is None, "the stream ended before it was stopped: " + "".join(lines)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
            assert process.returncode == 0, "".join(lines)
            ended = _wait_page(browser, lambda s: s["state"] == "ended", timeout=15)
            assert ended["ended"].startswith("The session ended: ") and "frames received" in ended["ended"]
            assert "stopped by SIGINT" in ended["ended"]
            assert browser.errors == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with Image.open(shot) as image:
        assert image.size == (1280, 860)
    keep(shot)
    report = json.loads((out / "WolfgangLanger_Pexels.json").read_text())
    assert report["stopped_by"] == "SIGINT" and report["counts"]["rows"] > 0
    rows = (out / "WolfgangLanger_Pexels.csv").read_text().splitlines()
    assert len(rows) - 1 == report["counts"]["rows"]
    assert listening_sockets(port) == []


@pytest.mark.parametrize("source", ["</script><script>alert(1)</script>", "cam <!-- <script> x", "caf\u00e9 \u2028 <\\/"])
def test_embedded_json_cannot_leave_its_script_element(source):
    """A hostile source name ends inside the page's JSON: neither ``</`` nor ``<!--``
    appears raw there (the one rule of pictures.pages.script_json, used by every page)."""
    import re

    from affstream.pictures.preview.server import page_config, page_html

    page = page_html(page_config(source, "a <!-- warning </script>"))
    block = re.search(r'<script id="affstream-live" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert "</" not in block and "<!--" not in block
    config = json.loads(block)
    assert config["source"] == source and config["warning"] == "a <!-- warning </script>"
