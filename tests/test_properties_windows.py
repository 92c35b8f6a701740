"""Property tests: window planning and stitching, offline and streaming.

The rule is the one of :mod:`affstream.temporal.windows` (regular windows on the stride
grid, one end-aligned window, a single short window for a sequence shorter than the
window) and the promise of :mod:`affstream.temporal.buffer` (the same windows and the
same stitched values, bit for bit, while frames stream in).
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from affstream.temporal.buffer import TrackWindowBuffer, WindowStitcher, stack_windows
from affstream.temporal.windows import (
    EDGE_WEIGHT_FLOOR,
    gather_windows,
    plan_windows,
    stitch_windows,
    window_weights,
)

FAST = settings(max_examples=150, deadline=None)
SLOW = settings(max_examples=60, deadline=None)


@st.composite
def window_params(draw, max_length: int = 24) -> tuple[int, int]:
    """(length, stride) with length >= 1 and 1 <= stride <= length."""
    length = draw(st.integers(1, max_length))
    stride = draw(st.integers(1, length))
    return length, stride


@st.composite
def sequence_case(draw, max_n: int = 80) -> tuple[int, int, int]:
    """(n, length, stride); n >= 1, biased so that n < length, n == length and n >> length all occur."""
    length, stride = draw(window_params())
    n = draw(st.one_of(st.integers(1, max_n), st.sampled_from([length, length + 1, max(1, length - 1)])))
    return n, length, stride


def frame_indices(gaps: list[int], n: int) -> np.ndarray:
    """1-based, strictly increasing video frame indices of a track's n faces: the steps
    cycle through ``gaps`` (all 1 when empty), so gaps in the video occur."""
    steps = (gaps * (n // max(1, len(gaps)) + 1))[:n] if gaps else [1] * n
    return np.cumsum(np.asarray(steps, dtype=np.int64))


# ------------------------------------------------------------------------ planning


@FAST
@given(sequence_case())
def test_plan_covers_every_frame_inside_the_sequence(case):
    """Every frame of [0, n) is covered by at least one and at most ceil(w/s) + 1 windows;
    every window lies inside [0, n); starts strictly increase; the last window ends at n."""
    n, length, stride = case
    plan = plan_windows(n, length, stride)
    assert plan, "a non-empty sequence has at least one window"
    coverage = np.zeros(n, dtype=np.int64)
    for start, valid in plan:
        assert start >= 0 and 1 <= valid <= length and start + valid <= n
        coverage[start : start + valid] += 1
    assert coverage.min() >= 1
    assert coverage.max() <= math.ceil(length / stride) + 1
    starts = [start for start, _ in plan]
    assert all(a < b for a, b in itertools.pairwise(starts))
    assert plan[-1][0] + plan[-1][1] == n


@FAST
@given(sequence_case())
def test_plan_follows_the_rule(case):
    """n < w gives exactly [(0, n)] (one short, padded window); otherwise every window is
    full length, the regular ones start at 0, s, 2s, ... while they fit, and at most one
    extra window, aligned to the end and off the stride grid, follows."""
    n, length, stride = case
    plan = plan_windows(n, length, stride)
    if n < length:
        assert plan == [(0, n)]
        return
    assert all(valid == length for _, valid in plan)
    regular = [(start, length) for start in range(0, n - length + 1, stride)]
    assert plan[: len(regular)] == regular
    extra = plan[len(regular) :]
    if regular[-1][0] + length == n:
        assert extra == []
    else:
        assert extra == [(n - length, length)]
        assert (n - length) % stride != 0


@FAST
@given(window_params())
def test_empty_sequence_has_no_window(params):
    """A sequence of 0 frames gives no window."""
    assert plan_windows(0, *params) == []


@FAST
@given(st.integers(1, 400))
def test_window_weights_profile(length):
    """Weights are (w,) float64, symmetric, within [floor, 1], and positive."""
    weights = window_weights(length)
    assert weights.shape == (length,) and weights.dtype == np.float64
    assert np.all(weights >= EDGE_WEIGHT_FLOOR - 1e-15) and np.all(weights <= 1.0 + 1e-15)
    np.testing.assert_allclose(weights, weights[::-1], rtol=0, atol=1e-15)


@FAST
@given(sequence_case(), st.integers(1, 3), st.floats(-5, 5, allow_nan=False))
def test_gather_cuts_the_planned_frames_and_pads(case, channels, pad):
    """gather_windows puts sequence[start : start + valid] at the front of each window,
    pad_value behind it, and a mask True exactly on the real frames."""
    n, length, stride = case
    sequence = np.arange(n * channels, dtype=np.float64).reshape(n, channels)
    plan = plan_windows(n, length, stride)
    windows, mask = gather_windows(sequence, plan, length, pad_value=pad)
    assert windows.shape == (len(plan), length, channels) and mask.shape == (len(plan), length)
    for k, (start, valid) in enumerate(plan):
        np.testing.assert_array_equal(windows[k, :valid], sequence[start : start + valid])
        assert np.all(windows[k, valid:] == pad)
        assert mask[k, :valid].all() and not mask[k, valid:].any()


# ----------------------------------------------------------------------- stitching


@FAST
@given(sequence_case())
def test_stitch_weights_per_frame_sum_to_one(case):
    """Stitching one-hot window outputs (channel k = 1 in window k) gives each frame's
    normalised window weights: non-negative, zero for windows that do not cover the
    frame, summing to 1, and exactly 1 for a frame covered by a single window."""
    n, length, stride = case
    plan = plan_windows(n, length, stride)
    outputs = np.zeros((len(plan), length, len(plan)))
    for k in range(len(plan)):
        outputs[k, :, k] = 1.0
    shares = stitch_windows(outputs, plan, n)
    assert shares.shape == (n, len(plan)) and shares.dtype == np.float64
    assert np.all(shares >= 0)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    for k, (start, valid) in enumerate(plan):
        outside = np.ones(n, dtype=bool)
        outside[start : start + valid] = False
        assert np.all(shares[outside, k] == 0)
    covering = (shares > 0).sum(axis=1)
    single = covering == 1
    assert np.all(shares[single].max(axis=1) == 1.0)


@FAST
@given(sequence_case(), st.floats(-1e3, 1e3, allow_nan=False), st.integers(1, 3))
def test_stitch_constant_scores_gives_the_constant(case, value, channels):
    """Every window carrying the same constant score gives that constant on every frame."""
    n, length, stride = case
    plan = plan_windows(n, length, stride)
    outputs = np.full((len(plan), length, channels), value)
    stitched = stitch_windows(outputs, plan, n)
    np.testing.assert_allclose(stitched, value, rtol=1e-12, atol=1e-12)


@SLOW
@given(sequence_case(), st.data())
def test_stitch_reproduces_a_per_frame_function(case, data):
    """If each window carries f(t) at its frames (garbage on padding), stitching gives f."""
    n, length, stride = case
    channels = data.draw(st.integers(1, 3), label="channels")
    values = data.draw(
        st.lists(st.floats(-100, 100, allow_nan=False), min_size=n * channels, max_size=n * channels), label="f"
    )
    f = np.asarray(values, dtype=np.float64).reshape(n, channels)
    plan = plan_windows(n, length, stride)
    outputs, mask = gather_windows(f, plan, length, pad_value=1e9)  # padding must be ignored
    assert np.all(outputs[~mask] == 1e9)
    stitched = stitch_windows(outputs, plan, n)
    np.testing.assert_allclose(stitched, f, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(f).max())))


@FAST
@given(sequence_case(), st.integers(0, 2**32 - 1))
def test_stitch_is_a_convex_combination(case, seed):
    """Each stitched value lies between the smallest and largest window score at that frame."""
    n, length, stride = case
    plan = plan_windows(n, length, stride)
    outputs = np.random.default_rng(seed).uniform(-1, 1, size=(len(plan), length, 2))
    stitched = stitch_windows(outputs, plan, n)
    lo = np.full((n, 2), np.inf)
    hi = np.full((n, 2), -np.inf)
    for k, (start, valid) in enumerate(plan):
        lo[start : start + valid] = np.minimum(lo[start : start + valid], outputs[k, :valid])
        hi[start : start + valid] = np.maximum(hi[start : start + valid], outputs[k, :valid])
    assert np.all(stitched >= lo - 1e-12) and np.all(stitched <= hi + 1e-12)


# ----------------------------------------------------------------------- streaming


@SLOW
@given(sequence_case(), st.lists(st.integers(1, 4), max_size=6), st.integers(0, 2**32 - 1))
def test_streaming_single_track_matches_offline_bit_for_bit(case, gaps, seed):
    """A track pushed frame by frame (then finished) yields exactly the windows of
    plan_windows (same starts, frame indices and features, each as soon as complete), the
    stitcher emits every frame once, in order, with the offline stitched values bit for
    bit, and never holds more than w frames (buffer) or w - 1 pending frames (stitcher)."""
    n, length, stride = case
    rng = np.random.default_rng(seed)
    index = frame_indices(gaps, n)
    features = rng.standard_normal((n, 3)).astype(np.float32)
    plan = plan_windows(n, length, stride)
    outputs = rng.standard_normal((len(plan), length, 2))
    ref_windows, _ = gather_windows(features, plan, length)
    ref_stitched = stitch_windows(outputs, plan, n)

    buffer = TrackWindowBuffer(length, stride)
    stitcher = WindowStitcher(length, stride)
    emitted, stitched = [], []
    for pos in range(n):
        ready = buffer.push(7, int(index[pos]), features[pos])
        assert buffer.buffered_frames(7) <= length
        for window in ready:
            assert window.start + window.valid_length == pos + 1, "a regular window is ready at its last frame"
        for window in ready:
            k = len(emitted)
            emitted.append(window)
            stitched.extend(stitcher.add(window, outputs[k, : window.valid_length]))
            assert stitcher.pending_frames(7) <= length - 1
    for window in buffer.finish(7):
        k = len(emitted)
        emitted.append(window)
        stitched.extend(stitcher.add(window, outputs[k, : window.valid_length]))
    assert buffer.live_tracks() == []
    stitched.extend(stitcher.finish(7))

    assert [(w.start, w.valid_length) for w in emitted] == plan
    for k, window in enumerate(emitted):
        start, valid = plan[k]
        assert window.track_id == 7
        np.testing.assert_array_equal(window.frame_index, index[start : start + valid])
        assert window.features.dtype == np.float32
        np.testing.assert_array_equal(window.features, ref_windows[k, :valid])
    assert [(tid, f) for tid, f, _ in stitched] == [(7, int(f)) for f in index]
    values = np.stack([v for _, _, v in stitched])
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, ref_stitched)

    batch, mask = stack_windows(emitted, length)
    assert batch.shape == (len(plan), length, 3) and batch.dtype == np.float32
    for k, (_, valid) in enumerate(plan):
        np.testing.assert_array_equal(batch[k, :valid], emitted[k].features)
        assert np.all(batch[k, valid:] == 0)
        assert mask[k, :valid].all() and not mask[k, valid:].any()


@st.composite
def interleaved_case(draw):
    """Window params, 1..4 tracks with their lengths, and a random push schedule."""
    length, stride = draw(window_params(max_length=12))
    lengths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=4))
    schedule = draw(st.permutations([tid for tid, n in enumerate(lengths) for _ in range(n)]))
    return length, stride, lengths, schedule


@SLOW
@given(interleaved_case(), st.booleans(), st.randoms(use_true_random=False), st.integers(0, 2**32 - 1))
def test_interleaved_tracks_do_not_interfere(case, finish_early, rnd: random.Random, seed):
    """Several tracks pushed in an arbitrary interleaving, their windows reaching the
    stitcher after arbitrary delays (in order within each track), give per track the same
    windows and stitched values as the offline plan/stitch of that track alone."""
    length, stride, lengths, schedule = case
    rng = np.random.default_rng(seed)
    track_ids = [3 * tid + 10 for tid in range(len(lengths))]  # not 0..k-1: ids are opaque keys
    index = {tid: frame_indices([1 + (t % 3)], n) + t for t, (tid, n) in enumerate(zip(track_ids, lengths, strict=True))}
    features = {tid: rng.standard_normal((n, 2)).astype(np.float32) for tid, n in zip(track_ids, lengths, strict=True)}
    plans = {tid: plan_windows(n, length, stride) for tid, n in zip(track_ids, lengths, strict=True)}
    outputs = {tid: rng.standard_normal((len(plans[tid]), length, 3)) for tid in track_ids}

    buffer = TrackWindowBuffer(length, stride)
    stitcher = WindowStitcher(length, stride)
    pushed = dict.fromkeys(track_ids, 0)
    windows: dict[int, list] = {tid: [] for tid in track_ids}
    queues: dict[int, list] = {tid: [] for tid in track_ids}  # emitted, not yet stitched
    results: dict[int, list] = {tid: [] for tid in track_ids}

    def deliver(tid: int) -> None:
        window = queues[tid].pop(0)
        k = len(windows[tid])
        windows[tid].append(window)
        for out_tid, frame, value in stitcher.add(window, outputs[tid][k, : window.valid_length]):
            results[out_tid].append((frame, value))

    for t in schedule:
        tid = track_ids[t]
        pos = pushed[tid]
        queues[tid].extend(buffer.push(tid, int(index[tid][pos]), features[tid][pos]))
        pushed[tid] += 1
        if finish_early and pushed[tid] == lengths[t]:
            queues[tid].extend(buffer.finish(tid))
        for other in track_ids:  # deliver some of the waiting windows, oldest first
            while queues[other] and rnd.random() < 0.5:
                deliver(other)
    for tid, window in ((w.track_id, w) for w in buffer.finish_all()):
        queues[tid].append(window)
    for tid in rnd.sample(track_ids, len(track_ids)):
        while queues[tid]:
            deliver(tid)
    for out_tid, frame, value in stitcher.finish_all():
        results[out_tid].append((frame, value))

    for tid, n in zip(track_ids, lengths, strict=True):
        plan = plans[tid]
        ref_windows, _ = gather_windows(features[tid], plan, length)
        ref_stitched = stitch_windows(outputs[tid], plan, n)
        assert [(w.track_id, w.start, w.valid_length) for w in windows[tid]] == [(tid, s, v) for s, v in plan]
        for k, window in enumerate(windows[tid]):
            start, valid = plan[k]
            np.testing.assert_array_equal(window.frame_index, index[tid][start : start + valid])
            np.testing.assert_array_equal(window.features, ref_windows[k, :valid])
        assert [f for f, _ in results[tid]] == [int(f) for f in index[tid]]
        np.testing.assert_array_equal(np.stack([v for _, v in results[tid]]), ref_stitched)
