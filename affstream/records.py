"""Typed records passed between pipeline stages, and the records of a whole run.

The data flow is ``decode -> detect -> track -> align -> embed -> [window] -> head -> write``;
each arrow carries one of the records below:

    source    VideoInfo (metadata), Frame (one decoded picture), DecodeStats (error tally)
    detect    Detection; track: TrackedFace, FrameFaces (all faces of one frame)
    embed     FaceChunk (consecutive frames, their faces and one feature row per face)
    window    ReadyWindow (one track's window for a temporal head)
    head      Prediction; rows: FrameAnnotation (one output row)
    run       RunCounts, RunReport (the JSON report), InputResult (one input of many)

Records are small dataclasses, frozen where nothing updates them; array fields
document their shape, dtype and unit.

Names. Inside the library a frame is always ``frame_index`` (**1-based** decode index:
frame 1 is the first decoded frame, as OpenFace and Aff-Wild2 count) and a face identity
is always ``track_id`` (0-based; -1 on the row of a frame without a face). The CSV keeps
the OpenFace column names ``frame`` and ``face_id`` for the same two values. Times are
seconds from the stream's presentation timestamps (PTS), never index / fps.

This module must stay importable without torch: tensor-typed fields are annotated
with ``Any`` and documented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .labels import EXPR_LABELS


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a source, read before decoding.

    ``width`` / ``height`` are the *upright* display size in pixels, i.e. after the
    container's rotation has been applied. ``frame_count`` and ``duration_s`` are the
    container's declared values (``None`` when it does not say); the decoded count is
    reported separately in :class:`DecodeStats`. ``stream_index`` is the video stream that
    was read, as an index among the file's ``video_streams`` video streams (ffprobe's
    ``v:N``; cover pictures count).
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
    stream_index: int = 0  # the video stream read, 0-based among the file's video streams
    video_streams: int = 1  # how many video streams the file has

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
            "stream_index": self.stream_index,
            "video_streams": self.video_streams,
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

    frame_index: 1-based decode index.
    time_s: presentation time in seconds (PTS * time_base); for a frame without PTS the
            decoder extrapolates from the previous frame and says so in its stats.
    image:  (H, W, 3) uint8 RGB, C-contiguous, already rotated upright.
    """

    frame_index: int
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

    frame_index: int
    time_s: float
    faces: tuple[TrackedFace, ...]


@dataclass(frozen=True, eq=False)
class FaceChunk:
    """Consecutive frames, their tracked faces and the faces' features.

    frames:   the frames in decode order, each with its tracked faces (maybe none).
    features: torch.Tensor (N, D) float32 on the pipeline device, L2-normalised; row i
              belongs to ``frames[owner[i]]``, faces in the order of ``FrameFaces.faces``.
    owner:    (N,) int64 index into ``frames``.
    """

    frames: tuple[FrameFaces, ...]
    features: Any
    owner: np.ndarray

    def per_frame_features(self) -> list[np.ndarray]:
        """Host copy split per frame: a list of (n_faces_k, D) float32 arrays."""
        host = self.features.float().cpu().numpy()
        counts = [len(f.faces) for f in self.frames]
        return np.split(host, np.cumsum(counts)[:-1]) if counts else []


@dataclass(frozen=True, eq=False)
class ReadyWindow:
    """One window of one track, ready for a temporal head.

    track_id:    the track the window belongs to.
    start:       position of its first frame in the track's sequence (0-based).
    frame_index: (w_valid,) int64, 1-based video frame of each position.
    features:    (w_valid, D) float32; the caller pads to w with mask False.
    """

    track_id: int
    start: int
    frame_index: np.ndarray
    features: np.ndarray

    @property
    def valid_length(self) -> int:
        return int(self.frame_index.shape[0])


@dataclass(frozen=True, eq=False)
class Prediction:
    """Head outputs for N faces (rows align with the features of a FaceChunk).

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

    For a frame with no face: ``track_id == -1``, ``success`` False, ``confidence`` 0,
    ``box_xyxy`` and all outputs ``None``. Written as the CSV columns ``frame``
    (``frame_index``) and ``face_id`` (``track_id``).

    box_xyxy:   (4,) float32 pixels of the upright frame, or None.
    expr_probs: (8,) float32 or None; au_probs / au_present: (12,) or None.
    expression: index into ``labels.EXPR_LABELS`` of the most probable class, or None;
                :attr:`expression_label` is its name, as the CSV writes it (``Fear``).
    """

    frame_index: int
    time_s: float
    track_id: int
    confidence: float
    success: bool
    box_xyxy: np.ndarray | None = None
    valence: float | None = None
    arousal: float | None = None
    expression: int | None = None
    expr_probs: np.ndarray | None = None
    au_probs: np.ndarray | None = None
    au_present: np.ndarray | None = None

    @property
    def expression_label(self) -> str | None:
        """The expression's name (``labels.EXPR_LABELS[expression]``), or None.

        Raises ValueError for an index outside the 8 classes."""
        if self.expression is None:
            return None
        index = int(self.expression)
        if not 0 <= index < len(EXPR_LABELS):
            raise ValueError(f"FrameAnnotation.expression must be in [0, {len(EXPR_LABELS)}), got {index}")
        return EXPR_LABELS[index]


STATUS_OK = "ok"  # a live frame analysed (with or without a face)
STATUS_DROPPED = "dropped"  # a live frame replaced by a newer one while the models were busy


@dataclass(frozen=True, eq=False)
class LiveRow:
    """One row of a live session: the annotation plus when its frame arrived.

    row:        the FrameAnnotation (a dropped frame: ``track_id`` -1, ``success`` False).
    arrival_s:  seconds of the session clock when the frame came off the decoder.
    latency_ms: milliseconds from the frame's arrival to this row being handed out.
    status:     :data:`STATUS_OK` or :data:`STATUS_DROPPED`.
    """

    row: FrameAnnotation
    arrival_s: float
    latency_ms: float
    status: str


# ------------------------------------------------------------------------ run records


@dataclass
class RunCounts:
    """What one annotation run produced (mutable: filled in while rows flow).

    frames_written counts frames with at least one row (every frame gets one);
    rows counts CSV rows; tracks the distinct track ids with a face row.
    """

    frames_decoded: int = 0
    frames_written: int = 0
    rows: int = 0
    frames_with_faces: int = 0
    tracks: int = 0
    decode_errors: int = 0
    frames_without_pts: int = 0
    decode_error_messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames_decoded": self.frames_decoded,
            "frames_written": self.frames_written,
            "rows": self.rows,
            "frames_with_faces": self.frames_with_faces,
            "tracks": self.tracks,
            "decode_errors": self.decode_errors,
            "frames_without_pts": self.frames_without_pts,
            "decode_error_messages": list(self.decode_error_messages),
        }


@dataclass(frozen=True)
class RunReport:
    """The per-video JSON report (``OUT/<stem>.json``); :meth:`to_dict` is its JSON form.

    meaningful: False when any model producing the outputs has random weights; then
                ``warning`` says so. config / backbone / head: plain JSON-ready dicts
                (the effective configuration, the models' identities). timings:
                ``wall_s``, ``frames_per_s`` and seconds/calls per stage.
    fingerprints: set by ``affstream corpus`` only (``{"input": {...}, "config": sha256}``,
                see :mod:`affstream.corpus.state`); written only when set.
    """

    affstream_version: str
    meaningful: bool
    warning: str | None
    source: VideoInfo
    outputs: dict[str, Any]
    config: dict[str, Any]
    device: str
    backbone: dict[str, Any]
    head: dict[str, Any]
    counts: RunCounts
    wall_s: float
    frames_per_s: float
    stage_times: dict[str, dict[str, float]]
    fingerprints: dict[str, Any] | None = None  # corpus runs: {"input": ..., "config": ...}

    def to_dict(self) -> dict[str, Any]:
        data = {
            "affstream_version": self.affstream_version,
            "meaningful": self.meaningful,
            "warning": self.warning,
            "source": self.source.to_dict(),
            "outputs": dict(self.outputs),
            "config": self.config,
            "device": self.device,
            "backbone": self.backbone,
            "head": self.head,
            "counts": self.counts.to_dict(),
            "timings": {
                "wall_s": round(self.wall_s, 6),
                "frames_per_s": round(self.frames_per_s, 3),
                "stages": self.stage_times,
            },
        }
        if self.fingerprints is not None:  # only corpus runs set it: other reports stay as they were
            data["fingerprints"] = dict(self.fingerprints)
        return data


INPUT_DONE = "done"
INPUT_FAILED = "failed"


@dataclass(frozen=True)
class InputResult:
    """The outcome of one input of a many-input run (``annotate a.mp4 b.mp4 ...``).

    status:  ``"done"`` (outputs written) or ``"failed"`` (``error`` says why, in one
             line naming the input; nothing was published under the output names).
    outputs: {"csv": path, "json": path} of the published files (empty when failed).
    report:  the run's report when done, else None.
    seconds: wall-clock time spent on this input.
    """

    path: str
    status: str
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    report: RunReport | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == INPUT_DONE

    @property
    def csv_path(self) -> Path | None:
        return Path(self.outputs["csv"]) if "csv" in self.outputs else None

    @property
    def json_path(self) -> Path | None:
        return Path(self.outputs["json"]) if "json" in self.outputs else None
