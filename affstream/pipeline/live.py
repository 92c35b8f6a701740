"""The live schedule: a second driver over the same steps, causal, never falling behind.

    session = StreamSession(parse_source("0"), stages)
    for live in session:            # LiveRow: the annotation, arrival_s, latency_ms, status
        ...
    session.stop()                  # from another thread or a signal handler: ends the loop
    report = session.report()       # LiveReport: source, counts, latency, rates

Between the decoder and the models the newest frame wins (:class:`~affstream.io.live.LiveFeed`):
a frame arriving while the models are busy replaces the one waiting, and the replaced
frame still gets its row (``status = dropped``, no outputs), so the log has one row per
frame received, in frame order. Each analysed frame goes through the offline steps
(:class:`~affstream.pipeline.faces.FaceSteps`) alone: a batch is what has arrived,
never a fixed count. Full detection runs every k-th analysed frame
(``schedule.live_detect_every``) and after a lost track; the tracks are followed in
between.

Heads: per-frame heads run directly. A temporal head is refused unless its card says it
was trained causally (then :class:`CausalPredictor` runs it on a ring buffer of each
track's last ``w`` frames, and a frame's output depends only on earlier frames), or
unless ``allow_lag`` is given: the offline windowed predictor then runs, rows are
written once their window is complete, and the report states the lag (rows of frames
dropped meanwhile are written at once, so they can come before the lagged rows of
earlier frames).

Latency is measured per row, from the frame's arrival to the row being handed out.

Observing (a live preview): ``StreamSession(..., observer=fn)`` or ``session.observer =
fn`` before iterating. ``fn(ObservedFrame)`` is called on the session's thread once per
frame logged, after that frame's rows were handed out (so after the consumer wrote
them), with the analysed picture, or ``image=None`` for a dropped frame. It must return
quickly (hand the work to another thread); an observer that raises is logged and
detached, the session goes on. With no observer nothing is kept or called.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..heads.base import AffectHead
from ..io.live import FeedStats, LiveFeed, LiveSpec, ReceivedFrame
from ..records import STATUS_DROPPED, STATUS_OK, FrameAnnotation, LiveRow
from ..runtime import StageTimes
from ..version import __version__
from . import Stages
from .faces import DetectSchedule, FaceSteps
from .predict import CausalPredictor, FramePredictor, WindowPredictor
from .run import MEANINGLESS_WARNING

log = logging.getLogger("affstream")

TAKE_TIMEOUT_S = 0.25  # how often the loop wakes up to look at stop requests
RATE_WINDOW_S = 5.0  # frames/s in and out are measured over this many recent seconds


def live_predictor(head: AffectHead, times: StageTimes, max_missed_frames: int, window_batch: int,
                   allow_lag: bool) -> FramePredictor | CausalPredictor | WindowPredictor:
    """The predictor for a live session (see the module docstring); ConfigError for a
    non-causal temporal head without ``allow_lag``."""
    card = head.card
    if not card.windowed:
        return FramePredictor(head, times)
    if card.causal:
        return CausalPredictor(head, times, max_missed_frames, window_batch)
    if allow_lag:
        return WindowPredictor(head, times, max_missed_frames, window_batch)
    raise ConfigError("this temporal head was not trained causally, so its output at a frame depends on later "
                      "frames; train a causal one (affstream train --head temporal --causal) or pass --allow-lag "
                      f"(rows then come once their {card.window_length}-frame window is complete)")


@dataclass(frozen=True, eq=False)
class ObservedFrame:
    """One frame logged by a session, as an observer gets it (see the module docstring).

    frame_index, time_s: as in the rows (1-based; the source's time in seconds).
    image: (H, W, 3) uint8 RGB upright, the picture the models saw (shared, not a copy:
           do not write to it); None for a dropped frame.
    rows:  the frame's :class:`~affstream.records.LiveRow` records as handed out: one
           per face, or one with ``track_id`` -1 (no face, or dropped).
    """

    frame_index: int
    time_s: float
    image: np.ndarray | None
    rows: tuple[LiveRow, ...]

    @property
    def dropped(self) -> bool:
        """The frame was replaced by a newer one before the models saw it."""
        return self.rows[0].status == STATUS_DROPPED


Observer = Callable[[ObservedFrame], None]


@dataclass
class LiveStats:
    """Live numbers of a session, read while it runs (the CLI's dashboard draws them).

    latencies_ms keeps every row's latency (a float per row: 8 bytes, ~1 MB per hour at
    30 fps); ``current`` holds the latest row per face.
    """

    received: int = 0
    analysed: int = 0
    dropped: int = 0
    rows: int = 0
    reconnects: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    current: dict[int, FrameAnnotation] = field(default_factory=dict)
    arrivals: deque = field(default_factory=deque)  # (arrival_s) of recent frames
    outputs: deque = field(default_factory=deque)  # (written_s) of recent analysed frames

    def rate(self, times: deque, now: float) -> float:
        while times and times[0] < now - RATE_WINDOW_S:
            times.popleft()
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(1e-6, times[-1] - times[0])

    def latency(self) -> dict[str, float | None]:
        values = self.latencies_ms
        if not values:
            return {"median_ms": None, "p95_ms": None, "max_ms": None}
        ordered = np.sort(np.asarray(values))
        return {"median_ms": float(statistics.median(values)),
                "p95_ms": float(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
                "max_ms": float(ordered[-1])}


class StreamSession:
    """One live session over a :class:`~affstream.io.live.LiveSpec` (see the module docstring).

    ``duration_s`` / ``max_frames``: stop after that long / that many frames received.
    ``detect_every``: full detection every k-th analysed frame (None: the pipeline's
    ``schedule.live_detect_every``). The source is opened when the session is created
    (SourceError, one line); :attr:`error` is set when a live source went away for good.
    ``observer``: called once per frame logged (see the module docstring).
    """

    def __init__(self, spec: LiveSpec, stages: Stages, *, reconnect_s: float = 5.0, duration_s: float | None = None,
                 max_frames: int | None = None, detect_every: int | None = None, allow_lag: bool = False,
                 observer: Observer | None = None) -> None:
        config = stages.config
        self.spec = spec
        self.stages = stages
        self.times = StageTimes(stages.device)
        self.predictor = live_predictor(stages.head, self.times, config.track.max_missed_frames,
                                        config.schedule.window_batch, allow_lag)
        self.lagged = isinstance(self.predictor, WindowPredictor)
        self.detect_every = int(detect_every or config.schedule.live_detect_every)
        self.duration_s = duration_s
        self.max_frames = max_frames
        self.stats = LiveStats()
        self.feed = LiveFeed(spec, reconnect_s=reconnect_s, max_frames=max_frames)
        self.feed.open()
        self._stop = threading.Event()
        self._arrivals: dict[int, float] = {}  # analysed frames waiting for their rows (lagged heads)
        self._started = False
        self.wall_s = 0.0
        self.observer = observer
        self._images: dict[int, np.ndarray] = {}  # observed analysed frames waiting for lagged rows

    @property
    def error(self) -> str | None:
        return self.feed.error

    @property
    def feed_stats(self) -> FeedStats:
        return self.feed.stats

    def stop(self) -> None:
        """Ask the session to end: reading stops, the rows in flight are finished."""
        self._stop.set()

    def __iter__(self) -> Iterator[LiveRow]:
        if self._started:
            raise RuntimeError("a StreamSession can be iterated only once")
        self._started = True
        start = time.perf_counter()
        try:
            yield from self._rows()
        finally:
            self.feed.stop()
            self.wall_s = time.perf_counter() - start

    def _rows(self) -> Iterator[LiveRow]:
        steps = FaceSteps(self.stages, self.times)
        tracker = steps.new_tracker()
        schedule = DetectSchedule(self.detect_every)
        self.feed.start()
        stopping = False
        while True:
            if not stopping and self._should_stop():
                stopping = True
                self.feed.stop()
            dropped, frame = self.feed.take(timeout=TAKE_TIMEOUT_S)
            for lost in dropped:
                live = self._row(empty_row_for(lost), lost.arrival_s, STATUS_DROPPED)
                yield live
                if self.observer is not None:
                    self._observe([live], {})
            if frame is None:
                if self.feed.finished:
                    break
                continue
            self.stats.received = self.feed.stats.received
            self.stats.analysed += 1
            self._arrivals[frame.frame_index] = frame.arrival_s
            yield from self._analyse(steps, tracker, schedule, frame)
        observed: list[LiveRow] = []
        for row in self.predictor.close():
            live = self._row(row, self._arrivals.pop(row.frame_index, self.feed.now()), STATUS_OK)
            yield live
            observed.append(live)
        if self.observer is not None:
            self._observe(observed, self._images)
        self.stats.received = self.feed.stats.received
        self.stats.reconnects = self.feed.stats.reconnects

    def _should_stop(self) -> bool:
        if self._stop.is_set():
            return True
        if self.max_frames is not None and self.feed.stats.received >= self.max_frames:
            return True
        return self.duration_s is not None and self.feed.now() >= self.duration_s

    def _analyse(self, steps: FaceSteps, tracker, schedule: DetectSchedule,
                 frame: ReceivedFrame) -> Iterator[LiveRow]:
        from ..records import Frame

        batch = [Frame(frame.frame_index, frame.time_s, frame.image)]
        pixels = steps.upload(batch)
        tracked = steps.find_faces(batch, pixels, tracker, schedule)
        crops = steps.align(pixels, tracked)
        del pixels, batch
        chunk = steps.embed(tracked, [crops])
        watched = self.observer is not None
        if watched:
            self._images[frame.frame_index] = frame.image
        observed: list[LiveRow] = []
        for row in self.predictor.feed(chunk):
            live = self._row(row, self._arrivals.get(row.frame_index, frame.arrival_s), STATUS_OK)
            yield live
            if watched:
                observed.append(live)
        self.stats.outputs.append(self.feed.now())
        if not self.lagged:
            self._arrivals.pop(frame.frame_index, None)
        else:  # rows of a lagged head come later; forget frames whose rows were all written
            for index in [i for i in self._arrivals if i < self._oldest_pending()]:
                del self._arrivals[index]
        if watched:
            self._observe(observed, self._images)

    def _observe(self, rows: list[LiveRow], images: dict[int, np.ndarray]) -> None:
        """Hand the observer one :class:`ObservedFrame` per frame in ``rows`` (rows of one
        frame are consecutive); the pictures are taken out of ``images`` (empty for
        dropped frames, whose picture was never kept)."""
        start = 0
        try:
            for end in range(1, len(rows) + 1):
                if end < len(rows) and rows[end].row.frame_index == rows[start].row.frame_index:
                    continue
                first = rows[start].row
                image = images.pop(first.frame_index, None)
                self.observer(ObservedFrame(first.frame_index, first.time_s, image, tuple(rows[start:end])))
                start = end
        except Exception as exc:  # noqa: BLE001 -- a broken observer must not end the session
            log.warning("the session's observer failed (%s: %s); it is detached, the session goes on",
                        type(exc).__name__, exc)
            self.observer = None
            images.clear()

    def _oldest_pending(self) -> int:
        pending = getattr(self.predictor, "pending", None)
        return pending[0].frame_index if pending else 1 << 62

    def _row(self, row: FrameAnnotation, arrival_s: float, status: str) -> LiveRow:
        stats = self.stats
        latency = 1000.0 * max(0.0, self.feed.now() - arrival_s)
        stats.rows += 1
        stats.latencies_ms.append(latency)
        stats.arrivals.append(arrival_s)
        if status == STATUS_DROPPED:
            stats.dropped += 1
        elif row.success:
            stats.current[row.track_id] = row
        stats.received = max(stats.received, self.feed.stats.received)
        return LiveRow(row, arrival_s, latency, status)

    def rates(self) -> tuple[float, float]:
        """Frames/s received and analysed over the last few seconds."""
        now = self.feed.now()
        return self.stats.rate(self.stats.arrivals, now), self.stats.rate(self.stats.outputs, now)

    def report(self, outputs: dict[str, str] | None = None) -> dict[str, Any]:
        """The session's JSON report (a dict): source and negotiated format, counts,
        latency, rates, reconnects, models, configuration."""
        stats, feed = self.stats, self.feed.stats
        wall = max(self.wall_s, 1e-9)
        card = self.stages.head.card
        frames_logged = stats.analysed + stats.dropped
        return {
            "affstream_version": __version__,
            "meaningful": self.stages.meaningful,
            "warning": None if self.stages.meaningful else MEANINGLESS_WARNING,
            "source": {"kind": self.spec.kind, "source": self.spec.label, "realtime": self.spec.realtime,
                       "options": dict(self.spec.options), **feed.negotiated()},
            "outputs": dict(outputs or {}),
            "counts": {"frames_received": feed.received, "frames_analysed": stats.analysed,
                       "frames_dropped": stats.dropped, "frames_logged": frames_logged, "rows": stats.rows,
                       "reconnects": feed.reconnects},
            "drop_rate": stats.dropped / max(1, frames_logged),
            "latency": stats.latency(),
            "frames_per_s": {"in": feed.received / wall, "out": stats.analysed / wall},
            "wall_s": self.wall_s,
            "detect_every": self.detect_every,
            "lag": ({"frames": card.window_length, "why": "a non-causal temporal head run with --allow-lag: rows "
                     "are written once their window is complete"} if self.lagged else None),
            "error": self.error,
            "device": str(self.stages.device),
            "backbone": self.stages.backbone.identity(),
            "head": {**self.stages.head_identity, "tasks": list(card.tasks), "causal": card.causal,
                     "window_length": card.window_length},
            "config": self.stages.config.to_dict(),
            "stage_times": self.times.to_dict(),
        }


def empty_row_for(frame: ReceivedFrame) -> FrameAnnotation:
    """The row of a dropped frame: no face, no outputs."""
    return FrameAnnotation(frame_index=frame.frame_index, time_s=frame.time_s, track_id=-1, confidence=0.0,
                           success=False)
