"""Live sources: a webcam, a network stream, or a file played as one.

    spec = parse_source("0")                          # the first webcam, platform input
    spec = parse_source("rtsp://cam/stream")          # RTSP over TCP, timeouts set
    spec = parse_source("talk.mp4", realtime=True)    # a file at its own speed
    feed = LiveFeed(spec, reconnect_s=5.0)
    feed.start()
    dropped, frame = feed.take(timeout=1.0)           # newest frame wins

:func:`parse_source` maps what the user typed to a :class:`LiveSpec` (what ``av.open``
gets: URL, input format, options). :class:`LiveFeed` decodes on its own thread and
hands the consumer the newest frame: a frame that arrives while the previous one still
waits replaces it, and the replaced one is reported as dropped (its index, times,
never its pixels), so every frame received is accounted for. A file without
``realtime`` is read as fast as the consumer takes frames, and nothing is dropped.

Times: ``time_s`` is the source's own presentation time (PTS) in seconds from the first
frame with a PTS (frames without one, e.g. the first ones of an RTSP stream, take the
previous time plus one frame step); ``arrival_s`` is when the frame came off the
decoder, in seconds of the session's monotonic clock.

Reconnecting: on a live source (camera, URL) a read error, a stall longer than the read
timeout, or a normal end of stream means the source went away: the feed reopens it
with backoff for up to ``reconnect_s`` seconds; after that it ends with
:attr:`LiveFeed.error` set (one line). Any other exception in the reader thread also
ends the feed with :attr:`LiveFeed.error` set (an internal error, one line; the
traceback at debug level), never as if the source had ended. Times always increase: after a reconnection, or
when the PTS jump back (a wrap, a new sender on the same UDP port), the clock goes on
from the previous frame's time plus one frame step.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import SourceError, internal_error
from ..redact import redact
from ..runtime import StopSignalsInC
from .avcompat import open_input
from .orientation import Orientation

log = logging.getLogger("affstream")

KIND_CAMERA, KIND_URL, KIND_FILE = "camera", "url", "file"
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "tcp", "srt", "http", "https")
OPEN_TIMEOUT_S = 10.0  # most seconds to open a source
READ_TIMEOUT_S = 3.0  # a live source that sends nothing this long has stalled
_FALLBACK_STEP_S = 1.0 / 30.0
_BACKOFF_S = (0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class LiveSpec:
    """What to open and how.

    kind:     ``camera``, ``url`` or ``file``.
    target:   what ``av.open`` gets (a URL, a device name, a path).
    format:   the FFmpeg input format (``v4l2``, ``avfoundation``, ``dshow``) or None.
    options:  FFmpeg options (strings), e.g. ``{"rtsp_transport": "tcp"}``.
    realtime: a file is paced at its own speed (frames can then be dropped).
    label:    how messages name the source (what the user typed, with the credentials of
              a URL masked: :func:`affstream.redact.redact`); never the target itself.
    """

    kind: str
    target: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    realtime: bool = False
    label: str = ""

    @property
    def live(self) -> bool:
        """A camera or a URL: its end means it went away (reconnect), never a finish."""
        return self.kind != KIND_FILE


def camera_spec(device: str, platform: str | None = None, *, size: str | None = None, fps: float | None = None,
                pixel_format: str | None = None) -> LiveSpec:
    """A webcam by index (``"0"``) or device name, with the platform's FFmpeg input.

    Linux: ``v4l2`` on ``/dev/videoN``; macOS: ``avfoundation`` on ``"N:none"`` (video
    only); Windows: ``dshow`` on ``video=NAME`` (an index is not a dshow name: give the
    device's name as FFmpeg lists it). ``size`` ``WxH``, ``fps`` and ``pixel_format``
    become the input's ``video_size``, ``framerate`` and ``input_format`` (v4l2) /
    ``pixel_format`` (avfoundation, dshow) options.
    """
    platform = platform or sys.platform
    options: dict[str, str] = {}
    if size:
        if not re.fullmatch(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}", size):
            raise SourceError(f"camera size {size!r}: give it as WIDTHxHEIGHT, for example 1280x720")
        options["video_size"] = size
    if fps is not None:
        if not 0 < float(fps) <= 1000:
            raise SourceError(f"camera frame rate {fps}: give a rate in (0, 1000], for example 30")
        options["framerate"] = f"{float(fps):g}"
    index = device if device.isdigit() else None
    if platform.startswith("linux"):
        fmt, target = "v4l2", f"/dev/video{index}" if index is not None else device
        if pixel_format:
            options["input_format"] = pixel_format
    elif platform == "darwin":
        fmt, target = "avfoundation", f"{index}:none" if index is not None else device
        if pixel_format:
            options["pixel_format"] = pixel_format
        options.setdefault("framerate", "30")  # avfoundation refuses to open without a rate it supports
    elif platform.startswith("win"):
        if index is not None:
            raise SourceError(f"camera {device}: DirectShow opens cameras by name; give the name FFmpeg lists "
                              "(ffmpeg -list_devices true -f dshow -i dummy), for example \"Integrated Camera\"")
        fmt, target = "dshow", device if device.startswith("video=") else f"video={device}"
        if pixel_format:
            options["pixel_format"] = pixel_format
    else:
        raise SourceError(f"camera {device}: no FFmpeg camera input is known for platform {platform!r}; "
                          "stream the camera as a URL instead (e.g. udp:// or rtsp://)")
    options.setdefault("fflags", "nobuffer")
    return LiveSpec(KIND_CAMERA, target, fmt, options, False, device)


def url_options(url: str, read_timeout_s: float = READ_TIMEOUT_S) -> dict[str, str]:
    """Low-latency and timeout options for ``url``'s protocol (FFmpeg option names;
    times in microseconds where FFmpeg wants them)."""
    scheme = url.split("://", 1)[0].lower()
    micro = str(int(read_timeout_s * 1_000_000))
    # FFmpeg probes 5 s of a network stream by default before the first frame: 1 s and
    # 500 kB find the codec and size of an H.264 / HEVC MPEG-TS or RTSP stream
    options = {"fflags": "nobuffer", "flags": "low_delay", "analyzeduration": "1000000", "probesize": "500000"}
    if scheme in ("rtsp", "rtsps"):
        options.update(rtsp_transport="tcp", timeout=micro)  # TCP: no lost packets; timeout is the socket's
    elif scheme in ("udp", "rtp"):
        options.update(timeout=micro, overrun_nonfatal="1", fifo_size="1000000")
    elif scheme == "tcp":
        options.update(timeout=micro)
    elif scheme in ("http", "https"):
        options.update(rw_timeout=micro, reconnect="1", reconnect_streamed="1", reconnect_delay_max="2")
    elif scheme in ("rtmp", "rtmps"):
        options.update(rw_timeout=micro)
    return options


def parse_source(text: str | os.PathLike, *, realtime: bool = False, size: str | None = None,
                 fps: float | None = None, pixel_format: str | None = None,
                 read_timeout_s: float = READ_TIMEOUT_S, platform: str | None = None) -> LiveSpec:
    """What the user typed -> a :class:`LiveSpec`: a camera index (``0``) or device path
    (``/dev/video2``), a URL, or a file path. SourceError for a protocol this build
    cannot read (``srt://``) or an unknown scheme."""
    text = os.fspath(text)
    if text.isdigit() or (text.startswith("/dev/video")):
        return camera_spec(text, platform, size=size, fps=fps, pixel_format=pixel_format)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme:
        if scheme == "file":
            return LiveSpec(KIND_FILE, text.split("://", 1)[1], None, {}, realtime, text)
        shown = redact(text)  # what messages, reports and pages say; the URL keeps its credentials
        if scheme not in NETWORK_SCHEMES:
            raise SourceError(f"{shown}: unknown stream protocol {scheme!r}; use rtsp://, rtmp://, udp://, tcp://, "
                              "http(s):// or a file path")
        if scheme == "srt" and "srt" not in input_protocols():
            raise SourceError(f"{shown}: this PyAV build has no SRT protocol (PyAV's pip wheels are built without "
                              "it); relay the stream, e.g. ffmpeg -i 'srt://...' -c copy -f mpegts udp://127.0.0.1:5000, "
                              "and stream udp://127.0.0.1:5000")
        return LiveSpec(KIND_URL, text, None, url_options(text, read_timeout_s), False, shown)
    if not Path(text).exists():
        raise SourceError(f"{text}: no such file, camera index or URL; give a camera index (0), a URL or a video file")
    return LiveSpec(KIND_FILE, text, None, {}, realtime, text)


def input_protocols() -> set[str]:
    """FFmpeg input protocols of this PyAV build (empty when PyAV cannot tell)."""
    try:
        return set(av.protocols_available) if hasattr(av, "protocols_available") else _probe_protocols()
    except Exception:  # noqa: BLE001 - a capability probe never fails the caller
        return set()


def _probe_protocols() -> set[str]:
    found = set()
    for name in ("srt",):
        try:
            av.open(f"{name}://127.0.0.1:9?timeout=1", timeout=0.1)
        except av.error.ProtocolNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - anything but "protocol not found" means it exists
            found.add(name)
        else:
            found.add(name)
    return found


def open_error(spec: LiveSpec, error: BaseException) -> SourceError:
    """One line naming the source and what to check (credentials masked)."""
    reason = getattr(error, "strerror", None) or (str(error).splitlines()[0] if str(error) else type(error).__name__)
    reason = redact(reason)
    if "Immediate exit requested" in reason or (reason == "Input/output error" and spec.live):
        reason = "nothing arrived before the open timeout"
    if spec.kind == KIND_CAMERA:
        hint = ("check that the camera is connected and not used by another program, and that you may open it "
                f"(on Linux: ls -l {spec.target}, group 'video')")
    elif spec.kind == KIND_URL:
        hint = "check the URL, that the sender is running and reachable, and the credentials"
    else:
        hint = "check the path and that it is a video file"
    return SourceError(f"{spec.label or redact(spec.target)}: cannot be opened ({reason}); {hint}")


# ------------------------------------------------------------------------------ frames


@dataclass(frozen=True, eq=False)
class ReceivedFrame:
    """A frame as it came off the decoder.

    frame_index: 1-based, counting every frame received in the session.
    time_s:      the source's presentation time in seconds (see the module docstring).
    arrival_s:   seconds of the session clock when it was decoded.
    image:       (H, W, 3) uint8 RGB upright, or None for a dropped frame.
    """

    frame_index: int
    time_s: float
    arrival_s: float
    image: np.ndarray | None = None


@dataclass
class FeedStats:
    """What the feed has done so far (read while it runs; written by its thread)."""

    received: int = 0
    dropped: int = 0
    reconnects: int = 0
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    pixel_format: str | None = None
    average_fps: float | None = None
    input_format: str | None = None

    def negotiated(self) -> dict:
        return {"input_format": self.input_format, "codec": self.codec, "width": self.width, "height": self.height,
                "pixel_format": self.pixel_format, "average_fps": self.average_fps}


class _Clock:
    """Presentation times in seconds, increasing across reconnections."""

    def __init__(self) -> None:
        self.origin: int | None = None
        self.base = Fraction(0)
        self.offset = 0.0  # seconds added after a reconnection
        self.previous: float | None = None
        self.step = _FALLBACK_STEP_S

    def connected(self, stream) -> None:
        self.base = Fraction(stream.time_base) if stream.time_base else Fraction(0)
        rate = stream.average_rate or stream.guessed_rate
        self.step = float(1 / rate) if rate else _FALLBACK_STEP_S
        if self.previous is not None:  # a new connection: its PTS start anew
            self.origin = None
            self.offset = self.previous + self.step

    def seconds(self, frame) -> float:
        if frame.pts is not None and self.base:
            if self.origin is None:
                self.origin = frame.pts
            value = self.offset + float((frame.pts - self.origin) * self.base)
            if self.previous is not None and value <= self.previous:  # a PTS wrap, or a new sender on the same port
                self.origin, self.offset = frame.pts, self.previous + self.step
                value = self.offset
        else:
            value = 0.0 if self.previous is None else self.previous + self.step
        self.previous = value
        return value


class LiveFeed:
    """Decodes a :class:`LiveSpec` on a thread; the consumer takes the newest frame.

    ``take`` returns ``(dropped, frame)``: the frames replaced since the last take (in
    order, without pixels) and the newest frame (None at the end or on timeout).
    ``max_frames``: reading stops after that many frames.
    ``error`` is set (one line) when a live source could not be kept. ``stop`` ends the
    reading; frames still waiting are reported by the next ``take`` as dropped.
    """

    def __init__(self, spec: LiveSpec, *, reconnect_s: float = 5.0, open_timeout_s: float = OPEN_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S, max_frames: int | None = None, clock=time.monotonic) -> None:
        self.spec = spec
        self.max_frames = max_frames  # reading stops after this many frames
        self.reconnect_s = float(reconnect_s)
        self.timeouts = (float(open_timeout_s), float(read_timeout_s))
        self.clock = clock
        self.start_s = clock()
        self.stats = FeedStats()
        self.error: str | None = None
        self._lock = threading.Condition()
        self._waiting: ReceivedFrame | None = None
        self._dropped: list[ReceivedFrame] = []
        self._finished = False
        self._stop = threading.Event()
        self._container = None
        self._thread: threading.Thread | None = None

    # -- the consumer's side

    def open(self) -> None:
        """Open the source now (raises SourceError with one line); then :meth:`start`."""
        self._container = self._open()

    def start(self) -> None:
        if self._container is None:
            self.open()
        self._thread = threading.Thread(target=self._run, name="affstream-live-feed", daemon=True)
        self._thread.start()

    def take(self, timeout: float | None = None) -> tuple[list[ReceivedFrame], ReceivedFrame | None]:
        with self._lock:
            self._lock.wait_for(lambda: self._waiting is not None or self._finished, timeout)
            dropped, self._dropped = self._dropped, []
            frame, self._waiting = self._waiting, None
            self._lock.notify_all()
            return dropped, frame

    @property
    def finished(self) -> bool:
        """True once the reader has ended and nothing waits."""
        with self._lock:
            return self._finished and self._waiting is None and not self._dropped

    def stop(self) -> None:
        """Stop reading (the reader closes the source); safe to call twice."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.timeouts[1] + 2.0))

    def now(self) -> float:
        """Seconds of the session clock."""
        return self.clock() - self.start_s

    # -- the reader's side

    def _open(self, open_timeout_s: float | None = None):
        spec = self.spec
        timeouts = (open_timeout_s or self.timeouts[0], self.timeouts[1])
        with StopSignalsInC():  # Ctrl-C while it opens is a stop, not "nothing arrived"
            try:
                container = open_input(spec.target, format=spec.format, options=dict(spec.options),
                                       timeout=timeouts if spec.live else None)
            except (av.FFmpegError, OSError, ValueError) as error:
                raise open_error(spec, error) from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{spec.label}: has no video stream; give a video source")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # frame threading delays every frame
        stats = self.stats
        stats.codec = stream.codec_context.name
        stats.width, stats.height = stream.codec_context.width or None, stream.codec_context.height or None
        stats.pixel_format = stream.codec_context.format.name if stream.codec_context.format else None
        rate = stream.average_rate or stream.guessed_rate
        stats.average_fps = float(rate) if rate else None
        stats.input_format = container.format.name
        return container

    def _run(self) -> None:
        clock = _Clock()
        orient: Orientation | None = None
        try:
            while not self._stop.is_set():
                container = self._container
                stream = container.streams.video[0]
                clock.connected(stream)
                pace = _Pacer(self.clock) if self.spec.realtime else None
                try:
                    for frame in container.decode(stream):
                        if self._stop.is_set():
                            break
                        time_s = clock.seconds(frame)
                        if pace is not None:
                            pace.wait(time_s, self._stop)
                        if orient is None:
                            orient = Orientation.of_frame(frame, stream, self.spec.label, False)
                        image = orient.apply(frame.to_ndarray(format="rgb24"))
                        self._deliver(time_s, image)
                    reason = "the stream ended"
                except (av.FFmpegError, OSError) as error:
                    reason = _read_error(error, self.timeouts[1])
                finally:
                    self._close_container()
                if self._stop.is_set() or not self.spec.live:
                    return
                if not self._reconnect(reason):
                    return
        except Exception as error:  # noqa: BLE001 - the consumer must hear of it: an error, never "the end"
            log.debug("%s: the live reader failed\n%s", self.spec.label,
                      redact("".join(traceback.format_exception(error))))
            self.error = redact(internal_error(f"{self.spec.label}: the live reader", error))
        finally:
            self._close_container()
            with self._lock:
                self._finished = True
                self._lock.notify_all()

    def _deliver(self, time_s: float, image: np.ndarray) -> None:
        stats = self.stats
        with self._lock:
            if not self.spec.live and not self.spec.realtime:  # a file, as fast as taken: never drop
                self._lock.wait_for(lambda: self._waiting is None or self._stop.is_set())
            stats.received += 1
            frame = ReceivedFrame(stats.received, time_s, self.now(), image)
            if self._waiting is not None:
                old = self._waiting
                self._dropped.append(ReceivedFrame(old.frame_index, old.time_s, old.arrival_s, None))
                stats.dropped += 1
            self._waiting = frame
            self._lock.notify_all()
        if self.max_frames is not None and stats.received >= self.max_frames:
            self._stop.set()

    def _reconnect(self, reason: str) -> bool:
        """Reopen with backoff for up to ``reconnect_s``; False (``error`` set) when it gave up."""
        log.warning("%s: %s; reconnecting for up to %.0f s", self.spec.label, reason, self.reconnect_s)
        deadline = self.clock() + self.reconnect_s
        attempt = 0
        last = reason
        while not self._stop.is_set() and self.clock() < deadline:
            self._stop.wait(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
            attempt += 1
            try:
                self._container = self._open(max(0.5, deadline - self.clock()))
            except SourceError as error:
                last = str(error)
                continue
            self.stats.reconnects += 1
            log.warning("%s: reconnected", self.spec.label)
            return True
        if not self._stop.is_set():
            self.error = (f"{self.spec.label}: the source stopped sending ({reason}) and could not be reopened "
                          f"within {self.reconnect_s:g} s; check the sender (last error: {last})")
        return False

    def _close_container(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:
                log.debug("closing %s failed", self.spec.label, exc_info=True)


def _read_error(error: BaseException, read_timeout_s: float) -> str:
    """A read error in words; FFmpeg's interrupt after the read timeout says "Immediate
    exit requested", which means nothing arrived for that long."""
    text = redact(str(error).splitlines()[0]) if str(error) else type(error).__name__
    if "Immediate exit requested" in text:
        return f"nothing arrived for {read_timeout_s:g} s"
    return text


class _Pacer:
    """Holds a file's frames back to their presentation times (a camera stand-in)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.start: float | None = None
        self.first: float | None = None

    def wait(self, time_s: float, stop: threading.Event) -> None:
        now = self.clock()
        if self.start is None:
            self.start, self.first = now, time_s
            return
        due = self.start + (time_s - self.first)
        if due > now:
            stop.wait(due - now)
