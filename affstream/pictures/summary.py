"""What a per-frame CSV says, summarised for pictures: per-face statistics and a
time-binned series for timelines.

Two streaming passes over the CSV (memory is flat in the video's length; it grows with
the number of faces and bins only): the first finds the time range and the faces, the
second accumulates. Every frame counts for its display duration (the gap to the next
frame's timestamp, see :func:`~.rows.with_durations`), so the numbers are shares of time
also on variable-frame-rate video.

Per face (:class:`FaceSummary`): face time, the share of it per top expression, the
time-weighted mean and standard deviation of valence and arousal, per AU the share of
face time it is present and its mean probability, and the key moments -- per expression,
the frame where it is the top class with its highest probability.

Timeline (:class:`BinnedSeries`): the time range cut into at most ``max_bins`` equal
bins; per face and bin the time-weighted mean of each output, NaN where the face is
absent (a gap, never an interpolated value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..labels import AU_LABELS, EXPR_LABELS
from .rows import iter_frame_rows, with_durations

DEFAULT_MAX_BINS = 1200
DEFAULT_SERIES_FACES = 12  # faces with a timeline (those seen longest); all get statistics
_N_EXPR, _N_AU = len(EXPR_LABELS), len(AU_LABELS)


@dataclass(frozen=True)
class KeyMoment:
    """The most intense moment of one expression for one face: the frame where it is the
    top class with its highest probability (``probability`` in [0, 1])."""

    track_id: int
    expression: int  # index into labels.EXPR_LABELS
    frame_index: int
    time_s: float
    probability: float


@dataclass
class FaceSummary:
    """One face (track) over the whole video; times in seconds.

    expr_share: (8,) float64 share of face time per top expression (sums to 1), or None
                without expression outputs; likewise below for missing outputs.
    au_rate:    (12,) share of face time each AU is present; au_mean (12,) its mean
                probability.
    """

    track_id: int
    frames: int = 0
    time_s: float = 0.0
    first_s: float = math.nan
    last_s: float = math.nan
    expr_share: np.ndarray | None = None
    valence_mean: float | None = None
    valence_sd: float | None = None
    arousal_mean: float | None = None
    arousal_sd: float | None = None
    au_rate: np.ndarray | None = None
    au_mean: np.ndarray | None = None
    key_moments: list[KeyMoment] = field(default_factory=list)

    @property
    def dominant(self) -> int | None:
        """Index of the expression with the largest share of face time, or None."""
        return None if self.expr_share is None else int(np.argmax(self.expr_share))


@dataclass(frozen=True)
class BinnedSeries:
    """The timeline: ``edges_s`` (n + 1,) float64 bin edges in seconds; per face (the
    order of ``track_ids``) and bin: ``coverage`` (F, n) share of the bin's frames' time
    with the face, ``valence`` / ``arousal`` (F, n), ``expr`` (F, n, 8), ``au`` (F, n, 12)
    float32 time-weighted means, NaN where the face is absent or the output missing."""

    edges_s: np.ndarray
    track_ids: tuple[int, ...]
    coverage: np.ndarray
    valence: np.ndarray
    arousal: np.ndarray
    expr: np.ndarray
    au: np.ndarray

    @property
    def centres_s(self) -> np.ndarray:
        return (self.edges_s[:-1] + self.edges_s[1:]) / 2


@dataclass
class CsvSummary:
    """The whole CSV: ``frames`` (rows of distinct frames), ``rows``, ``frames_with_faces``,
    ``start_s`` / ``end_s`` (first timestamp, last timestamp plus its duration),
    ``frame_s`` (mean frame duration), ``faces`` (by track id) and the ``series``."""

    path: Path
    frames: int
    rows: int
    frames_with_faces: int
    start_s: float
    end_s: float
    frame_s: float
    faces: list[FaceSummary]
    series: BinnedSeries

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def face(self, track_id: int) -> FaceSummary:
        return next(f for f in self.faces if f.track_id == track_id)


@dataclass
class _Range:
    frames: int = 0
    rows: int = 0
    with_faces: int = 0
    first_s: float = math.nan
    last_s: float = math.nan
    tracks: dict[int, int] = field(default_factory=dict)  # track id -> frames with it


def _scan(path: Path) -> _Range:
    scan = _Range()
    for frame in iter_frame_rows(path):
        scan.frames += 1
        scan.rows += max(1, len(frame.faces))
        scan.with_faces += bool(frame.faces)
        for face in frame.faces:
            scan.tracks[face.track_id] = scan.tracks.get(face.track_id, 0) + 1
        if math.isfinite(frame.time_s):
            if not math.isfinite(scan.first_s):
                scan.first_s = frame.time_s
            scan.last_s = frame.time_s
    return scan


class _FaceSums:
    """Time-weighted sums of one face: statistics and bins."""

    def __init__(self, track_id: int, bins: int) -> None:
        self.summary = FaceSummary(track_id)
        self.weights = np.zeros(3)  # seconds with valence/arousal, with expressions, with AUs
        self.va = np.zeros(4)  # sum w*v, w*v^2, w*a, w*a^2
        self.expr_time = np.zeros(_N_EXPR)
        self.au_time = np.zeros(_N_AU)
        self.au_prob = np.zeros(_N_AU)
        self.best = [None] * _N_EXPR  # per expression: (probability, frame, time)
        self.binned = bins > 0
        self.bin_w = np.zeros((bins, 4))  # seconds: face, va, expr, au
        self.bin_va = np.zeros((bins, 2))
        self.bin_expr = np.zeros((bins, _N_EXPR))
        self.bin_au = np.zeros((bins, _N_AU))

    def add(self, row, time_s: float, w: float, b: int | None) -> None:
        s = self.summary
        s.frames += 1
        s.time_s += w
        if math.isfinite(time_s):
            s.first_s = time_s if not math.isfinite(s.first_s) else s.first_s
            s.last_s = time_s
        if b is not None:
            self.bin_w[b, 0] += w
        if row.valence is not None and row.arousal is not None:
            v, a = float(row.valence), float(row.arousal)
            self.weights[0] += w
            self.va += w * np.array([v, v * v, a, a * a])
            if b is not None:
                self.bin_w[b, 1] += w
                self.bin_va[b] += w * np.array([v, a])
        if row.expr_probs is not None and row.expression is not None:
            self.weights[1] += w
            self.expr_time[row.expression] += w
            p = float(row.expr_probs[row.expression])
            best = self.best[row.expression]
            if best is None or p > best[0]:
                self.best[row.expression] = (p, row.frame_index, time_s)
            if b is not None:
                self.bin_w[b, 2] += w
                self.bin_expr[b] += w * row.expr_probs
        if row.au_present is not None:
            self.weights[2] += w
            self.au_time += w * row.au_present
            probs = row.au_probs if row.au_probs is not None else row.au_present.astype(np.float64)
            self.au_prob += w * probs
            if b is not None:
                self.bin_w[b, 3] += w
                self.bin_au[b] += w * probs

    def finish(self) -> FaceSummary:
        s = self.summary
        w_va, w_expr, w_au = self.weights
        if w_va > 0:
            s.valence_mean, s.valence_sd = _mean_sd(self.va[0], self.va[1], w_va)
            s.arousal_mean, s.arousal_sd = _mean_sd(self.va[2], self.va[3], w_va)
        if w_expr > 0:
            s.expr_share = self.expr_time / w_expr
            s.key_moments = [
                KeyMoment(s.track_id, e, frame, time_s, p)
                for e, found in enumerate(self.best)
                if found is not None
                for p, frame, time_s in [found]
            ]
        if w_au > 0:
            s.au_rate = self.au_time / w_au
            s.au_mean = self.au_prob / w_au
        return s

    def bins(self) -> tuple[np.ndarray, ...]:
        with np.errstate(invalid="ignore", divide="ignore"):
            frames_w = self.bin_w[:, :1]
            va = self.bin_va / self.bin_w[:, 1:2]
            expr = self.bin_expr / self.bin_w[:, 2:3]
            au = self.bin_au / self.bin_w[:, 3:4]
        return frames_w[:, 0], va, expr, au


def _mean_sd(sum_x: float, sum_xx: float, w: float) -> tuple[float, float]:
    mean = sum_x / w
    return float(mean), float(math.sqrt(max(0.0, sum_xx / w - mean * mean)))


def summarise_csv(path: str | Path, *, max_bins: int = DEFAULT_MAX_BINS, series_faces: int = DEFAULT_SERIES_FACES) -> CsvSummary:
    """Read the affstream CSV ``path`` twice and summarise it (see the module docstring).

    Every face gets a :class:`FaceSummary`; the ``series_faces`` faces present in the
    most frames (ties: the lower id) get a timeline, so a crowd or a tracker's many short
    tracks cannot blow up memory.

    Raises DataError (one line naming the file) for a CSV that is not affstream's or is
    damaged (:func:`~.rows.iter_frame_rows`).
    """
    path = Path(path)
    scan = _scan(path)
    first = scan.first_s if math.isfinite(scan.first_s) else 0.0
    last = scan.last_s if math.isfinite(scan.last_s) else first
    frame_s = (last - first) / (scan.frames - 1) if scan.frames > 1 and last > first else 1 / 25
    end = last + frame_s
    bins = max(1, min(int(max_bins), scan.frames))
    edges = np.linspace(first, end, bins + 1)
    width = (end - first) / bins
    longest = sorted(scan.tracks, key=lambda t: (-scan.tracks[t], t))[: max(0, int(series_faces))]
    sums = {track: _FaceSums(track, bins if track in longest else 0) for track in sorted(scan.tracks)}
    frame_time = np.zeros(bins)  # seconds of all frames per bin
    for frame, duration in with_durations(iter_frame_rows(path), frame_s):
        b = None
        if math.isfinite(frame.time_s):
            # a thousandth of a bin of slack: frame times on bin edges (bins == frames) stay in their bin
            b = min(bins - 1, max(0, int((frame.time_s - first) / width + 1e-3)))
            frame_time[b] += duration
        for row in frame.faces:
            face = sums[row.track_id]
            face.add(row, frame.time_s, duration, b if face.binned else None)
    faces = [s.finish() for s in sums.values()]
    series = _series(edges, sums, frame_time)
    return CsvSummary(path, scan.frames, scan.rows, scan.with_faces, first, end, frame_s, faces, series)


def _series(edges: np.ndarray, sums: dict[int, _FaceSums], frame_time: np.ndarray) -> BinnedSeries:
    n = len(edges) - 1
    binned = [face for face in sums.values() if face.binned]
    tracks = tuple(face.summary.track_id for face in binned)
    coverage = np.zeros((len(tracks), n), dtype=np.float32)
    valence = np.full((len(tracks), n), np.nan, dtype=np.float32)
    arousal = np.full_like(valence, np.nan)
    expr = np.full((len(tracks), n, _N_EXPR), np.nan, dtype=np.float32)
    au = np.full((len(tracks), n, _N_AU), np.nan, dtype=np.float32)
    for k, face in enumerate(binned):
        face_w, va, e, a = face.bins()
        with np.errstate(invalid="ignore", divide="ignore"):
            coverage[k] = np.where(frame_time > 0, face_w / frame_time, 0.0)
        valence[k], arousal[k] = va[:, 0], va[:, 1]
        expr[k], au[k] = e, a
    return BinnedSeries(edges, tracks, coverage, valence, arousal, expr, au)
