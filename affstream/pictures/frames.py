"""A second pass over an annotated video: its frames, paired with the CSV's rows.

:class:`VideoFrames` decodes a file exactly as ``affstream annotate`` did (the same
stream choice, decoding loop, frame count and PTS clock of :mod:`affstream.io.decode`),
but hands out PyAV frames with their PTS instead of converted pictures, so a renderer
can re-encode them with their original timing and leave untouched frames untouched.
:func:`paired_frames` walks those frames and :func:`~.rows.iter_frame_rows` together
and refuses, with one line, a CSV that was not written from this video (another frame
count or other timestamps): drawing one video's boxes on another is worse than failing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from ..errors import DataError, SourceError
from ..io.avcompat import open_input
from ..io.decode import (
    FIRST_FRAME_MAX_PACKETS,
    FrameClock,
    decoded_frames,
    is_image,
    open_container,
    select_video_stream,
)
from ..io.orientation import Orientation
from ..io.paths import check_path
from ..records import DecodeStats
from .rows import FrameRows

TIME_TOLERANCE_S = 2e-6  # the CSV prints timestamps to the microsecond


@dataclass(frozen=True, eq=False)
class RawFrame:
    """One decoded frame as stored (not yet upright).

    index:  1-based decode index (the CSV's ``frame``).
    time_s: seconds from the stream start, as ``affstream annotate`` computed it.
    pts:    the frame's presentation timestamp in ``VideoFrames.time_base`` units (for a
            frame without one, extrapolated from ``time_s``).
    frame:  the PyAV frame (its pixel format as decoded).
    """

    index: int
    time_s: float
    pts: int
    frame: av.VideoFrame


class VideoFrames:
    """One video opened for a second pass (a context manager; :meth:`frames` once).

    Attributes: ``name``, ``stream`` (the PyAV video stream), ``stream_index`` (among the
    video streams), ``orientation`` (how stored frames are turned upright),
    ``stored_size`` ((width, height) in pixels, before turning upright), ``time_base``
    (Fraction, seconds per PTS tick), ``origin_pts`` (the stream's start), ``is_image``
    and ``stats`` (the decode tally). Raises SourceError, one line naming the file, like
    :class:`affstream.io.sources.VideoSource`.
    """

    def __init__(self, path: str | os.PathLike, video_stream: int = -1) -> None:
        self.name = check_path(path)
        self.stats = DecodeStats()
        self._container = open_container(self.name)
        try:
            self.stream, self.stream_index = select_video_stream(self._container, self.name, video_stream)
            self.stream.codec_context.thread_type = "AUTO"  # as annotate decodes files: same frames
            name = self.name
            self._decoded = decoded_frames(
                self._container,
                self.stream,
                self.stats,
                first_frame_within=FIRST_FRAME_MAX_PACKETS,
                reopen=None if "://" in name else (lambda: open_container(name)),
            )
            self._first = next(self._decoded, None)
            if self._first is None:
                raise SourceError(f"{self.name}: no video frame could be decoded; the file may be corrupt or cut off")
            self.stored_size = (int(self._first.width), int(self._first.height))  # pixels, as stored
            self.is_image = is_image(self._container)
            self.orientation = Orientation.of_frame(self._first, self.stream, self.name, self.is_image)
            self._clock = FrameClock(self.stream)
            self.time_base = Fraction(self.stream.time_base) if self.stream.time_base else Fraction(1, 90000)
            self.origin_pts = self.stream.start_time if self.stream.start_time is not None else 0
        except BaseException:
            self._container.close()
            raise

    def frames(self) -> Iterator[RawFrame]:
        """The frames in decode order (the container is closed at the end)."""
        pending, self._first = self._first, None
        if pending is None:
            raise RuntimeError(f"{self.name}: frames() can be read only once")
        index = 0
        try:
            while pending is not None:
                time_s = self._clock.seconds(pending)
                pts = pending.pts
                if pts is None:
                    pts = self.origin_pts + round(Fraction(time_s) / self.time_base)
                index += 1
                self.stats.frames += 1
                yield RawFrame(index, time_s, int(pts), pending)
                pending = next(self._decoded, None)
        finally:
            self.close()

    def upright(self, frame: av.VideoFrame) -> np.ndarray:
        """(H, W, 3) uint8 RGB of ``frame``, turned upright (the CSV's coordinates)."""
        return self.orientation.apply(frame.to_ndarray(format="rgb24"))

    def to_stored(self, image: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`upright`: an upright (H, W, ...) array back to stored
        orientation (C-contiguous)."""
        turned = image
        if self.orientation.rotation_cw:
            turned = np.rot90(turned, k=self.orientation.rotation_cw // 90)
        if self.orientation.mirror:
            turned = turned[:, ::-1]
        return np.ascontiguousarray(turned)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_still_picture(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a still picture (JPEG, PNG...) rather than a video; False when
    it cannot be opened at all (the caller's own open then says why)."""
    try:
        with open_input(str(path)) as container:
            return is_image(container)
    except (av.FFmpegError, OSError, ValueError):
        return False


def paired_frames(
    frames: Iterator[RawFrame], rows: Iterator[FrameRows], video: str, csv: str
) -> Iterator[tuple[RawFrame, FrameRows]]:
    """Yield (frame, its rows) for every frame of the video, in order.

    Raises DataError, one line naming both files, when the CSV's frame numbers or
    timestamps differ from the video's, or when one of them has more frames.
    """
    hint = "was it written from this video? annotate the video again"
    count = 0
    for raw in frames:
        group = next(rows, None)
        if group is None:
            raise DataError(f"{csv}: ends after frame {count}, but {video} has more frames; {hint}")
        if group.frame_index != raw.index:
            raise DataError(f"{csv}: frame {group.frame_index} where {video} has frame {raw.index}; {hint}")
        if math.isfinite(group.time_s) and abs(group.time_s - raw.time_s) > TIME_TOLERANCE_S:
            raise DataError(f"{csv}: frame {raw.index} is at {group.time_s:.6f} s, but in {video} at {raw.time_s:.6f} s; {hint}")
        count += 1
        yield raw, group
    extra = next(rows, None)
    if extra is not None:
        raise DataError(f"{csv}: has rows for frame {extra.frame_index}, but {video} has {count} frames; {hint}")
