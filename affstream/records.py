"""Typed records passed between pipeline stages.

The data flow is ``decode -> detect -> track -> align -> embed -> head -> write``;
each arrow carries one of the records below. Records are small frozen dataclasses;
array fields document their shape, dtype and unit. Frame indices are **1-based**
decode indices (frame 1 is the first decoded frame), as OpenFace and Aff-Wild2 count.
Times are seconds from the stream's presentation timestamps (PTS), never index / fps.

This module must stay importable without torch: tensor-typed fields are annotated
with ``Any`` and documented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a source, read before decoding.

    ``width`` / ``height`` are the *upright* display size in pixels, i.e. after the
    container's rotation has been applied. ``frame_count`` and ``duration_s`` are the
    container's declared values (``None`` when it does not say); the decoded count is
    reported separately in :class:`DecodeStats`.
    """

    path: str
    codec: str
    width: int
    height: int
    rotation_deg: int  # clockwise rotation applied to make frames upright: 0, 90, 180, 270
    average_fps: float | None
    frame_count: int | None
    duration_s: float | None
    time_base: str  # e.g. "1/15360", as a string to stay JSON-friendly

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "rotation_deg": self.rotation_deg,
            "average_fps": self.average_fps,
            "frame_count": self.frame_count,
            "duration_s": self.duration_s,
            "time_base": self.time_base,
        }


@dataclass
class DecodeStats:
    """Counters a decoder updates while it runs (mutable on purpose).

    ``frames`` counts frames handed downstream; ``errors`` counts packets or frames
    that could not be decoded and were skipped; ``missing_pts`` counts frames without a
    presentation timestamp, whose time was extrapolated from the previous frame.
    """

    frames: int = 0
    errors: int = 0
    missing_pts: int = 0
    error_messages: list[str] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded, upright video frame.

    index:  1-based decode index.
    time_s: presentation time in seconds (PTS * time_base); for a frame without PTS the
            decoder extrapolates from the previous frame and says so in its stats.
    image:  (H, W, 3) uint8 RGB, C-contiguous, already rotated upright.
    """

    index: int
    time_s: float
    image: np.ndarray


@dataclass(frozen=True, eq=False)
class Detection:
    """One face found by the detector, in source-frame pixels.

    box_xyxy:  (4,) float32, x1, y1, x2, y2 in pixels of the upright frame.
    score:     detector confidence in [0, 1].
    landmarks: (5, 2) float32 (x, y) pixels: left eye, right eye, nose tip,
               left mouth corner, right mouth corner ("left" = image left).

    Both use pixel-edge coordinates: x = 0 is the frame's left edge and pixel i spans
    [i, i + 1] (its centre is at i + 0.5).
    """

    box_xyxy: np.ndarray
    score: float
    landmarks: np.ndarray


@dataclass(frozen=True, eq=False)
class TrackedFace:
    """A detection with a stable identity across frames.

    track_id: 0-based identity, stable for as long as the tracker keeps the person.
    """

    frame_index: int
    time_s: float
    track_id: int
    detection: Detection


@dataclass(frozen=True, eq=False)
class FrameFaces:
    """All tracked faces of one frame, image dropped once crops are taken.

    ``faces`` may be empty (no face in this frame).
    """

    index: int
    time_s: float
    faces: tuple[TrackedFace, ...]


@dataclass(frozen=True, eq=False)
class CropBatch:
    """N aligned, normalised face crops gathered from many frames.

    crops:       torch.Tensor (N, 3, S, S) float32 on the pipeline device, normalised with
                 the backbone's mean/std; S is the backbone's input size.
    frame_index: (N,) int64, 1-based frame index of each crop.
    track_id:    (N,) int64.
    """

    crops: Any
    frame_index: np.ndarray
    track_id: np.ndarray

    def __len__(self) -> int:
        return int(self.frame_index.shape[0])


@dataclass(frozen=True, eq=False)
class FeatureBatch:
    """N face embeddings from the backbone.

    features:    (N, D) float32 on the host, L2-normalised projected image embeddings.
    frame_index: (N,) int64, 1-based.
    track_id:    (N,) int64.
    """

    features: np.ndarray
    frame_index: np.ndarray
    track_id: np.ndarray

    def __len__(self) -> int:
        return int(self.frame_index.shape[0])


@dataclass(frozen=True, eq=False)
class Prediction:
    """Head outputs for N faces (rows align with a FeatureBatch).

    Any task the head does not predict is ``None``.

    valence, arousal: (N,) float32 in [-1, 1].
    expr_probs:       (N, 8) float32, rows sum to 1, order of ``labels.EXPR_LABELS``.
    au_probs:         (N, 12) float32 in [0, 1], order of ``labels.AU_LABELS``.
    """

    valence: np.ndarray | None = None
    arousal: np.ndarray | None = None
    expr_probs: np.ndarray | None = None
    au_probs: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class FrameAnnotation:
    """One output row: one face of one frame, or a frame with no face.

    For a frame with no face: ``face_id == -1``, ``success`` False, ``confidence`` 0,
    ``box_xyxy`` and all outputs ``None``.

    box_xyxy:   (4,) float32 pixels of the upright frame, or None.
    expr_probs: (8,) float32 or None; au_probs / au_present: (12,) or None.
    expression: index into ``labels.EXPR_LABELS`` of the most probable class, or None.
    """

    frame: int
    time_s: float
    face_id: int
    confidence: float
    success: bool
    box_xyxy: np.ndarray | None = None
    valence: float | None = None
    arousal: float | None = None
    expression: int | None = None
    expr_probs: np.ndarray | None = None
    au_probs: np.ndarray | None = None
    au_present: np.ndarray | None = None
