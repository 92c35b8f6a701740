"""Sources: open a video once and get both its metadata and its frames.

A camera or a network stream cannot be opened twice, so nothing here probes a source
and then opens it again: :func:`open_source` opens the container, selects the video
stream, decodes the first frame (PyAV exposes the display rotation only on decoded
frames) and keeps that frame for :meth:`VideoSource.frames`, which continues from it.
(The one exception: a local file cut off inside a packet is opened a second time to
decode its tail, see the per-kind settings below.)

    with open_source("clip.mp4") as source:
        print(source.info.width, source.info.frame_count)
        for frame in source.frames():     # Frame records, 1-based frame_index, PTS times
            ...
    print(source.stats.errors)             # packets skipped while decoding

Inputs. Before anything is opened, :func:`describe_unusable_input` (from the file system
alone, safe on FIFOs and devices) turns a path that cannot be media into one line naming
it and what to do; :class:`VideoSource` raises it as a SourceError, and a many-input
preflight can call it for every input.

Stream. A file may hold several video streams; ``video_stream`` (``decode.video_stream``
in the configuration) is an index among them, or -1 for the best one (the stream marked
"default", else the largest, never cover art; see
:func:`affstream.io.decode.select_video_stream`). ``VideoInfo.stream_index`` and
``VideoInfo.video_streams`` record which one was read and how many there are.

Per-kind settings (:class:`SourceSettings`). A file is decoded with FFmpeg's frame
threading (throughput: single-threaded H.264 decoding of 1080p is slower than the GPU
pipeline), and when a frame-threaded decode ends with frames missing (a file cut inside a
packet loses the frames in flight) the file is opened a second time to decode its tail
without frame threading (``redecode_tail``), so the decoded count is FFmpeg's own on
complete and on cut-off files. Live kinds, when they arrive, will decode without frame
threading (each frame thread adds a frame of delay) and cannot be opened twice.

:func:`probe`, :func:`iter_frames` and :func:`count_frames` are one-call conveniences
over a :class:`VideoSource`.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ConfigError, SourceError
from ..records import DecodeStats, Frame, VideoInfo
from .decode import (
    FIRST_FRAME_MAX_PACKETS,
    FrameClock,
    average_fps,
    declared_frames,
    decoded_frames,
    duration_s,
    is_image,
    open_container,
    select_video_stream,
)
from .orientation import Orientation
from .paths import check_path, describe_unusable_input

__all__ = [
    "KIND_FILE", "SourceSettings", "VideoSource", "count_frames", "describe_unusable_input",
    "iter_frames", "open_source", "probe", "settings_for_file",
]

KIND_FILE = "file"


@dataclass(frozen=True)
class SourceSettings:
    """How a source of one kind is decoded.

    kind:            "file" (live kinds come with ``affstream stream``).
    frame_threading: FFmpeg frame threading (files only: it delays every frame).
    threads:         codec threads, 0 = FFmpeg chooses.
    redecode_tail:   when a frame-threaded decode ends with frames missing, open the
                     source again and decode its tail without frame threading (files
                     only: a live source cannot be opened twice).
    video_stream:    index among the source's video streams, -1 = the best one.
    """

    kind: str = KIND_FILE
    frame_threading: bool = True
    threads: int = 0
    redecode_tail: bool = True
    video_stream: int = -1


def settings_for_file(threads: int = 0, video_stream: int = -1) -> SourceSettings:
    """Decoder settings for a file source (frame threading on, tail re-decoded when a
    cut-off file loses the frames in flight)."""
    if int(threads) < 0:
        raise ConfigError(f"decode threads must be >= 0 (got {threads}); use 0 for automatic")
    if int(video_stream) < -1:
        raise ConfigError(f"decode video_stream must be -1 (the best) or a video stream index "
                          f">= 0 (got {video_stream})")
    return SourceSettings(kind=KIND_FILE, frame_threading=True, threads=int(threads),
                          redecode_tail=True, video_stream=int(video_stream))


class VideoSource:
    """One opened source: :attr:`info` now, :meth:`frames` once, :attr:`stats` as it runs.

    Raises SourceError when created, with one line naming the source, for a path that
    cannot be media (see :func:`describe_unusable_input`: missing, broken or looping
    symbolic link, directory, FIFO or device, empty, unreadable), a file that is not
    media, a file without a video stream, a ``video_stream`` index it does not have, and
    a video stream whose first packets decode to no frame.
    """

    def __init__(self, path: str | os.PathLike, settings: SourceSettings | None = None,
                 *, stats: DecodeStats | None = None) -> None:
        self.settings = settings or SourceSettings()
        self.stats = stats if stats is not None else DecodeStats()
        self.name = check_path(path)
        self._container = open_container(self.name)
        self._finalizer = weakref.finalize(self, self._container.close)
        self._finalizer.atexit = False  # never close under a decoding thread at exit
        self._started = False
        self._decoding_thread: int | None = None  # thread iterating frames(), if any
        try:
            self._stream, self._stream_index = select_video_stream(
                self._container, self.name, self.settings.video_stream)
            self._configure_decoder()
            self._decoded = decoded_frames(self._container, self._stream, self.stats,
                                           first_frame_within=FIRST_FRAME_MAX_PACKETS,
                                           reopen=self._reopener())
            self._first = next(self._decoded, None)
            if self._first is None:
                raise SourceError(f"{self.name}: no video frame could be decoded; the file "
                                  "may be corrupt or cut off, try re-encoding it")
            self._is_image = is_image(self._container)
            self._orient = Orientation.of_frame(self._first, self._stream, self.name, self._is_image)
            self.info = self._describe()
        except BaseException:
            self.close()
            raise

    def _configure_decoder(self) -> None:
        context = self._stream.codec_context
        if self.settings.frame_threading:
            context.thread_type = "AUTO"
        context.thread_count = self.settings.threads

    def _reopener(self):
        """How the tail of a cut-off file is re-decoded: open the same file again (never
        for URLs or live kinds, which cannot be opened twice)."""
        if not self.settings.redecode_tail or "://" in self.name:
            return None
        name = self.name
        return lambda: open_container(name)

    def _describe(self) -> VideoInfo:
        stream, container = self._stream, self._container
        height, width = self._orient.upright_shape(self._first.height, self._first.width)
        return VideoInfo(
            path=self.name,
            codec=stream.codec_context.name,
            width=width,
            height=height,
            rotation_deg=self._orient.rotation_cw,
            average_fps=None if self._is_image else average_fps(stream),
            frame_count=declared_frames(container, stream),
            duration_s=None if self._is_image else duration_s(container, stream),
            time_base=str(stream.time_base),
            stream_index=self._stream_index,
            video_streams=len(container.streams.video),
        )

    def frames(self) -> Iterator[Frame]:
        """Decode in order, yielding upright frames; the source is closed at the end.

        Frame.frame_index is 1-based and counts delivered frames; Frame.time_s is in
        seconds from the stream's start (see :mod:`affstream.io.decode`); Frame.image is
        (H, W, 3) uint8 RGB, C-contiguous, upright. A still image is a 1-frame source at
        0.0 s. Updates :attr:`stats` (``frames``, ``errors``, ``error_messages``,
        ``missing_pts``). Can be iterated once.
        """
        if self._started:
            raise RuntimeError(f"{self.name}: a source's frames can be read only once")
        self._started = True
        return self._iterate()

    def _iterate(self) -> Iterator[Frame]:
        self._decoding_thread = threading.get_ident()
        clock = FrameClock(self._stream)
        index = 0
        pending, self._first = self._first, None
        try:
            while pending is not None:
                time_s = clock.seconds(pending)
                image = self._orient.apply(pending.to_ndarray(format="rgb24"))
                index += 1
                self.stats.frames += 1
                yield Frame(frame_index=index, time_s=time_s, image=image)
                pending = next(self._decoded, None)
            clock.report(self.stats, self.name)
        finally:
            self._decoding_thread = None
            self.close()

    def count(self) -> int:
        """Decode to the end without converting pictures; the number of frames
        :meth:`frames` would have yielded (several times faster). Updates :attr:`stats`."""
        if self._started:
            raise RuntimeError(f"{self.name}: a source's frames can be read only once")
        self._started = True
        try:
            count = 1 + sum(1 for _ in self._decoded)
            self.stats.frames += count
            return count
        finally:
            self.close()

    def close(self) -> None:
        """Release the container (idempotent).

        FFmpeg must not close a container another thread is decoding (it crashes), so
        a call from another thread while :meth:`frames` runs (e.g. on a prefetch
        thread) does nothing: the decoding thread closes the source when it stops.
        Stop the consumer of :meth:`frames` first (close the prefetch iterator).
        """
        owner = self._decoding_thread
        if owner is not None and owner != threading.get_ident():
            return
        self._finalizer()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(path: str | os.PathLike, *, threads: int = 0, video_stream: int = -1,
                stats: DecodeStats | None = None) -> VideoSource:
    """Open a file source once (see :class:`VideoSource`); ``video_stream`` is an index
    among its video streams, -1 = the best one."""
    return VideoSource(path, settings_for_file(threads, video_stream), stats=stats)


def probe(path: str | os.PathLike, *, video_stream: int = -1) -> VideoInfo:
    """Describe the video stream of ``path`` without decoding past its first frame.

    Returns a :class:`VideoInfo` with the upright width/height in pixels (after the
    display rotation), ``rotation_deg`` (clockwise degrees applied: 0, 90, 180 or 270),
    the codec name, the average rate in frames/s (None if undeclared or a still image),
    the declared frame count (None if undeclared), the duration in seconds (None if
    undeclared), the stream time base as a string such as ``"1/15360"``, and which video
    stream was read (``stream_index``) of how many (``video_streams``).
    Raises SourceError like :class:`VideoSource`.
    """
    with open_source(path, video_stream=video_stream) as source:
        return source.info


def iter_frames(path: str | os.PathLike, *, stats: DecodeStats, threads: int = 0,
                video_stream: int = -1) -> Iterator[Frame]:
    """All frames of ``path`` in order (see :meth:`VideoSource.frames`); ``stats`` is
    updated in place. Raises SourceError at the first ``next`` for a bad source."""
    yield from open_source(path, threads=threads, video_stream=video_stream, stats=stats).frames()


def count_frames(path: str | os.PathLike, *, stats: DecodeStats | None = None,
                 video_stream: int = -1) -> int:
    """Exactly the number of frames :func:`iter_frames` yields for ``path``."""
    return open_source(path, video_stream=video_stream, stats=stats).count()
