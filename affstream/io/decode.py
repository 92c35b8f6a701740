"""The PyAV decoding loop: demux and decode one video stream, time frames by their PTS,
turn them upright, and tally what could not be decoded.

:mod:`affstream.io.sources` opens a source once and drives these pieces; nothing here
opens a file twice or holds state between sources.

Times. ``Frame.time_s = (pts - start_time) * time_base`` in seconds, where ``start_time``
is the video stream's own start time when the container declares one (0 otherwise), so
the first frame of an ordinary file is at ~0.0 s and variable frame rates keep their true
timing. Times are never computed as index / fps. A frame without a PTS (e.g. a raw H.264
elementary stream) gets the previous frame's time plus one frame duration (the frame's own
duration, else 1 / the stream's average or guessed rate, else 1/25 s); such frames are
logged and summarised in ``DecodeStats.error_messages`` without counting as errors.

Orientation. Frames are turned upright with the container's display matrix (rotation by a
multiple of 90 degrees and an optional mirror), read from the first decoded frame and
applied to all frames. When PyAV cannot list a frame's side data, the rotation comes from
``VideoFrame.rotation`` (no mirror), or for still images from their EXIF orientation tag.
Other rotation angles are rounded to the nearest multiple of 90 degrees.

Errors. Problems with the input itself (missing, empty, not media, no video) raise
:class:`~affstream.errors.SourceError`. Packets that fail to decode are skipped and counted
in :class:`~affstream.records.DecodeStats`; so are packets that silently produce no frame
(corrupt or cut-off data that FFmpeg's frame threading drops without reporting).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from ..errors import SourceError
from ..records import DecodeStats

_LOG = logging.getLogger("affstream")

MAX_ERROR_MESSAGES = 20
FIRST_FRAME_MAX_PACKETS = 300  # data packets read while looking for a first frame
_FALLBACK_FRAME_S = 1.0 / 25.0  # FFmpeg's own default rate when nothing is declared
_IMAGE_FORMATS = ("image2", "image2pipe")  # plus every "*_pipe" demuxer (png_pipe, ...)
# codecs whose packets may legitimately yield no picture (VP8 alt-ref frames)
_HIDDEN_FRAME_CODECS = frozenset({"vp8"})


# --------------------------------------------------------------------- opening sources


def check_path(path: str | os.PathLike) -> str:
    """The display name of ``path``; raise SourceError for paths that cannot be media."""
    name = os.fspath(path)
    if not isinstance(name, str):
        name = os.fsdecode(name)
    if "://" in name:  # URL: nothing to check on the file system
        return name
    if not os.path.exists(name):
        raise SourceError(f"{name}: no such file; check the path")
    if os.path.isdir(name):
        raise SourceError(f"{name}: is a directory; give a video or image file")
    if os.path.isfile(name) and os.path.getsize(name) == 0:
        raise SourceError(f"{name}: file is empty (0 bytes); give a video or image file")
    if not os.access(name, os.R_OK):
        raise SourceError(f"{name}: permission denied; make the file readable")
    return name


def open_container(name: str) -> av.container.InputContainer:
    """Open ``name`` with PyAV, mapping its errors to one-line SourceErrors."""
    try:
        container = av.open(name, mode="r", metadata_errors="replace")
    except FileNotFoundError as error:
        raise SourceError(f"{name}: no such file; check the path") from error
    except IsADirectoryError as error:
        raise SourceError(f"{name}: is a directory; give a video or image file") from error
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


def video_stream(container: av.container.InputContainer, name: str):
    """The first video stream; SourceError naming what the file holds instead."""
    if container.streams.video:
        return container.streams.video[0]
    kinds = sorted({stream.type for stream in container.streams})
    if kinds == ["audio"]:
        raise SourceError(f"{name}: no video stream (audio-only file); give a video file")
    held = ", ".join(kinds) if kinds else "no streams"
    raise SourceError(f"{name}: no video stream (holds {held}); give a video file")


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


def decoded_frames(container: av.container.InputContainer, stream, stats: DecodeStats,
                   first_frame_within: int | None = None) -> Iterator[av.VideoFrame]:
    """Demux and decode ``stream``, skipping packets FFmpeg cannot decode.

    At the end of the stream, frames missing against the packets sent and packets
    missing against the container's declared count are recorded as errors (see
    :func:`_check_tally`). ``first_frame_within`` ends the stream (without flush or
    checks) when that many data packets have given no frame at all.
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
            break
        if packet.size == 0 and packet.dts is None:
            flushed = True  # PyAV's end-of-stream packet
        else:
            tally.read += 1
            tally.sent += 0 if packet.is_discard or packet.size == 0 else 1
        try:
            frames = context.decode(packet)
        except av.FFmpegError as error:
            tally.failed += 1
            _record_error(stats, f"packet {tally.read} (pts {packet.pts}) skipped: "
                                 f"{_reason(error)}")
            continue
        for frame in frames:
            tally.delivered += 1
            yield frame
        if first_frame_within is not None and not tally.delivered and tally.sent >= first_frame_within:
            return
    if not flushed:  # demuxing stopped early: drain what the decoder still holds
        for frame in _flush(context, stats):
            tally.delivered += 1
            yield frame
    _check_tally(stats, tally, context.name, stream.frames)


def _flush(context, stats: DecodeStats) -> Iterator[av.VideoFrame]:
    """Drain frames still buffered in the decoder."""
    try:
        yield from context.decode(None)
    except av.error.EOFError:
        pass
    except av.FFmpegError as error:
        _record_error(stats, f"flushing the decoder failed: {_reason(error)}")


def _check_tally(stats: DecodeStats, tally: _Tally, codec: str, declared: int) -> None:
    """Record silent losses: one error per sent packet that gave no frame (FFmpeg's
    frame threading drops bad packets without reporting them), and one error when the
    stream ends before the packet count the container declares (a cut-off file)."""
    missing = tally.sent - tally.failed - tally.delivered
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


# ------------------------------------------------------------------------- orientation


@dataclass(frozen=True)
class Orientation:
    """How to turn a stored picture upright: mirror left-right first (if ``mirror``),
    then rotate ``rotation_cw`` degrees clockwise (0, 90, 180 or 270)."""

    rotation_cw: int = 0
    mirror: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) stored picture -> upright C-contiguous copy (or the input if upright)."""
        if self.mirror:
            image = image[:, ::-1]
        if self.rotation_cw:
            image = np.rot90(image, k=-(self.rotation_cw // 90))
        return np.ascontiguousarray(image)

    def upright_shape(self, height: int, width: int) -> tuple[int, int]:
        return (width, height) if self.rotation_cw in (90, 270) else (height, width)

    @classmethod
    def of_frame(cls, frame: av.VideoFrame, stream, name: str, is_image: bool) -> Orientation:
        """Orientation from the frame's display matrix, the stream's legacy ``rotate``
        tag, or (PyAV cannot read this frame's side data) a fallback."""
        try:
            matrix = _display_matrix(frame)
        except ValueError:  # side data of a type this PyAV build does not know
            return cls._fallback(frame, name, is_image)
        if matrix is not None:
            return cls.from_matrix(matrix)
        rotate = stream.metadata.get("rotate")
        if rotate:
            try:
                return cls(rotation_cw=_nearest_quarter(float(rotate)))
            except ValueError:
                _LOG.debug("decode: %s: ignoring rotate tag %r", name, rotate)
        return cls()

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> Orientation:
        """From FFmpeg's 3x3 display matrix (9 int32, 16.16 fixed point for a, b, c, d),
        which maps a stored pixel (x, y) to display (a*x + c*y, b*x + d*y)."""
        a, b, _, c, d = (float(v) / 65536.0 for v in matrix[:5])
        mirror = a * d - b * c < 0
        if mirror:  # undo the mirror on x first: x -> -x negates a and b
            a, b = -a, -b
        return cls(rotation_cw=_nearest_quarter(math.degrees(math.atan2(b, a))), mirror=mirror)

    @classmethod
    def _fallback(cls, frame: av.VideoFrame, name: str, is_image: bool) -> Orientation:
        if is_image:
            exif = _exif_orientation(name)
            if exif is not None:
                return exif
        return cls(rotation_cw=_nearest_quarter(-float(frame.rotation)))


def _nearest_quarter(degrees_cw: float) -> int:
    """Round an angle to 0, 90, 180 or 270 (clockwise), logging non-right angles."""
    quarter = round(degrees_cw / 90.0) % 4 * 90
    if abs(((degrees_cw - quarter) + 180.0) % 360.0 - 180.0) > 1.0:
        _LOG.warning("decode: display rotation %.1f deg rounded to %d deg", degrees_cw, quarter)
    return quarter


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's DISPLAYMATRIX side data as 9 int32, or None.

    Raises ValueError when PyAV cannot enumerate the side data (unknown type).
    """
    for side in frame.side_data:
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            raw = bytes(side)
            if len(raw) >= 36:
                return np.frombuffer(raw[:36], dtype=np.int32)
    return None


# EXIF orientation tag (1..8) -> (clockwise rotation, mirror first)
_EXIF_ORIENTATIONS = {
    1: (0, False), 2: (0, True), 3: (180, False), 4: (180, True),
    5: (270, True), 6: (90, False), 7: (90, True), 8: (270, False),
}


def _exif_orientation(name: str) -> Orientation | None:
    """Orientation from a still image's EXIF tag (Pillow), or None if unreadable."""
    try:
        from PIL import Image

        with Image.open(name) as image:
            tag = image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - any failure means "no usable EXIF"
        return None
    if tag not in _EXIF_ORIENTATIONS:
        return None
    rotation, mirror = _EXIF_ORIENTATIONS[tag]
    return Orientation(rotation_cw=rotation, mirror=mirror)
