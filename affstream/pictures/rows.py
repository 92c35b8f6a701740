"""The per-frame CSV as a stream of frames: all rows of one frame together.

An affstream CSV has one row per face per frame, or one row (``face_id`` -1) for a frame
without a face, in frame order. :func:`iter_frame_rows` groups consecutive rows of one
frame into a :class:`FrameRows`, reading the file lazily through
:func:`affstream.writers.csv.iter_csv` (which refuses any other tool's CSV with one
line), so memory stays flat in the video's length. :func:`with_durations` adds each
frame's display duration (to the next frame's timestamp), for time-weighted summaries of
variable-frame-rate video.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..records import FrameAnnotation
from ..writers.csv import iter_csv


@dataclass(frozen=True, eq=False)
class FrameRows:
    """The rows of one video frame.

    frame_index: 1-based decode index (the CSV's ``frame``).
    time_s:      presentation time in seconds (the CSV's ``timestamp``; NaN if empty).
    faces:       the rows with a face (``success`` 1), in file order; empty for a frame
                 without a face.
    """

    frame_index: int
    time_s: float
    faces: tuple[FrameAnnotation, ...]


def iter_frame_rows(path: str | Path) -> Iterator[FrameRows]:
    """Yield one :class:`FrameRows` per frame of the affstream CSV ``path``, in order.

    Raises DataError (one line naming the file) for a CSV affstream did not write (see
    :func:`~affstream.writers.csv.iter_csv`), for frames out of order, for a frame that
    repeats a face_id, and for a CSV without any row.
    """
    path = Path(path)
    current: int | None = None
    time_s = math.nan
    faces: list[FrameAnnotation] = []
    seen: set[int] = set()
    for row in iter_csv(path):
        if row.frame_index != current:
            if current is not None:
                if row.frame_index < current:
                    raise DataError(
                        f"{path}: frame {row.frame_index} comes after frame {current}; "
                        "rows must be in frame order (write the CSV again with affstream annotate)"
                    )
                yield FrameRows(current, time_s, tuple(faces))
            current, time_s, faces, seen = row.frame_index, row.time_s, [], set()
        if row.success and row.track_id >= 0:
            if row.track_id in seen:
                raise DataError(f"{path}: frame {current} has face_id {row.track_id} twice; the file is damaged")
            seen.add(row.track_id)
            faces.append(row)
    if current is None:
        raise DataError(f"{path}: has a header but no rows; annotate the video again")
    yield FrameRows(current, time_s, tuple(faces))


def with_durations(frames: Iterable[FrameRows], fallback_s: float) -> Iterator[tuple[FrameRows, float]]:
    """Pair each frame with its display duration in seconds: the gap to the next
    frame's timestamp; the last frame (and any frame whose gap is not a positive number)
    gets ``fallback_s``. One frame of look-ahead: memory stays flat."""
    previous: FrameRows | None = None
    for frame in frames:
        if previous is not None:
            yield previous, _gap(previous.time_s, frame.time_s, fallback_s)
        previous = frame
    if previous is not None:
        yield previous, fallback_s


def _gap(start_s: float, end_s: float, fallback_s: float) -> float:
    gap = end_s - start_s
    return gap if math.isfinite(gap) and gap > 0 else fallback_s
