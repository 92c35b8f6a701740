"""Sources: open a video once and get both its metadata and its frames.

A camera or a network stream cannot be opened twice, so nothing here probes a source
and then opens it again: :func:`open_source` opens the container, selects the video
stream, decodes the first frame (PyAV exposes the display rotation only on decoded
frames) and keeps that frame for :meth:`VideoSource.frames`, which continues from it.

    with open_source("clip.mp4") as source:
        print(source.info.width, source.info.frame_count)
        for frame in source.frames():     # Frame records, 1-based frame_index, PTS times
            ...
    print(source.stats.errors)             # packets skipped while decoding

Per-kind settings (:class:`SourceSettings`): a file is decoded with FFmpeg's frame
threading (throughput; the pipeline is offline anyway); live kinds, when they arrive,
will decode without it (each frame thread adds a frame of delay).

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
    Orientation,
    average_fps,
    check_path,
    declared_frames,
    decoded_frames,
    duration_s,
    is_image,
    open_container,
    video_stream,
)

KIND_FILE = "file"


@dataclass(frozen=True)
class SourceSettings:
    """How a source of one kind is decoded.

    kind:            "file" (live kinds come with ``affstream stream``).
    frame_threading: FFmpeg frame threading (files only: it delays every frame).
    threads:         codec threads, 0 = FFmpeg chooses.
    """

    kind: str = KIND_FILE
    frame_threading: bool = True
    threads: int = 0


def settings_for_file(threads: int = 0) -> SourceSettings:
    """Decoder settings for a file source (frame threading on)."""
    if int(threads) < 0:
        raise ConfigError(f"decode threads must be >= 0 (got {threads}); use 0 for automatic")
    return SourceSettings(kind=KIND_FILE, frame_threading=True, threads=int(threads))


class VideoSource:
    """One opened source: :attr:`info` now, :meth:`frames` once, :attr:`stats` as it runs.

    Raises SourceError when created, with one line naming the source, for a missing
    path, a directory, an empty file, a file that is not media, a file without a video
    stream, and a video stream whose first packets decode to no frame.
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
            self._stream = video_stream(self._container, self.name)
            self._configure_decoder()
            self._decoded = decoded_frames(self._container, self._stream, self.stats,
                                           first_frame_within=FIRST_FRAME_MAX_PACKETS)
            self._first = next(self._decoded, None)
            if self._first is None:
                raise SourceError(f"{self.name}: no video frame could be decoded; "
                                  "the file may be corrupt, try re-encoding it")
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


def open_source(path: str | os.PathLike, *, threads: int = 0,
                stats: DecodeStats | None = None) -> VideoSource:
    """Open a file source once (see :class:`VideoSource`)."""
    return VideoSource(path, settings_for_file(threads), stats=stats)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe the video stream of ``path`` without decoding past its first frame.

    Returns a :class:`VideoInfo` with the upright width/height in pixels (after the
    display rotation), ``rotation_deg`` (clockwise degrees applied: 0, 90, 180 or 270),
    the codec name, the average rate in frames/s (None if undeclared or a still image),
    the declared frame count (None if undeclared), the duration in seconds (None if
    undeclared) and the stream time base as a string such as ``"1/15360"``.
    Raises SourceError like :class:`VideoSource`.
    """
    with open_source(path) as source:
        return source.info


def iter_frames(path: str | os.PathLike, *, stats: DecodeStats, threads: int = 0) -> Iterator[Frame]:
    """All frames of ``path`` in order (see :meth:`VideoSource.frames`); ``stats`` is
    updated in place. Raises SourceError at the first ``next`` for a bad source."""
    yield from open_source(path, threads=threads, stats=stats).frames()


def count_frames(path: str | os.PathLike, *, stats: DecodeStats | None = None) -> int:
    """Exactly the number of frames :func:`iter_frames` yields for ``path``."""
    return open_source(path, stats=stats).count()
