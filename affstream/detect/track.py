"""Face tracking: give each detection a track id that stays stable across frames.

Matching, frame by frame (numpy only, no learned appearance model):

1. Tracks not matched for more than ``TrackConfig.max_missed_frames`` frames (counted
   from frame indices, so skipped frames count as missed) are retired; their ids are
   never reused.
2. Each live track is compared with this frame's detections through two reference
   boxes: its last matched box and a constant-velocity prediction of where that box is
   now. The pair score is the larger IoU of the two.
3. **IoU stage** -- greedy assignment by descending IoU (not optimal like the Hungarian
   method, but exact whenever each face overlaps its own previous box more than any
   other face's, which holds for faces at video frame rates): the best remaining pair
   with IoU >= ``iou_min`` is matched, its track and detection removed, and so on.
4. **Centre-distance fallback** -- for tracks and detections still unmatched, greedy by
   ascending centre distance divided by the track's box size (square root of its
   area), accepted up to :data:`CENTRE_DISTANCE_MAX` and only between boxes of similar
   size (:data:`SCALE_RATIO_MAX`). This keeps a fast-moving face whose box no longer
   overlaps its previous one.
5. Detections left over start new tracks with the next id (0, 1, 2, ...), in
   left-to-right order so ids do not depend on the detector's output order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..config import TrackConfig
from ..errors import ConfigError
from ..records import Detection, TrackedFace

log = logging.getLogger("affstream")

CENTRE_DISTANCE_MAX = 1.0
"""Largest centre distance, in units of the track's box size, accepted by the fallback."""

SCALE_RATIO_MAX = 2.0
"""Largest ratio of box sizes (either way) accepted by the fallback."""

VELOCITY_SMOOTHING = 0.5
"""Weight of the newest displacement in the per-frame velocity estimate (0-1]."""

MAX_EXTRAPOLATION_FRAMES = 10
"""A missing track's predicted box is extrapolated at most this many frames ahead."""


@dataclass
class _Track:
    """A live track. Boxes are (4,) float64 x1, y1, x2, y2 pixels; velocity in pixels/frame."""

    track_id: int
    box: np.ndarray
    last_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1

    def predicted(self, frame_index: int) -> np.ndarray:
        steps = min(frame_index - self.last_frame, MAX_EXTRAPOLATION_FRAMES)
        return self.box + self.velocity * steps

    def observe(self, frame_index: int, box: np.ndarray) -> None:
        step = (box - self.box) / (frame_index - self.last_frame)
        if self.hits == 1:
            self.velocity = step
        else:
            self.velocity = VELOCITY_SMOOTHING * step + (1.0 - VELOCITY_SMOOTHING) * self.velocity
        self.box = box
        self.last_frame = frame_index
        self.hits += 1


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (T, 4) and ``b`` (D, 4), xyxy pixels -> (T, D) float64 in [0, 1].

    Degenerate boxes (zero or negative area) have IoU 0 with everything.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0.0, None) * np.clip(iy2 - iy1, 0.0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0.0, inter / union, 0.0)
    return iou


def _centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], axis=1)


def _sizes(boxes: np.ndarray) -> np.ndarray:
    """Square root of box area, pixels; at least 1 to keep divisions finite."""
    w = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None)
    h = np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    return np.maximum(np.sqrt(w * h), 1.0)


def _greedy(score: np.ndarray, accept: np.ndarray, descending: bool) -> list[tuple[int, int]]:
    """Greedy one-to-one assignment on a (T, D) score matrix, best pairs first.

    Only pairs where ``accept`` is True are considered. Ties resolve by row, then column.
    Returns (row, column) pairs.
    """
    rows, cols = np.nonzero(accept)
    if rows.size == 0:
        return []
    values = score[rows, cols]
    order = np.argsort(-values if descending else values, kind="stable")
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_rows or c in used_cols:
            continue
        used_rows.add(r)
        used_cols.add(c)
        pairs.append((r, c))
    return pairs


class FaceTracker:
    """Assigns stable, never-reused track ids to per-frame face detections.

    Call :meth:`update` once per frame in increasing frame order (frames may be skipped;
    the gap counts as missed frames). Not thread-safe; one tracker per video.
    """

    def __init__(self, config: TrackConfig) -> None:
        if not 0.0 < float(config.iou_min) <= 1.0:
            raise ConfigError(f"track.iou_min must be in (0, 1], got {config.iou_min}")
        if int(config.max_missed_frames) < 0:
            raise ConfigError(f"track.max_missed_frames must be >= 0, got {config.max_missed_frames}")
        self._iou_min = float(config.iou_min)
        self._max_missed = int(config.max_missed_frames)
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._last_frame: int | None = None

    @property
    def track_count(self) -> int:
        """Number of track ids handed out so far (the next new track gets this id)."""
        return self._next_id

    @property
    def live_track_ids(self) -> tuple[int, ...]:
        """Ids of the tracks not yet retired, ascending."""
        return tuple(sorted(t.track_id for t in self._tracks))

    def predicted_boxes(self, frame_index: int) -> np.ndarray:
        """(M, 4) float32 boxes where the tracks still live at ``frame_index`` are expected
        (constant velocity from their last box), ordered by track id."""
        live = sorted((t for t in self._tracks if frame_index - t.last_frame - 1 <= self._max_missed),
                      key=lambda t: t.track_id)
        return np.array([t.predicted(frame_index) for t in live], dtype=np.float32).reshape(-1, 4)

    def update(self, frame_index: int, time_s: float, detections: Sequence[Detection]) -> tuple[TrackedFace, ...]:
        """Match this frame's detections to tracks; return them as TrackedFaces sorted by track_id.

        frame_index: 1-based, strictly greater than the previous call's.
        time_s:      presentation time in seconds, copied into each TrackedFace.
        detections:  any order; each ``box_xyxy`` is (4,) pixels.
        Raises ValueError if frame_index does not increase.
        """
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frame_index must increase: got {frame_index} after {self._last_frame}")
        self._last_frame = frame_index
        self._retire(frame_index)

        boxes = np.array([np.asarray(d.box_xyxy, dtype=np.float64).reshape(4) for d in detections]).reshape(-1, 4)
        assigned: dict[int, int] = {}  # detection index -> track id
        free_tracks = list(range(len(self._tracks)))
        free_dets = list(range(len(detections)))

        for matcher in (self._match_iou, self._match_centres):
            if not free_tracks or not free_dets:
                break
            pairs = matcher(frame_index, [self._tracks[t] for t in free_tracks], boxes[free_dets])
            for r, c in pairs:
                track, det = self._tracks[free_tracks[r]], free_dets[c]
                track.observe(frame_index, boxes[det])
                assigned[det] = track.track_id
            matched_t = {r for r, _ in pairs}
            matched_d = {c for _, c in pairs}
            free_tracks = [t for i, t in enumerate(free_tracks) if i not in matched_t]
            free_dets = [d for i, d in enumerate(free_dets) if i not in matched_d]

        for det in sorted(free_dets, key=lambda i: tuple(boxes[i])):
            assigned[det] = self._start(frame_index, boxes[det])

        faces = [TrackedFace(frame_index, float(time_s), tid, detections[det]) for det, tid in assigned.items()]
        return tuple(sorted(faces, key=lambda f: f.track_id))

    def _retire(self, frame_index: int) -> None:
        keep = []
        for track in self._tracks:
            missed = frame_index - track.last_frame - 1
            if missed > self._max_missed:
                log.debug("track %d retired at frame %d after %d missed frames", track.track_id, frame_index, missed)
            else:
                keep.append(track)
        self._tracks = keep

    def _start(self, frame_index: int, box: np.ndarray) -> int:
        track = _Track(track_id=self._next_id, box=box.copy(), last_frame=frame_index)
        self._tracks.append(track)
        self._next_id += 1
        return track.track_id

    def _match_iou(self, frame_index: int, tracks: list[_Track], boxes: np.ndarray) -> list[tuple[int, int]]:
        last = np.stack([t.box for t in tracks])
        pred = np.stack([t.predicted(frame_index) for t in tracks])
        iou = np.maximum(box_iou(last, boxes), box_iou(pred, boxes))
        return _greedy(iou, iou >= self._iou_min, descending=True)

    def _match_centres(self, frame_index: int, tracks: list[_Track], boxes: np.ndarray) -> list[tuple[int, int]]:
        last = np.stack([t.box for t in tracks])
        pred = np.stack([t.predicted(frame_index) for t in tracks])
        det_centres = _centres(boxes)
        scale = _sizes(last)[:, None]
        dist = np.minimum(
            np.linalg.norm(_centres(last)[:, None, :] - det_centres[None, :, :], axis=2),
            np.linalg.norm(_centres(pred)[:, None, :] - det_centres[None, :, :], axis=2),
        ) / scale
        ratio = _sizes(boxes)[None, :] / scale
        similar = (ratio <= SCALE_RATIO_MAX) & (ratio >= 1.0 / SCALE_RATIO_MAX)
        return _greedy(dist, similar & (dist <= CENTRE_DISTANCE_MAX), descending=False)
