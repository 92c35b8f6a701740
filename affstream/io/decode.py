"""The PyAV decoding loop: demux and decode one video stream, time frames by their PTS,
turn them upright, and tally what could not be decoded.

:mod:`affstream.io.sources` opens a source once and drives these pieces; nothing here
opens a file or holds state between sources (the one exception, re-decoding the tail of
a cut-off file, gets its second container from the caller, see below).

Inputs. Which paths can be media at all is :mod:`affstream.io.paths`' job.

Stream. :func:`select_video_stream` picks the video stream to decode: a given index among
the file's video streams, or by default the best one: among the streams that are not an
attached picture (cover art), those marked "default" if any; of these the largest
width x height; ties go to the lowest index.

Times. ``Frame.time_s = (pts - start_time) * time_base`` in seconds, where ``start_time``
is the video stream's own start time when the container declares one (0 otherwise), so
the first frame of an ordinary file is at ~0.0 s and variable frame rates keep their true
timing. Times are never computed as index / fps. A frame without a PTS (e.g. a raw H.264
elementary stream) gets the previous frame's time plus one frame duration (the frame's own
duration, else 1 / the stream's average or guessed rate, else 1/25 s); such frames are
logged and summarised in ``DecodeStats.error_messages`` without counting as errors.

Orientation (:mod:`affstream.io.orientation`). Frames are turned upright with the container's display matrix (rotation by a
multiple of 90 degrees and an optional mirror), read from the first decoded frame and
applied to all frames. When PyAV cannot list a frame's side data, the rotation comes from
``VideoFrame.rotation`` (no mirror), or for still images from their EXIF orientation tag.
Frames of the PNG decoders are never asked for their side data list: PyAV 18.1 frees the
metadata of the ICC profile those decoders attach a second time (SIGSEGV), so their
rotation comes from ``VideoFrame.rotation``, which reads the display matrix without
listing (or from EXIF, for a still image). Other rotation angles are rounded to the
nearest multiple of 90 degrees.

Frame count. The decoded count is FFmpeg's own (a decoder without frame threading, as
``ffprobe -count_frames``). Frame threading is kept for throughput, but when a stream ends
early (a file cut inside a packet) FFmpeg's frame threads drop the frames still in flight
(the reorder delay, e.g. the last two frames of an H.264 clip with B-frames). So when
frames are missing at the end of a frame-threaded decode and the caller can open the
source again, the tail is decoded a second time without frame threading, from the key
frame before the last frame delivered, and the frames after it (by PTS; by count when the
stream has no PTS) are delivered too (:func:`decoded_frames`).

Errors. Problems with the input itself (missing, special file, empty, not media, no video)
raise :class:`~affstream.errors.SourceError`. Packets that fail to decode are skipped and
counted in :class:`~affstream.records.DecodeStats`; so are packets that silently produce no
frame (corrupt or cut-off data that FFmpeg's frame threading drops without reporting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av

from ..errors import SourceError
from ..records import DecodeStats
from .avcompat import open_input
from .paths import DIRECTORY_HINT, ffmpeg_path

_LOG = logging.getLogger("affstream")

MAX_ERROR_MESSAGES = 20
FIRST_FRAME_MAX_PACKETS = 300  # data packets read while looking for a first frame
_FALLBACK_FRAME_S = 1.0 / 25.0  # FFmpeg's own default rate when nothing is declared
_IMAGE_FORMATS = ("image2", "image2pipe")  # plus every "*_pipe" demuxer (png_pipe, ...)
# codecs whose packets may legitimately yield no picture (VP8 alt-ref frames)
_HIDDEN_FRAME_CODECS = frozenset({"vp8"})
_ATTACHED_PIC = av.stream.Disposition.attached_pic
_DEFAULT = av.stream.Disposition.default


# --------------------------------------------------------------------- opening sources


def open_container(name: str) -> av.container.InputContainer:
    """Open ``name`` with PyAV, mapping its errors to one-line SourceErrors (which name
    ``name`` as given)."""
    try:
        container = open_input(ffmpeg_path(name))
    except FileNotFoundError as error:
        raise SourceError(f"{name}: no such file; check the path") from error
    except IsADirectoryError as error:
        raise SourceError(f"{name}: is a directory; {DIRECTORY_HINT}") from error
    except PermissionError as error:
        raise SourceError(f"{name}: permission denied; make the file readable") from error
    except (av.FFmpegError, OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise SourceError(f"{name}: not a readable video or image file ({reason}); "
                          "give a video file such as .mp4") from error
    if container.format.name == "tty":  # FFmpeg renders text files as ANSI art
        container.close()
        raise SourceError(f"{name}: is a text file, not a video; give a video or image file")
    return container


def select_video_stream(container: av.container.InputContainer, name: str,
                        choice: int = -1) -> tuple[av.VideoStream, int]:
    """The video stream to decode and its index among the file's video streams.

    ``choice`` >= 0 is an index among the video streams (as ffprobe's ``v:N``; attached
    pictures count), out of range -> SourceError listing how many there are. ``choice``
    -1 picks the best stream: never an attached picture (cover art); among the others,
    those with the "default" disposition if any; of these the largest width x height;
    ties go to the lowest index. SourceError naming what the file holds instead when it
    has no video stream (or only cover art).
    """
    videos = list(container.streams.video)
    if choice >= 0 and videos:
        if choice >= len(videos):
            raise SourceError(f"{name}: has no video stream {choice}: it has {len(videos)} "
                              f"video stream(s), numbered 0..{len(videos) - 1}; set "
                              "decode.video_stream to one of them or to -1 (the best)")
        return videos[choice], choice
    candidates = [s for s in videos if not s.disposition & _ATTACHED_PIC]
    if candidates:
        defaults = [s for s in candidates if s.disposition & _DEFAULT]
        best = max(defaults or candidates, key=lambda s: (_area(s), -s.index))
        return best, videos.index(best)
    if videos:
        raise SourceError(f"{name}: no video stream (holds only a cover picture); give a "
                          "video file, or set decode.video_stream to 0 to read the picture")
    kinds = sorted({stream.type for stream in container.streams})
    if kinds == ["audio"]:
        raise SourceError(f"{name}: no video stream (audio-only file); give a video file")
    held = ", ".join(kinds) if kinds else "no streams"
    raise SourceError(f"{name}: no video stream (holds {held}); give a video file")


def _area(stream) -> int:
    context = stream.codec_context
    return max(0, int(context.width or 0)) * max(0, int(context.height or 0))


def is_image(container: av.container.InputContainer) -> bool:
    fmt = container.format.name
    return fmt in _IMAGE_FORMATS or fmt.endswith("_pipe")


def average_fps(stream) -> float | None:
    rate = stream.average_rate
    return float(rate) if rate else None


def declared_frames(container: av.container.InputContainer, stream) -> int | None:
    if stream.frames > 0:
        return int(stream.frames)
    return 1 if container.format.name in _IMAGE_FORMATS and stream.duration == 1 else None


def duration_s(container: av.container.InputContainer, stream) -> float | None:
    if stream.duration is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


# ----------------------------------------------------------------------------- decoding


def _record_error(stats: DecodeStats, message: str) -> None:
    """Count one skipped packet/frame and keep its message (bounded)."""
    stats.errors += 1
    if len(stats.error_messages) < MAX_ERROR_MESSAGES:
        stats.error_messages.append(message)
        _LOG.warning("decode: %s", message)
    else:
        _LOG.debug("decode: %s", message)


@dataclass
class _Tally:
    """Packet and frame counts of one decode, for the end-of-stream checks."""

    read: int = 0  # packets demuxed (discarded ones included, end-of-stream flush not)
    sent: int = 0  # data packets meant to become frames (not marked discard)
    failed: int = 0  # packets the decoder rejected
    delivered: int = 0  # frames out of the decoder
    last_pts: int | None = None  # largest PTS delivered
    unstamped: int = 0  # frames delivered without a PTS
    failed_pts: set[int | None] = field(default_factory=set)  # PTS of the failed packets
    cut: bool = False  # the stream ended abnormally: demuxing failed or a partial packet

    def note(self, frame: av.VideoFrame) -> None:
        """Count one delivered frame."""
        self.delivered += 1
        if frame.pts is None:
            self.unstamped += 1
        elif self.last_pts is None or frame.pts > self.last_pts:
            self.last_pts = frame.pts

    @property
    def missing(self) -> int:
        """Sent packets that neither failed nor gave a frame (yet)."""
        return self.sent - self.failed - self.delivered


Reopen = Callable[[], av.container.InputContainer]


def decoded_frames(container: av.container.InputContainer, stream, stats: DecodeStats,
                   first_frame_within: int | None = None,
                   reopen: Reopen | None = None) -> Iterator[av.VideoFrame]:
    """Demux and decode ``stream``, skipping packets FFmpeg cannot decode.

    At the end of the stream, frames missing against the packets sent and packets
    missing against the container's declared count are recorded as errors (see
    :func:`_check_tally`). ``first_frame_within`` ends the stream (without flush or
    checks) when that many data packets have given no frame at all.

    ``reopen`` (files only: it opens the same source again) lets a frame-threaded decode
    that ends with frames missing re-decode its tail without frame threading
    (:func:`_redecode_tail`), so that the count is FFmpeg's sequential count also for a
    file cut off inside a packet. Nothing is opened twice when no frame is missing.
    """
    context = stream.codec_context
    tally = _Tally()
    flushed = False
    demuxer = container.demux(stream)
    while True:
        try:
            packet = next(demuxer)
        except StopIteration:
            break
        except av.FFmpegError as error:
            _record_error(stats, f"demuxing stopped after packet {tally.read}: {_reason(error)}")
            tally.cut = True
            break
        if packet.size == 0 and packet.dts is None:
            flushed = True  # PyAV's end-of-stream packet
        else:
            tally.read += 1
            tally.sent += 0 if packet.is_discard or packet.size == 0 else 1
            tally.cut = packet.is_corrupt  # e.g. the partial last packet of a cut-off MP4
        try:
            frames = context.decode(packet)
        except av.FFmpegError as error:
            tally.failed += 1
            tally.failed_pts.add(packet.pts)
            _record_error(stats, f"packet {tally.read} (pts {packet.pts}) skipped: "
                                 f"{_reason(error)}")
            continue
        for frame in frames:
            tally.note(frame)
            yield frame
        if first_frame_within is not None and not tally.delivered and tally.sent >= first_frame_within:
            return
    if not flushed:  # demuxing stopped early: drain what the decoder still holds
        for frame in _flush(context, stats):
            tally.note(frame)
            yield frame
    if reopen is not None and _lost_in_flight(tally, context, stream.frames):
        yield from _redecode_tail(reopen, stream, stats, tally)
    _check_tally(stats, tally, context.name, stream.frames)


def _lost_in_flight(tally: _Tally, context, declared: int) -> bool:
    """Whether a frame-threaded decode may have lost frames in flight at its end: sent
    packets are unaccounted for, and the stream ended early or the codec always gives a
    frame per packet (VP8's hidden frames give none, so for VP8 only a cut counts)."""
    if not context.thread_type & av.codec.context.ThreadType.FRAME or context.thread_count == 1:
        return False  # no frame threads, nothing in flight
    if tally.missing <= 0:
        return False
    ended_early = tally.cut or 0 < tally.read < declared
    return ended_early or context.name not in _HIDDEN_FRAME_CODECS


def _flush(context, stats: DecodeStats) -> Iterator[av.VideoFrame]:
    """Drain frames still buffered in the decoder."""
    try:
        yield from context.decode(None)
    except av.error.EOFError:
        pass
    except av.FFmpegError as error:
        _record_error(stats, f"flushing the decoder failed: {_reason(error)}")


def _redecode_tail(reopen: Reopen, stream, stats: DecodeStats,
                   tally: _Tally) -> Iterator[av.VideoFrame]:
    """Decode the end of ``stream`` again, from a second container, without frame
    threading, and yield the frames the first decode did not deliver; updates ``tally``.

    The frames delivered so far are those up to ``tally.last_pts`` (frames leave the
    decoder in presentation order), so the second decode starts at the key frame at or
    before that PTS and yields the frames after it; when the seek lands after that PTS
    (or nothing was delivered) it decodes from the start. A stream whose frames carry no
    PTS is decoded again from the start and its first ``tally.delivered`` frames are
    skipped. Packets of the tail that fail count as failed packets (once); demuxing
    errors were already reported by the first decode.
    """
    if tally.delivered and tally.unstamped not in (0, tally.delivered):
        return  # PTS on some frames only: no safe way to tell which frames are new
    by_count = tally.delivered > 0 and tally.unstamped == tally.delivered
    after = None if by_count else tally.last_pts
    for seek in ((True, False) if after is not None else (False,)):
        try:
            again = reopen()
        except (SourceError, av.FFmpegError, OSError) as error:
            _LOG.debug("decode: tail not re-decoded, cannot open the source again: %s", error)
            return
        try:
            twin = again.streams[stream.index]
            twin.codec_context.thread_type = "SLICE"  # sequential: no frame in flight is lost
            if seek and not _seek(again, twin, after):
                continue
            tail = _Tail(tally, stats, after=after, skip=tally.delivered if by_count else 0,
                         check_seek=seek)
            yield from tail.frames(_sequential(again, twin))
            if not tail.overshot:
                if tail.recovered:
                    _LOG.debug("decode: %d frame(s) recovered from the re-decoded tail",
                                tail.recovered)
                return
        finally:
            again.close()


def _seek(container: av.container.InputContainer, stream, pts: int) -> bool:
    """Seek ``container`` to the key frame of ``stream`` at or before ``pts``."""
    try:
        container.seek(pts, stream=stream, backward=True, any_frame=False)
    except (av.FFmpegError, OSError) as error:
        _LOG.debug("decode: cannot seek for the tail (%s); decoding it from the start", error)
        return False
    return True


@dataclass
class _Tail:
    """Picks the new frames out of a second, sequential decode (see :func:`_redecode_tail`).

    after:      yield only frames with a PTS above this (None: no PTS filter).
    skip:       frames to skip first (a stream without PTS: those already delivered).
    check_seek: the decode starts at a seek; if its first frame is already after
                ``after``, frames may lie before it: stop (``overshot``).
    """

    tally: _Tally
    stats: DecodeStats
    after: int | None
    skip: int
    check_seek: bool
    overshot: bool = False
    recovered: int = 0

    def frames(self, decoded: Iterator[tuple[av.VideoFrame | None, int | None]]) -> Iterator[av.VideoFrame]:
        first = True
        for frame, failed_pts in decoded:
            if frame is None:
                self._failed(failed_pts)
                continue
            if first and self.check_seek and frame.pts is not None and frame.pts > self.after:
                self.overshot = True
                return
            first = False
            if self.after is not None and (frame.pts is None or frame.pts <= self.after):
                continue
            if self.skip > 0:
                self.skip -= 1
                continue
            self.tally.note(frame)
            self.recovered += 1
            yield frame

    def _failed(self, pts: int | None) -> None:
        """Count a failed packet of the tail, unless the first decode already did."""
        if self.skip > 0 or (pts is not None and pts in self.tally.failed_pts):
            return
        if self.after is not None and pts is not None and pts <= self.after:
            return
        self.tally.failed += 1
        self.tally.failed_pts.add(pts)
        _record_error(self.stats, f"packet (pts {pts}) skipped in the re-decoded tail: "
                                  "cut-off or corrupt data")


def _sequential(container: av.container.InputContainer,
                stream) -> Iterator[tuple[av.VideoFrame | None, int | None]]:
    """Decode ``stream`` to its end; (frame, None) per frame, (None, pts) per packet the
    decoder rejects. Stops quietly where demuxing fails."""
    context = stream.codec_context
    demuxer = container.demux(stream)
    while True:
        try:
            packet = next(demuxer)
        except (StopIteration, av.FFmpegError):
            break
        try:
            frames = context.decode(packet)
        except av.FFmpegError:
            yield None, packet.pts
            continue
        for frame in frames:
            yield frame, None
    try:
        for frame in context.decode(None):
            yield frame, None
    except av.FFmpegError:
        pass


def _check_tally(stats: DecodeStats, tally: _Tally, codec: str, declared: int) -> None:
    """Record silent losses: one error per sent packet that gave no frame (FFmpeg's
    frame threading drops bad packets without reporting them), and one error when the
    stream ends before the packet count the container declares (a cut-off file)."""
    missing = tally.missing
    if missing > 0 and codec not in _HIDDEN_FRAME_CODECS:
        _record_error(stats, f"{missing} packet(s) produced no frame (corrupt or cut-off "
                             f"data); {tally.delivered} frames from {tally.sent} packets")
        stats.errors += missing - 1  # one error per lost frame; _record_error counted one
    if declared > 0 and tally.read < declared:
        _record_error(stats, f"stream ends after {tally.read} of the {declared} packets the "
                             "container declares; the file looks cut off")


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())[:160]


# -------------------------------------------------------------------------------- time


class FrameClock:
    """Turns frame PTS into seconds from the stream start; extrapolates missing PTS."""

    def __init__(self, stream) -> None:
        self.time_base = Fraction(stream.time_base) if stream.time_base else Fraction(0)
        self.origin = stream.start_time if stream.start_time is not None else 0
        rate = stream.average_rate or stream.guessed_rate
        self.step_s = float(1 / rate) if rate else _FALLBACK_FRAME_S
        self.previous: float | None = None
        self.missing = 0

    def seconds(self, frame: av.VideoFrame) -> float:
        """Time of ``frame`` in seconds (float64)."""
        if frame.pts is not None and self.time_base:
            time_s = float((frame.pts - self.origin) * self.time_base)
        else:
            self.missing += 1
            time_s = 0.0 if self.previous is None else self.previous + self._step(frame)
            _LOG.debug("decode: frame without PTS, time extrapolated to %.6f s", time_s)
        self.previous = time_s
        return time_s

    def _step(self, frame: av.VideoFrame) -> float:
        if frame.duration and self.time_base:
            return float(frame.duration * self.time_base)
        return self.step_s

    def report(self, stats: DecodeStats, name: str) -> None:
        """Summarise frames without PTS (a note, not an error)."""
        stats.missing_pts = self.missing
        if not self.missing:
            return
        message = (f"{self.missing} frame(s) had no PTS; their times were extrapolated "
                   f"from the frame rate")
        _LOG.warning("decode: %s: %s", name, message)
        if len(stats.error_messages) < MAX_ERROR_MESSAGES:
            stats.error_messages.append(message)


