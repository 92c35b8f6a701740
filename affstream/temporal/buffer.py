"""Streaming windows: per-track buffers that emit windows as frames arrive, and a
stitcher that turns window outputs back into final per-frame outputs.

Both follow the rule of :mod:`affstream.temporal.windows` exactly: a track pushed
frame by frame yields the windows of ``plan_windows(n, w, s)`` (same starts, same
frames), and stitching their outputs gives the same values as ``stitch_windows``,
bit for bit. Memory is O(w) frames per live track.

When things become known:

- A regular window ``(k*s, w)`` is ready the moment its last frame is pushed.
- The end-aligned window, or the single short one, is ready only when the track
  ends (:meth:`TrackWindowBuffer.finish`), because only then is ``n`` known.
- Once a window starting at ``L`` has been stitched in, every position ``<= L`` is
  final: any later window starts after ``L``. An end-aligned or short window is
  recognised as the track's last (its start is not a multiple of ``s``, or it is
  shorter than ``w``), so its arrival finalises everything. So for w=300, s=200 at
  most ``w - 1`` frames per track wait for :meth:`WindowStitcher.finish`.

Windows of one track must reach the stitcher in the order the buffer emitted them
(windows of different tracks may interleave freely).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..records import ReadyWindow
from .windows import (
    DEFAULT_WINDOW_LENGTH,
    DEFAULT_WINDOW_STRIDE,
    accumulate_span,
    check_window_params,
    window_weights,
)


def stack_windows(windows: list[ReadyWindow], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch windows for the head: features (B, length, D) float32, zero-padded, and
    mask (B, length) bool, True on real frames."""
    if not windows:
        raise ValueError("stack_windows needs at least one window")
    dim = windows[0].features.shape[1]
    batch = np.zeros((len(windows), length, dim), dtype=np.float32)
    mask = np.zeros((len(windows), length), dtype=bool)
    for b, window in enumerate(windows):
        valid = window.valid_length
        if valid > length or window.features.shape[1] != dim:
            raise ValueError(f"window of track {window.track_id} at {window.start} does not fit ({length}, {dim})")
        batch[b, :valid] = window.features
        mask[b, :valid] = True
    return batch, mask


@dataclass
class _TrackFrames:
    """The last w frames of one track, and where its next regular window starts."""

    recent: deque
    count: int = 0
    next_start: int = 0
    last_index: int = -1
    dim: int = -1
    last_emitted: int = -1


class TrackWindowBuffer:
    """Collects per-track features and emits windows as soon as they are complete.

    Holds at most ``length`` frames per live track. A track id pushed again after
    :meth:`finish` starts a new sequence.
    """

    def __init__(self, length: int = DEFAULT_WINDOW_LENGTH, stride: int = DEFAULT_WINDOW_STRIDE) -> None:
        check_window_params(length, stride)
        self.length = int(length)
        self.stride = int(stride)
        self._tracks: dict[int, _TrackFrames] = {}

    def push(self, track_id: int, frame_index: int, feature: np.ndarray) -> list[ReadyWindow]:
        """Add one frame of a track; returns the windows this frame completed (0 or 1).

        frame_index: 1-based video frame, strictly increasing within a track.
        feature:     (D,) float features; D must stay the same within a track.
        """
        feature = np.asarray(feature, dtype=np.float32)
        if feature.ndim != 1:
            raise ValueError(f"track {track_id}: feature must be (D,), got {feature.shape}")
        state = self._tracks.get(track_id)
        if state is None:
            state = _TrackFrames(recent=deque(maxlen=self.length), dim=feature.shape[0])
            self._tracks[track_id] = state
        if feature.shape[0] != state.dim:
            raise ValueError(f"track {track_id}: feature width {feature.shape[0]} != {state.dim}")
        if frame_index <= state.last_index:
            raise ValueError(f"track {track_id}: frame {frame_index} after frame {state.last_index}")
        state.recent.append((int(frame_index), feature.copy()))
        state.count += 1
        state.last_index = int(frame_index)
        if state.count == state.next_start + self.length:
            window = self._window(track_id, state, state.next_start, self.length)
            state.next_start += self.stride
            return [window]
        return []

    def finish(self, track_id: int) -> list[ReadyWindow]:
        """End a track; returns its remaining window (the end-aligned or the short
        one), if any, and forgets the track. An unknown track gives []."""
        state = self._tracks.pop(track_id, None)
        if state is None:
            return []
        n = state.count
        if n < self.length:
            return [self._window(track_id, state, 0, n)]
        if state.last_emitted + self.length < n:
            return [self._window(track_id, state, n - self.length, self.length)]
        return []

    def finish_all(self) -> list[ReadyWindow]:
        """End every live track (in increasing track id); returns their last windows."""
        out: list[ReadyWindow] = []
        for track_id in sorted(self._tracks):
            out.extend(self.finish(track_id))
        return out

    def live_tracks(self) -> list[int]:
        """Ids of tracks pushed and not yet finished, increasing."""
        return sorted(self._tracks)

    def buffered_frames(self, track_id: int) -> int:
        """Frames held for a track (never more than ``length``)."""
        state = self._tracks.get(track_id)
        return 0 if state is None else len(state.recent)

    def _window(self, track_id: int, state: _TrackFrames, start: int, valid: int) -> ReadyWindow:
        # The deque always ends at position count - 1; the window is its tail.
        frames = list(state.recent)[len(state.recent) - (state.count - start) :][:valid]
        state.last_emitted = start
        return ReadyWindow(
            track_id=int(track_id),
            start=int(start),
            frame_index=np.array([f for f, _ in frames], dtype=np.int64),
            features=np.stack([x for _, x in frames]).astype(np.float32, copy=False),
        )


@dataclass
class _TrackOutputs:
    """Windows of one track still covering frames that are not final yet."""

    windows: list = field(default_factory=list)  # (start, outputs float64, frame_index)
    final_upto: int = 0  # positions < final_upto have been emitted
    last_start: int = -1
    end: int = 0  # one past the last position covered so far
    channels: int = -1
    closed: bool = False  # the track's last window has arrived


class WindowStitcher:
    """Merges window outputs into final per-frame outputs as early as possible.

    Emits ``(track_id, frame_index, stitched)`` with ``stitched`` (C,) float64,
    in frame order per track. Values equal ``stitch_windows`` on the whole track.
    """

    def __init__(self, length: int = DEFAULT_WINDOW_LENGTH, stride: int = DEFAULT_WINDOW_STRIDE) -> None:
        check_window_params(length, stride)
        self.length = int(length)
        self.stride = int(stride)
        self._weights = window_weights(self.length)
        self._tracks: dict[int, _TrackOutputs] = {}

    def add(self, window: ReadyWindow, outputs: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """Stitch in one window's outputs, (w_valid, C) raw scores (padding cut off);
        returns the frames this made final."""
        outputs = np.asarray(outputs)
        valid = window.valid_length
        if outputs.ndim != 2 or outputs.shape[0] != valid:
            raise ValueError(f"track {window.track_id}: outputs must be ({valid}, C), got {outputs.shape}")
        state = self._tracks.setdefault(window.track_id, _TrackOutputs())
        self._check_order(window, state, outputs.shape[1])
        state.windows.append((window.start, outputs.astype(np.float64), window.frame_index))
        state.last_start = window.start
        state.end = window.start + valid
        state.channels = outputs.shape[1]
        state.closed = valid < self.length or window.start % self.stride != 0
        stop = state.end if state.closed else window.start + 1
        return self._emit(window.track_id, state, stop)

    def finish(self, track_id: int) -> list[tuple[int, int, np.ndarray]]:
        """The track has no more windows: emit all its pending frames and forget it."""
        state = self._tracks.pop(track_id, None)
        if state is None:
            return []
        return self._emit(track_id, state, state.end)

    def finish_all(self) -> list[tuple[int, int, np.ndarray]]:
        """Finish every track (in increasing track id)."""
        out: list[tuple[int, int, np.ndarray]] = []
        for track_id in sorted(self._tracks):
            out.extend(self.finish(track_id))
        return out

    def pending_frames(self, track_id: int) -> int:
        """How many stitched-in frames of a track are waiting to become final."""
        state = self._tracks.get(track_id)
        return 0 if state is None else state.end - state.final_upto

    def _check_order(self, window: ReadyWindow, state: _TrackOutputs, channels: int) -> None:
        tid = window.track_id
        if state.closed:
            raise ValueError(f"track {tid}: window at {window.start} after the track's last window")
        if state.last_start < 0 and window.start != 0:
            raise ValueError(f"track {tid}: first window must start at 0, got {window.start}")
        if state.last_start >= 0 and not state.last_start < window.start <= state.end:
            raise ValueError(f"track {tid}: window at {window.start} out of order (previous at {state.last_start})")
        if state.channels >= 0 and channels != state.channels:
            raise ValueError(f"track {tid}: {channels} output channels, earlier windows had {state.channels}")

    def _emit(self, track_id: int, state: _TrackOutputs, stop: int) -> list[tuple[int, int, np.ndarray]]:
        first = state.final_upto
        if stop <= first:
            return []
        spans = [(start, out) for start, out, _ in state.windows]
        stitched = accumulate_span(first, stop, spans, self._weights, state.channels)
        index = np.empty(stop - first, dtype=np.int64)
        for start, _, frame_index in state.windows:
            lo, hi = max(first, start), min(stop, start + frame_index.shape[0])
            if lo < hi:
                index[lo - first : hi - first] = frame_index[lo - start : hi - start]
        state.final_upto = stop
        state.windows = [w for w in state.windows if w[0] + w[1].shape[0] > stop]
        return [(int(track_id), int(index[i]), stitched[i]) for i in range(stop - first)]
