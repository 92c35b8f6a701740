"""The data side of the live preview: what the session hands over, and what the page gets.

    hub = PreviewHub(clock=session.feed.now)
    hub.start()                        # the painter thread
    session.observer = hub.observe     # once per frame logged, on the session's thread
    ...
    hub.finish({"text": "..."})        # the page is told the session ended

Threads. :meth:`PreviewHub.observe` runs on the session's thread and only appends to a
queue under a lock that nothing holds for long: the models never wait for the page. The
painter thread takes what arrived, turns each analysed frame's rows into a compact
record for the page, keeps the valence/arousal trails (:class:`~..overlay.TrailKeeper`)
and, at most :data:`MAX_FPS` times a second, draws the overlay of the newest picture
(:func:`~..overlay.draw_overlay`, the drawing of ``affstream render``) and encodes it as
JPEG (Pillow). Pictures are never queued: only the newest one is kept, so a slow painter
shows fewer frames, never older ones, and memory stays bounded. Pictures are drawn only
while someone watches (an open event stream, or a request for the picture in the last
:data:`WATCH_S` seconds), so an unwatched preview costs next to nothing. HTTP threads
read through :meth:`PreviewHub.wait` and :meth:`PreviewHub.jpeg`.

Records (JSON, one per analysed frame): ``{"f": frame, "t": seconds (source time),
"lat": latency ms, "faces": [{"id", "v", "a", "e": 8 expression probabilities,
"au": 12 AU probabilities, "on": 12 AU present flags 0/1}]}``; keys without outputs are
left out. Dropped frames give no record, they are counted in the stats. The stats
(``stats`` of :meth:`PreviewHub.state`) cover the last :data:`RATE_WINDOW_S` seconds for rates and
the last :data:`WINDOW_S` seconds for latency.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...records import FrameAnnotation
from ..overlay import TrailKeeper, draw_overlay

_LOG = logging.getLogger("affstream")

MAX_FPS = 10.0  # at most this many overlaid pictures a second
MAX_SIDE_PX = 1280  # pictures are scaled down to this longer side before drawing (the overlay scales with the frame)
JPEG_QUALITY = 80
WINDOW_S = 30.0  # seconds of history kept for the charts and a page opened mid-session
RATE_WINDOW_S = 5.0  # frames/s are measured over this many recent seconds
MAX_RECORDS = 4096  # at most this many records kept (30 s at 136 frames/s)
STATS_EVERY_S = 0.5
WATCH_S = 3.0  # a picture request keeps the painter drawing this long


@dataclass(frozen=True)
class Picture:
    """The newest overlaid picture: ``seq`` counts pictures from 1; ``jpeg`` the encoded
    bytes; ``width`` x ``height`` in pixels as encoded; ``frame_index`` and ``time_s``
    (seconds, source time) of the frame it shows."""

    seq: int
    jpeg: bytes
    width: int
    height: int
    frame_index: int
    time_s: float

    def meta(self) -> dict[str, Any]:
        return {"seq": self.seq, "f": self.frame_index, "t": round(self.time_s, 4), "w": self.width, "h": self.height}


@dataclass
class Update:
    """What a reader has not seen yet (:meth:`PreviewHub.wait`): record JSON texts in
    order, and the newest stats, picture meta and end message when they changed."""

    records: list[str] = field(default_factory=list)
    stats: str | None = None
    picture: dict[str, Any] | None = None
    ended: str | None = None
    cursor: tuple[int, int, int] = (0, 0, 0)  # (record seq, stats seq, picture seq) seen

    @property
    def empty(self) -> bool:
        return not self.records and self.stats is None and self.picture is None and self.ended is None


def face_record(row: FrameAnnotation) -> dict[str, Any]:
    """The page's record of one face (see the module docstring); probabilities to 3 decimals."""
    face: dict[str, Any] = {"id": int(row.track_id)}
    if row.valence is not None and row.arousal is not None:
        face["v"] = round(float(row.valence), 3)
        face["a"] = round(float(row.arousal), 3)
    if row.expr_probs is not None:
        face["e"] = [round(float(p), 3) for p in row.expr_probs]
    if row.au_probs is not None:
        face["au"] = [round(float(p), 3) for p in row.au_probs]
    if row.au_present is not None:
        face["on"] = [int(bool(p)) for p in row.au_present]
    return face


def frame_record(frame) -> dict[str, Any]:
    """The record of an analysed :class:`~affstream.pipeline.live.ObservedFrame`."""
    faces = [face_record(live.row) for live in frame.rows if live.row.success]
    return {"f": int(frame.frame_index), "t": round(float(frame.time_s), 4),
            "lat": round(float(frame.rows[0].latency_ms), 1), "faces": faces}


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class PreviewHub:
    """Between a :class:`~affstream.pipeline.live.StreamSession` and the page's readers
    (see the module docstring). ``clock``: seconds on the clock of the rows'
    ``arrival_s`` (the session's ``feed.now``); it can be set until the first frame."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_fps: float = MAX_FPS,
                 max_side: int = MAX_SIDE_PX, window_s: float = WINDOW_S) -> None:
        self.clock = clock
        self.min_interval_s = 1.0 / float(max_fps)
        self.max_side = int(max_side)
        self.window_s = float(window_s)
        # session -> painter
        self._inbox_lock = threading.Condition()
        self._inbox: deque = deque(maxlen=MAX_RECORDS)  # a painter this far behind loses the oldest rows
        self._newest = None  # the newest ObservedFrame with a picture, not yet taken by the painter
        self._closing = False
        # painter -> readers
        self._out = threading.Condition()
        self._records: deque[tuple[int, float, str]] = deque(maxlen=MAX_RECORDS)  # (seq, time_s, json)
        self._record_seq = 0
        self._stats_json = json.dumps(self._empty_stats())
        self._stats_seq = 0
        self._picture: Picture | None = None
        self._ended: str | None = None
        # painter's own state
        self._trails = TrailKeeper()
        self._arrivals: deque[float] = deque()  # arrival_s of frames logged (analysed and dropped)
        self._written: deque[float] = deque()  # when analysed frames' rows were handed out
        self._latencies: deque[tuple[float, float]] = deque()  # (written_s, latency_ms) of analysed frames
        self._shown: deque[float] = deque()  # when pictures were published (monotonic)
        self._counts = {"frames": 0, "analysed": 0, "dropped": 0, "rows": 0}
        self._pending_draw = None  # (ObservedFrame, overlays) waiting until a picture is due
        self._next_picture_s = 0.0  # monotonic
        self._next_stats_s = 0.0
        self._watchers = 0  # open event streams
        self._asked_s = -WATCH_S  # monotonic time of the last picture request
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ session side

    def observe(self, frame) -> None:
        """Take one :class:`~affstream.pipeline.live.ObservedFrame` (the session's
        observer): O(1), never waits for the painter."""
        light = dataclasses.replace(frame, image=None) if frame.image is not None else frame
        with self._inbox_lock:
            if self._closing:
                return
            self._inbox.append(light)  # rows only: the one picture kept is the newest's
            if frame.image is not None:
                self._newest = frame
            self._inbox_lock.notify()

    def start(self) -> None:
        """Start the painter thread (a daemon)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._paint_loop, name="affstream-preview-painter", daemon=True)
            self._thread.start()

    def finish(self, message: dict[str, Any] | None = None, timeout_s: float = 5.0) -> None:
        """The session ended: what arrived is drawn and published, then readers get the end
        ``message`` (JSON-serialisable, e.g. ``{"text": ...}``). Later frames are ignored."""
        with self._inbox_lock:
            self._closing = True
            self._inbox_lock.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        else:  # never started: publish what arrived here
            self._drain(final=True)
        with self._out:
            self._ended = json.dumps(message or {})
            self._out.notify_all()

    # ------------------------------------------------------------------ reader side

    def wait(self, cursor: tuple[int, int, int] = (0, 0, 0), timeout_s: float = 10.0) -> Update:
        """What came after ``cursor`` (from an earlier :class:`Update`; (0, 0, 0) first: the
        records of the last :data:`WINDOW_S` seconds, the stats and the newest picture);
        waits up to ``timeout_s`` for something new. An empty update on timeout."""
        with self._out:
            self._out.wait_for(lambda: self._changed(cursor), timeout_s)
            records_seen, stats_seen, picture_seen = cursor
            update = Update()
            for seq, _, text in reversed(self._records):  # the new ones are at the end
                if seq <= records_seen:
                    break
                update.records.append(text)
            update.records.reverse()
            if self._stats_seq > stats_seen:
                update.stats = self._stats_json
            if self._picture is not None and self._picture.seq > picture_seen:
                update.picture = self._picture.meta()
            update.ended = self._ended
            update.cursor = (self._record_seq, self._stats_seq, self._picture.seq if self._picture else 0)
            return update

    def _changed(self, cursor: tuple[int, int, int]) -> bool:
        return (self._record_seq > cursor[0] or self._stats_seq > cursor[1]
                or (self._picture is not None and self._picture.seq > cursor[2]) or self._ended is not None)

    def jpeg(self) -> Picture | None:
        """The newest overlaid picture, or None before the first (a request: the painter
        keeps drawing for :data:`WATCH_S` seconds)."""
        self._asked_s = time.monotonic()
        with self._out:
            return self._picture

    def watch(self, delta: int) -> None:
        """An event stream opened (+1) or closed (-1): pictures are drawn while any is open."""
        with self._inbox_lock:
            self._watchers += delta
            self._inbox_lock.notify()

    def _watched(self) -> bool:
        return self._watchers > 0 or time.monotonic() - self._asked_s < WATCH_S

    def state(self) -> dict[str, Any]:
        """A snapshot for polling: the stats, the newest picture's meta, whether it ended."""
        with self._out:
            return {"stats": json.loads(self._stats_json), "picture": self._picture.meta() if self._picture else None,
                    "ended": json.loads(self._ended) if self._ended is not None else None}

    @property
    def ended(self) -> bool:
        with self._out:
            return self._ended is not None

    # ------------------------------------------------------------------ painter

    def _paint_loop(self) -> None:
        try:
            while not self._drain(final=False):
                pass
        except Exception:  # noqa: BLE001 -- the preview must never take the session down
            _LOG.exception("the live preview stopped drawing")
            with self._inbox_lock:  # from now on frames are not kept
                self._closing = True
                self._inbox.clear()
                self._newest = None

    def _drain(self, final: bool) -> bool:
        """One round of the painter: take what arrived, publish records, stats and (when
        due) a picture. True once the hub is closing and everything was published."""
        pending_draw = self._pending_draw
        wait = STATS_EVERY_S
        if pending_draw is not None and self._watched():
            wait = max(0.0, self._next_picture_s - time.monotonic())
        with self._inbox_lock:
            if not final:
                self._inbox_lock.wait_for(lambda: self._inbox or self._closing, wait)
            batch = list(self._inbox)
            self._inbox.clear()
            newest, self._newest = self._newest, None
            closing = self._closing or final
        records = []
        for frame in batch:
            self._count(frame)
            if frame.dropped:
                continue
            records.append(frame_record(frame))
            faces = [live.row for live in frame.rows if live.row.success and live.row.box_xyxy is not None]
            overlays = self._trails.update(float(frame.time_s), faces)
            if newest is not None and frame.frame_index == newest.frame_index:
                pending_draw = (newest, overlays)
        self._publish_records(records)
        now = time.monotonic()
        if pending_draw is not None and (closing or (now >= self._next_picture_s and self._watched())):
            self._publish_picture(*pending_draw)
            self._next_picture_s = now + self.min_interval_s
            pending_draw = None
        self._pending_draw = pending_draw
        if batch or closing or now >= self._next_stats_s:
            self._publish_stats()
            self._next_stats_s = now + STATS_EVERY_S
        return closing

    def _count(self, frame) -> None:
        counts = self._counts
        counts["frames"] += 1
        counts["rows"] += len(frame.rows)
        first = frame.rows[0]
        self._arrivals.append(float(first.arrival_s))
        if frame.dropped:
            counts["dropped"] += 1
            return
        counts["analysed"] += 1
        written = float(first.arrival_s) + float(first.latency_ms) / 1000.0
        self._written.append(written)
        self._latencies.append((written, float(first.latency_ms)))

    def _publish_records(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        with self._out:
            for record in records:
                self._record_seq += 1
                self._records.append((self._record_seq, record["t"], json.dumps(record, separators=(",", ":"))))
            newest = self._records[-1][1]
            while self._records and self._records[0][1] < newest - self.window_s:
                self._records.popleft()
            self._out.notify_all()

    def _publish_picture(self, frame, overlays) -> None:
        picture = self._encode(frame, overlays)
        self._shown.append(time.monotonic())
        with self._out:
            seq = self._picture.seq + 1 if self._picture else 1
            self._picture = dataclasses.replace(picture, seq=seq)
            self._out.notify_all()

    def _encode(self, frame, overlays) -> Picture:
        """The overlay of ``frame`` drawn and encoded (scaled to :attr:`max_side` first)."""
        from PIL import Image

        image = np.ascontiguousarray(frame.image[..., :3])
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
            image = np.asarray(Image.fromarray(image, "RGB").resize((width, height), Image.Resampling.BILINEAR))
            overlays = [dataclasses.replace(o, row=dataclasses.replace(o.row, box_xyxy=o.row.box_xyxy * scale))
                        for o in overlays]
        drawn, _ = draw_overlay(image, overlays)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(drawn), "RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
        return Picture(0, buffer.getvalue(), width, height, int(frame.frame_index), float(frame.time_s))

    def _empty_stats(self) -> dict[str, Any]:
        return {"frames": 0, "analysed": 0, "dropped": 0, "rows": 0, "fps_in": 0.0, "fps_out": 0.0,
                "fps_shown": 0.0, "latency_ms": {"last": None, "median": None, "p95": None}}

    def _stats(self) -> dict[str, Any]:
        """The painter's numbers now (its thread only; readers get them via :meth:`state`):
        counts since the start; frames/s in (received), out (analysed) and shown
        (pictures drawn) over :data:`RATE_WINDOW_S`; the latency of analysed frames
        (arrival to row, ms) over :data:`WINDOW_S`: last, median, p95."""
        now = self.clock()
        latencies = self._latencies
        while latencies and latencies[0][0] < now - self.window_s:
            latencies.popleft()
        ordered = sorted(lat for _, lat in latencies)
        return {
            **self._counts,
            "fps_in": _rate(self._arrivals, now),
            "fps_out": _rate(self._written, now),
            "fps_shown": _rate(self._shown, time.monotonic()),
            "latency_ms": {
                "last": round(latencies[-1][1], 1) if latencies else None,
                "median": round(_percentile(ordered, 0.5), 1) if ordered else None,
                "p95": round(_percentile(ordered, 0.95), 1) if ordered else None,
            },
        }

    def _publish_stats(self) -> None:
        text = json.dumps(self._stats(), separators=(",", ":"))
        with self._out:
            if text != self._stats_json:
                self._stats_json = text
                self._stats_seq += 1
                self._out.notify_all()


def _rate(times: deque[float], now: float) -> float:
    """Events per second among ``times`` (ascending) within :data:`RATE_WINDOW_S` of ``now``
    (older ones are dropped from the deque); 0 with fewer than two."""
    while times and times[0] < now - RATE_WINDOW_S:
        times.popleft()
    if len(times) < 2:
        return 0.0
    span = max(times[-1] - times[0], 1e-6)
    value = (len(times) - 1) / span
    return round(value, 2) if math.isfinite(value) else 0.0
