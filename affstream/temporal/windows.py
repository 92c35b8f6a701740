"""Window planning and stitching for temporal heads (offline form).

The rule
--------
A temporal head sees one track at a time, through windows over that track's own
sequence: the frames where the track has a face, in order (position 0 is the
track's first face; a gap in the video is not a gap in the sequence). With window
length ``w`` (default 300) and stride ``s`` (default 200, ``0 < s <= w``) and a
sequence of ``n`` frames:

1. Regular windows start at positions ``0, s, 2s, ...`` for as long as
   ``start + w <= n``; each is full length.
2. If the last regular window ends before ``n``, one more window is aligned to the
   end: it starts at ``n - w``, is full length and overlaps its predecessor by more
   than ``w - s`` frames. Its start is never a multiple of ``s``.
3. If ``n < w`` there is a single short window ``(0, n)``; the caller pads it to
   ``w`` frames with mask ``False`` on the padding. ``n == 0`` gives no window.

Every frame is covered by at least one window and at most ``ceil(w / s) + 1``.

Stitching: a frame's output is the weighted mean of the outputs of the windows
covering it, with the weight of position ``i`` in a window given by
:func:`window_weights` (a raised-cosine bump with a floor: frames near a window's
centre have seen context on both sides, so their outputs are trusted more). The
weights of a frame are normalised to sum to one, so a frame covered by one window
gets exactly that window's output.

What is stitched: the head's **raw scores** (VA values, expression logits, AU
logits), never probabilities. A weighted mean of logits is a weighted geometric mean
of the windows' distributions (renormalised), which keeps a confident window
confident; probabilities are formed once, after stitching, by
:func:`affstream.heads.base.to_prediction`; and VA values in ``[-1, 1]`` stay in range
under a convex combination.

:mod:`affstream.temporal.buffer` gives the same windows and the same stitched
values (bit for bit) while frames stream in.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

DEFAULT_WINDOW_LENGTH = 300
DEFAULT_WINDOW_STRIDE = 200
# Weight of a window's edge frames relative to its centre frame.
EDGE_WEIGHT_FLOOR = 0.1


def check_window_params(length: int, stride: int) -> None:
    """Raise :class:`ConfigError` unless ``length >= 1`` and ``0 < stride <= length``."""
    if int(length) != length or int(stride) != stride:
        raise ConfigError(f"window length {length} / stride {stride}: give whole numbers of frames")
    if length < 1:
        raise ConfigError(f"window length {length}: must be at least 1 frame")
    if not 0 < stride <= length:
        raise ConfigError(
            f"window stride {stride}: must satisfy 0 < stride <= length ({length}) so windows cover every frame"
        )


def plan_windows(
    n: int, length: int = DEFAULT_WINDOW_LENGTH, stride: int = DEFAULT_WINDOW_STRIDE
) -> list[tuple[int, int]]:
    """Windows over a sequence of ``n`` frames, as ``(start, valid_length)`` pairs.

    Positions are 0-based over the track's sequence. ``valid_length`` equals
    ``length`` except for the single short window of a sequence with ``n < length``.
    Starts are strictly increasing. See the module docstring for the rule.
    """
    check_window_params(length, stride)
    if n < 0:
        raise ValueError(f"sequence length must be >= 0, got {n}")
    if n == 0:
        return []
    if n < length:
        return [(0, n)]
    plan = [(start, length) for start in range(0, n - length + 1, stride)]
    last_start = plan[-1][0]
    if last_start + length < n:
        plan.append((n - length, length))
    return plan


def window_weights(length: int) -> np.ndarray:
    """Stitching weight of each position in a window: ``(length,)`` float64.

    ``weight[i] = f + (1 - f) * sin(pi * (i + 0.5) / length) ** 2`` with floor
    ``f = EDGE_WEIGHT_FLOOR``: symmetric, largest (about 1) at the centre, never
    below ``f`` (> 0) at the edges. Values lie in ``[f, 1]``.
    """
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    pos = (np.arange(length, dtype=np.float64) + 0.5) / length
    return EDGE_WEIGHT_FLOOR + (1.0 - EDGE_WEIGHT_FLOOR) * np.sin(np.pi * pos) ** 2


def gather_windows(
    sequence: np.ndarray, plan: list[tuple[int, int]], length: int, pad_value: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a sequence into padded windows following ``plan``.

    sequence: (n, ...) any dtype (features (n, D), labels (n,), ...).
    Returns ``windows`` (K, length, ...) of the same dtype, padded with ``pad_value``,
    and ``mask`` (K, length) bool, True on real frames.
    """
    windows = np.full((len(plan), length) + sequence.shape[1:], pad_value, dtype=sequence.dtype)
    mask = np.zeros((len(plan), length), dtype=bool)
    for k, (start, valid) in enumerate(plan):
        if valid > length or start + valid > sequence.shape[0]:
            raise ValueError(f"window {k} ({start}, {valid}) does not fit length {length} / sequence")
        windows[k, :valid] = sequence[start : start + valid]
        mask[k, :valid] = True
    return windows, mask


def accumulate_span(
    first: int,
    stop: int,
    windows: list[tuple[int, np.ndarray]],
    weights: np.ndarray,
    n_channels: int,
) -> np.ndarray:
    """Stitched outputs of positions ``first .. stop - 1``: ``(stop - first, C)`` float64.

    windows: ``(start, outputs)`` pairs in increasing start order, ``outputs``
    (valid_length, C) float64, covering every position of the span. Shared by the
    offline and streaming paths so both do the same arithmetic in the same order.
    """
    span = stop - first
    total = np.zeros(span, dtype=np.float64)
    pieces = []
    for start, outputs in windows:
        lo, hi = max(first, start), min(stop, start + outputs.shape[0])
        if lo < hi:
            total[lo - first : hi - first] += weights[lo - start : hi - start]
            pieces.append((lo, hi, start, outputs))
    if span and not np.all(total > 0):
        raise ValueError(f"positions {first}..{stop - 1} are not all covered by a window")
    stitched = np.zeros((span, n_channels), dtype=np.float64)
    for lo, hi, start, outputs in pieces:
        share = weights[lo - start : hi - start] / total[lo - first : hi - first]
        stitched[lo - first : hi - first] += share[:, None] * outputs[lo - start : hi - start]
    return stitched


def stitch_windows(outputs: np.ndarray, plan: list[tuple[int, int]], n: int) -> np.ndarray:
    """Merge per-window outputs into per-frame outputs.

    outputs: (K, w, C) raw head scores for the K windows of ``plan`` (padded
             positions are ignored), any float dtype.
    plan:    ``plan_windows(n, w, s)`` (starts strictly increasing).
    Returns (n, C) float64: each frame's weighted mean over the windows covering it,
    weights from :func:`window_weights(w) <window_weights>` normalised per frame.
    """
    outputs = np.asarray(outputs)
    if outputs.ndim != 3 or outputs.shape[0] != len(plan):
        raise ValueError(f"outputs must be (K={len(plan)}, w, C), got {outputs.shape}")
    length, n_channels = outputs.shape[1], outputs.shape[2]
    windows = []
    for k, (start, valid) in enumerate(plan):
        if valid > length:
            raise ValueError(f"window {k} has {valid} valid frames but outputs hold only {length}")
        if windows and start <= windows[-1][0]:
            raise ValueError("plan starts must be strictly increasing")
        windows.append((start, outputs[k, :valid].astype(np.float64)))
    if windows and windows[-1][0] + windows[-1][1].shape[0] != n:
        raise ValueError(f"plan ends at {windows[-1][0] + windows[-1][1].shape[0]}, sequence has {n} frames")
    return accumulate_span(0, n, windows, window_weights(length), n_channels)
