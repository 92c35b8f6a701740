"""The head steps, shared by every schedule: face features -> head outputs -> rows.

Three predictors share the row-making code (:func:`empty_row`, :func:`face_row`):

* :class:`FramePredictor` for per-frame heads (zero-shot text, MLP): a chunk's rows are
  ready as soon as its features are.
* :class:`WindowPredictor` for temporal heads: each track's features go through a
  :class:`~affstream.temporal.buffer.TrackWindowBuffer`; complete windows from all
  tracks are batched as ``(B, w, D)`` for the head, and the overlapping outputs are
  merged by :class:`~affstream.temporal.buffer.WindowStitcher` (rule documented in
  :mod:`affstream.temporal.windows`). A frame's rows are emitted once every face in
  it has its stitched output, so memory stays bounded by about one window per track.
* :class:`CausalPredictor` for temporal heads trained causally: one window per face per
  frame, ending at that frame, so outputs are causal and identical offline and live.

Both yield exactly one :class:`~affstream.records.FrameAnnotation` per face per frame, and one row with
``track_id == -1`` for a frame without faces.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from ..heads.base import AffectHead, HeadOutputs, to_prediction
from ..labels import TASK_WIDTHS, TASKS
from ..records import FaceChunk, FrameAnnotation, FrameFaces, Prediction, ReadyWindow, TrackedFace
from ..runtime import StageTimes
from ..temporal.buffer import TrackWindowBuffer, WindowStitcher, stack_windows


def empty_row(frame: FrameFaces) -> FrameAnnotation:
    """The row written for a frame in which no face was found."""
    return FrameAnnotation(frame_index=frame.frame_index, time_s=frame.time_s, track_id=-1, confidence=0.0, success=False)


def face_row(frame: FrameFaces, face: TrackedFace, pred: Prediction, i: int, thresholds: np.ndarray) -> FrameAnnotation:
    """The row for face ``face`` of ``frame`` from row ``i`` of ``pred``."""
    expr = pred.expr_probs[i] if pred.expr_probs is not None else None
    au = pred.au_probs[i] if pred.au_probs is not None else None
    return FrameAnnotation(
        frame_index=frame.frame_index,
        time_s=frame.time_s,
        track_id=face.track_id,
        confidence=float(face.detection.score),
        success=True,
        box_xyxy=face.detection.box_xyxy,
        valence=None if pred.valence is None else float(pred.valence[i]),
        arousal=None if pred.arousal is None else float(pred.arousal[i]),
        expression=None if expr is None else int(np.argmax(expr)),
        expr_probs=expr,
        au_probs=au,
        au_present=None if au is None else au >= thresholds,
    )


def pack_outputs(outputs: HeadOutputs, tasks: tuple[str, ...]) -> torch.Tensor:
    """Concatenate raw scores (..., C) in ``labels.TASKS`` order (present tasks only)."""
    parts = {"va": outputs.va, "expr": outputs.expr_logits, "au": outputs.au_logits}
    return torch.cat([parts[t].float() for t in TASKS if t in tasks], dim=-1)


def unpack_scores(scores: np.ndarray, tasks: tuple[str, ...]) -> Prediction:
    """Inverse of :func:`pack_outputs` on the host, as probabilities: (N, C) -> Prediction."""
    parts: dict[str, torch.Tensor] = {}
    col = 0
    for task in TASKS:
        if task in tasks:
            parts[task] = torch.from_numpy(np.ascontiguousarray(scores[:, col : col + TASK_WIDTHS[task]]))
            col += TASK_WIDTHS[task]
    return to_prediction(HeadOutputs(va=parts.get("va"), expr_logits=parts.get("expr"), au_logits=parts.get("au")))


class FramePredictor:
    """Per-frame head scheduler."""

    def __init__(self, head: AffectHead, times: StageTimes) -> None:
        self.head = head
        self.times = times
        self.thresholds = np.asarray(head.card.au_thresholds, dtype=np.float32)

    def feed(self, chunk: FaceChunk) -> Iterator[FrameAnnotation]:
        pred = Prediction()
        if len(chunk.owner):
            with self.times.time("head"), torch.inference_mode():
                pred = to_prediction(self.head(chunk.features.float()))
        i = 0
        for frame in chunk.frames:
            if not frame.faces:
                yield empty_row(frame)
            for face in frame.faces:
                yield face_row(frame, face, pred, i, self.thresholds)
                i += 1

    def close(self) -> Iterator[FrameAnnotation]:
        return iter(())


class WindowPredictor:
    """Temporal (windowed) head scheduler; see the module docstring."""

    def __init__(self, head: AffectHead, times: StageTimes, max_missed_frames: int, window_batch: int) -> None:
        card = head.card
        self.head = head
        self.times = times
        self.tasks = tuple(card.tasks)
        self.length = int(card.window_length)
        self.thresholds = np.asarray(card.au_thresholds, dtype=np.float32)
        self.buffer = TrackWindowBuffer(card.window_length, card.window_stride)
        self.stitcher = WindowStitcher(card.window_length, card.window_stride)
        self.max_missed = max_missed_frames
        self.window_batch = window_batch
        self.last_seen: dict[int, int] = {}
        self.pending: deque[FrameFaces] = deque()
        self.scores: dict[tuple[int, int], np.ndarray] = {}
        self.device = next(iter(head.parameters()), torch.empty(0)).device

    def feed(self, chunk: FaceChunk) -> Iterator[FrameAnnotation]:
        host = chunk.features.float().cpu().numpy()
        ready = []
        i = 0
        for frame in chunk.frames:
            for face in frame.faces:
                ready += self.buffer.push(face.track_id, frame.frame_index, host[i])
                self.last_seen[face.track_id] = frame.frame_index
                i += 1
        self.pending.extend(chunk.frames)
        self._stitch(ready)
        if chunk.frames:
            self._retire_lost(chunk.frames[-1].frame_index)
        yield from self._emit_ready()

    def close(self) -> Iterator[FrameAnnotation]:
        self._stitch(self.buffer.finish_all())
        self._store(self.stitcher.finish_all())
        self.last_seen.clear()
        yield from self._emit_ready()
        if self.pending:  # every face must have been stitched by now
            raise RuntimeError(f"{len(self.pending)} frame(s) left without temporal output")

    def _retire_lost(self, current: int) -> None:
        lost = [t for t, last in self.last_seen.items() if current - last > self.max_missed]
        for track_id in lost:
            self._stitch(self.buffer.finish(track_id))
            self._store(self.stitcher.finish(track_id))
            del self.last_seen[track_id]

    def _stitch(self, windows: list[ReadyWindow]) -> None:
        for start in range(0, len(windows), self.window_batch):
            batch = windows[start : start + self.window_batch]
            scores = self._run_head(batch)
            for window, window_scores in zip(batch, scores, strict=True):
                self._store(self.stitcher.add(window, window_scores[: len(window.frame_index)]))

    def _run_head(self, windows: list[ReadyWindow]) -> np.ndarray:
        """(B, w, C) packed raw scores of a batch of windows."""
        feats, mask = stack_windows(windows, self.length)
        with self.times.time("head"), torch.inference_mode():
            out = self.head(torch.from_numpy(feats).to(self.device), torch.from_numpy(mask).to(self.device))
            return pack_outputs(out, self.tasks).cpu().numpy()

    def _store(self, finals: list) -> None:
        for track_id, frame_index, scores in finals:
            self.scores[(int(frame_index), int(track_id))] = scores

    def _emit_ready(self) -> Iterator[FrameAnnotation]:
        while self.pending:
            frame = self.pending[0]
            keys = [(frame.frame_index, face.track_id) for face in frame.faces]
            if any(k not in self.scores for k in keys):
                return
            self.pending.popleft()
            if not frame.faces:
                yield empty_row(frame)
                continue
            pred = unpack_scores(np.stack([self.scores.pop(k) for k in keys]), self.tasks)
            for i, face in enumerate(frame.faces):
                yield face_row(frame, face, pred, i, self.thresholds)


class CausalPredictor:
    """A causal temporal head, frame by frame: per track a ring buffer of its last ``w``
    feature vectors; the output at frame t is the head's last position on the buffer
    ending at t, so it depends only on frames <= t (and always has the most context
    the head was trained with). Used live and offline alike, so a causal head gives the
    same values in ``annotate`` and ``stream``. Windows of one chunk are batched,
    ``window_batch`` per head call. A track unseen for more than ``max_missed_frames``
    frames is forgotten (as the offline schedule closes it).

    Cost: one window per face per frame (the stitched offline rule needs one per
    ``stride`` frames), which is what exact causality costs.
    """

    def __init__(self, head: AffectHead, times: StageTimes, max_missed_frames: int, window_batch: int = 32) -> None:
        card = head.card
        self.head, self.times = head, times
        self.tasks = tuple(card.tasks)
        self.length = int(card.window_length)
        self.thresholds = np.asarray(card.au_thresholds, dtype=np.float32)
        self.max_missed = int(max_missed_frames)
        self.window_batch = int(window_batch)
        self.buffers: dict[int, deque] = {}
        self.last_seen: dict[int, int] = {}
        self.device = next(iter(head.parameters()), torch.empty(0)).device

    def feed(self, chunk: FaceChunk) -> Iterator[FrameAnnotation]:
        host = chunk.features.float().cpu().numpy()
        windows: list[np.ndarray] = []
        i = 0
        for frame in chunk.frames:
            self._forget(frame.frame_index)
            for face in frame.faces:
                ring = self.buffers.setdefault(face.track_id, deque(maxlen=self.length))
                ring.append(host[i])
                self.last_seen[face.track_id] = frame.frame_index
                windows.append(np.stack(ring))
                i += 1
        parts = [self._run(windows[k : k + self.window_batch]) for k in range(0, len(windows), self.window_batch)]
        scores = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
        i = 0
        for frame in chunk.frames:
            if not frame.faces:
                yield empty_row(frame)
                continue
            pred = unpack_scores(scores[i : i + len(frame.faces)], self.tasks)
            for k, face in enumerate(frame.faces):
                yield face_row(frame, face, pred, k, self.thresholds)
            i += len(frame.faces)

    def _run(self, windows: list[np.ndarray]) -> np.ndarray:
        """Packed raw scores (B, C) at the last frame of each window (T_i, D), one head call."""
        longest = max(len(w) for w in windows)
        feats = np.zeros((len(windows), longest, windows[0].shape[1]), dtype=np.float32)
        mask = np.zeros((len(windows), longest), dtype=bool)
        for b, window in enumerate(windows):
            feats[b, : len(window)] = window
            mask[b, : len(window)] = True
        with self.times.time("head"), torch.inference_mode():
            out = self.head(torch.from_numpy(feats).to(self.device), torch.from_numpy(mask).to(self.device))
            scores = pack_outputs(out, self.tasks).cpu().numpy()
        last = np.asarray([len(w) - 1 for w in windows])
        return scores[np.arange(len(windows)), last]

    def _forget(self, current: int) -> None:
        for track_id in [t for t, last in self.last_seen.items() if current - last > self.max_missed]:
            del self.last_seen[track_id], self.buffers[track_id]

    def close(self) -> Iterator[FrameAnnotation]:
        return iter(())


def make_predictor(head: AffectHead, times: StageTimes, max_missed_frames: int,
                   window_batch: int) -> FramePredictor | WindowPredictor | CausalPredictor:
    """The predictor matching the head's card: per-frame; windowed and causal (one
    window ending at each frame, :class:`CausalPredictor`); windowed (stitched windows).

    max_missed_frames: frames after which a track's windows are closed (the tracker's
    own retirement rule); window_batch: windows per head call.
    """
    if head.card.windowed and head.card.causal:
        return CausalPredictor(head, times, max_missed_frames, window_batch)
    if head.card.windowed:
        return WindowPredictor(head, times, max_missed_frames, window_batch)
    return FramePredictor(head, times)
