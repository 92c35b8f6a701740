"""Key frames for the report: the most intense moment of each expression, per face,
decoded from the video with the overlay drawn on, as small JPEG pictures.

One streaming pass over the video and its CSV (the same pairing and trails as the
renderer, so a key frame looks exactly like that frame of ``affstream render``), stopped
after the last frame wanted.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import AffstreamError
from .frames import VideoFrames, paired_frames
from .overlay import TrailKeeper, draw_overlay
from .rows import iter_frame_rows
from .summary import CsvSummary, KeyMoment

_LOG = logging.getLogger("affstream")

MAX_KEY_FRAMES = 24  # pictures per report at most (the most intense moments first)
PICTURE_WIDTH_PX = 640  # key frames are scaled down to this width (never up)
JPEG_QUALITY = 82


@dataclass(frozen=True)
class KeyFrame:
    """One frame with key moments (of one face or several) and its picture: ``jpeg``
    bytes (upright, overlay drawn), ``size`` (width, height) in pixels."""

    moments: tuple[KeyMoment, ...]
    jpeg: bytes
    size: tuple[int, int]

    @property
    def frame_index(self) -> int:
        return self.moments[0].frame_index

    @property
    def time_s(self) -> float:
        return self.moments[0].time_s


def key_moments(summary: CsvSummary, limit: int = MAX_KEY_FRAMES) -> list[KeyMoment]:
    """The key moments of the faces that have a timeline, at most ``limit``: every face's
    strongest moments first, then by face and expression order."""
    shown = set(summary.series.track_ids)
    moments = [m for face in summary.faces if face.track_id in shown for m in face.key_moments]
    strongest = sorted(moments, key=lambda m: -m.probability)[: max(0, int(limit))]
    return sorted(strongest, key=lambda m: (m.track_id, m.expression))


def grab_key_frames(video: str | Path, csv: str | Path, moments: list[KeyMoment], *, video_stream: int = -1) -> list[KeyFrame]:
    """Decode the frames of ``moments`` from ``video`` with their overlays: one picture
    per frame (its moments together), in the order of ``moments``' first appearance.

    Raises SourceError / DataError (one line) when the video cannot be read or the CSV was
    not written from it.
    """
    wanted: dict[int, list[KeyMoment]] = {}
    for moment in moments:
        wanted.setdefault(moment.frame_index, []).append(moment)
    if not wanted:
        return []
    last = max(wanted)
    pictures: dict[int, KeyFrame] = {}
    trails = TrailKeeper()
    with VideoFrames(video, video_stream) as frames:
        for raw, group in paired_frames(frames.frames(), iter_frame_rows(csv), frames.name, str(csv)):
            faces = trails.update(raw.time_s, group.faces)
            if raw.index in wanted:
                drawn, _ = draw_overlay(frames.upright(raw.frame), faces)
                jpeg, size = _jpeg(drawn)
                pictures[raw.index] = KeyFrame(tuple(wanted[raw.index]), jpeg, size)
            if raw.index >= last:
                break
    return [pictures[index] for index in wanted if index in pictures]


def try_key_frames(
    video: str | Path | None, csv: str | Path, moments: list[KeyMoment], *, video_stream: int = -1
) -> tuple[list[KeyFrame], str | None]:
    """:func:`grab_key_frames`, or ([], why not) when there is no video or it fails."""
    if not moments:
        return [], None
    if video is None:
        return [], "the video was not found, so no key frames are shown (give it with --video)"
    try:
        return grab_key_frames(video, csv, moments, video_stream=video_stream), None
    except AffstreamError as exc:
        _LOG.warning("report: no key frames: %s", exc)
        return [], f"no key frames: {exc}"


def _jpeg(image) -> tuple[bytes, tuple[int, int]]:
    from PIL import Image

    picture = Image.fromarray(image)
    if picture.width > PICTURE_WIDTH_PX:
        height = max(1, round(picture.height * PICTURE_WIDTH_PX / picture.width))
        picture = picture.resize((PICTURE_WIDTH_PX, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue(), picture.size
