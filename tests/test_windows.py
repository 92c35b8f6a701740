"""Window planning, stitching, and the streaming buffer/stitcher matching them exactly."""

from __future__ import annotations

import numpy as np
import pytest

from affstream.errors import ConfigError
from affstream.temporal.buffer import ReadyWindow, TrackWindowBuffer, WindowStitcher, stack_windows
from affstream.temporal.windows import gather_windows, plan_windows, stitch_windows, window_weights

SIZES = [0, 1, 199, 200, 299, 300, 301, 499, 500, 501, 1000, 1234]
PARAMS = [(300, 200), (300, 300), (300, 100), (7, 3), (5, 5), (4, 1)]


# ---------------------------------------------------------------- planning


def test_plan_default_examples():
    assert plan_windows(0) == []
    assert plan_windows(1) == [(0, 1)]
    assert plan_windows(299) == [(0, 299)]
    assert plan_windows(300) == [(0, 300)]
    assert plan_windows(301) == [(0, 300), (1, 300)]
    assert plan_windows(500) == [(0, 300), (200, 300)]
    assert plan_windows(501) == [(0, 300), (200, 300), (201, 300)]
    assert plan_windows(700) == [(0, 300), (200, 300), (400, 300)]
    assert plan_windows(1234) == [(0, 300), (200, 300), (400, 300), (600, 300), (800, 300), (934, 300)]


def test_plan_stride_equal_length():
    assert plan_windows(600, 300, 300) == [(0, 300), (300, 300)]
    assert plan_windows(601, 300, 300) == [(0, 300), (300, 300), (301, 300)]


@pytest.mark.parametrize("length,stride", PARAMS)
@pytest.mark.parametrize("n", SIZES)
def test_plan_invariants(n, length, stride):
    plan = plan_windows(n, length, stride)
    if n == 0:
        assert plan == []
        return
    starts = [s for s, _ in plan]
    assert starts == sorted(set(starts))
    coverage = np.zeros(n, dtype=int)
    for start, valid in plan:
        assert valid == min(length, n)
        assert start >= 0 and start + valid <= n
        coverage[start : start + valid] += 1
    assert coverage.min() >= 1
    assert coverage.max() <= -(-length // stride) + 1
    assert plan[-1][0] + plan[-1][1] == n
    # Every window but an end-aligned last one starts on the stride grid.
    assert all(s % stride == 0 for s in starts[:-1])


def test_plan_rejects_bad_params():
    with pytest.raises(ConfigError):
        plan_windows(10, 300, 0)
    with pytest.raises(ConfigError):
        plan_windows(10, 300, 301)
    with pytest.raises(ConfigError):
        plan_windows(10, 0, 1)
    with pytest.raises(ValueError):
        plan_windows(-1)


# ---------------------------------------------------------------- weights and stitching


def test_window_weights_shape_and_profile():
    w = window_weights(300)
    assert w.shape == (300,) and w.dtype == np.float64
    assert np.all(w > 0) and w.min() >= 0.1 - 1e-12 and w.max() <= 1.0
    np.testing.assert_allclose(w, w[::-1])
    assert w[150] > w[75] > w[0]
    assert window_weights(1)[0] > 0


def test_stitch_single_window_is_identity_and_padding_ignored():
    rng = np.random.default_rng(0)
    outputs = rng.normal(size=(1, 300, 4))
    got = stitch_windows(outputs, plan_windows(120), 120)
    np.testing.assert_array_equal(got, outputs[0, :120])


def test_stitch_weighted_mean_in_overlap():
    plan = plan_windows(500)  # (0, 300), (200, 300): overlap 200..299
    outputs = np.stack([np.full((300, 2), 1.0), np.full((300, 2), 3.0)])
    got = stitch_windows(outputs, plan, 500)
    w = window_weights(300)
    np.testing.assert_array_equal(got[:200], 1.0)
    np.testing.assert_array_equal(got[300:], 3.0)
    f = 250  # position 250 in window 0, 50 in window 1
    expected = (w[250] * 1.0 + w[50] * 3.0) / (w[250] + w[50])
    np.testing.assert_allclose(got[f], expected, rtol=1e-12)
    # Frame 299 is at window 0's edge and window 1's centre-ish: pulled towards 3.
    assert got[299, 0] > 2.0 and got[200, 0] < 2.0
    assert np.all((got >= 1.0) & (got <= 3.0))


def test_stitch_rejects_mismatched_plan():
    with pytest.raises(ValueError):
        stitch_windows(np.zeros((1, 300, 2)), plan_windows(500), 500)
    with pytest.raises(ValueError):
        stitch_windows(np.zeros((2, 300, 2)), plan_windows(500), 501)


def test_gather_windows_pads_and_masks():
    seq = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    wins, mask = gather_windows(seq, plan_windows(10, 4, 3), 4, pad_value=-1)
    assert wins.shape == (3, 4, 3) and mask.shape == (3, 4)  # starts 0, 3, 6
    np.testing.assert_array_equal(wins[2, :, 0], [6, 7, 8, 9])
    assert mask.all()
    wins, mask = gather_windows(seq[:2], plan_windows(2, 4, 3), 4, pad_value=-1)
    np.testing.assert_array_equal(mask, [[True, True, False, False]])
    np.testing.assert_array_equal(wins[0, :, 0], [0, 1, -1, -1])


# ---------------------------------------------------------------- streaming == offline


def _window_outputs(start: int, features: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Fake head: depends on the frame and on which window sees it."""
    pos = np.arange(features.shape[0])[:, None]
    return features.astype(np.float64) @ proj + 0.01 * start + 0.001 * pos


def _run_streaming(tracks: dict[int, tuple[np.ndarray, np.ndarray]], length: int, stride: int, proj):
    """Interleave all tracks frame by frame through buffer and stitcher."""
    buffer, stitcher = TrackWindowBuffer(length, stride), WindowStitcher(length, stride)
    windows: dict[int, list[ReadyWindow]] = {t: [] for t in tracks}
    rows: dict[int, list[tuple[int, np.ndarray]]] = {t: [] for t in tracks}
    max_buffered = max_pending = 0

    def feed(ready):
        for win in ready:
            windows[win.track_id].append(win)
            for tid, idx, value in stitcher.add(win, _window_outputs(win.start, win.features, proj)):
                rows[tid].append((idx, value))

    longest = max(len(idx) for idx, _ in tracks.values())
    for i in range(longest):
        for tid, (idx, feats) in tracks.items():
            if i < len(idx):
                feed(buffer.push(tid, int(idx[i]), feats[i]))
                max_buffered = max(max_buffered, buffer.buffered_frames(tid))
                max_pending = max(max_pending, stitcher.pending_frames(tid))
            elif i == len(idx):
                feed(buffer.finish(tid))
                for tid2, idx2, value in stitcher.finish(tid):
                    rows[tid2].append((idx2, value))
    feed(buffer.finish_all())
    for tid, idx, value in stitcher.finish_all():
        rows[tid].append((idx, value))
    assert buffer.live_tracks() == []
    return windows, rows, max_buffered, max_pending


@pytest.mark.parametrize("length,stride", PARAMS)
def test_streaming_matches_offline(length, stride):
    rng = np.random.default_rng(length * 1000 + stride)
    dim, channels = 3, 2
    proj = rng.normal(size=(dim, channels))
    tracks = {}
    for tid, n in enumerate(SIZES):
        frame_index = np.cumsum(rng.integers(1, 4, size=n)).astype(np.int64)  # gaps allowed
        tracks[tid + 10] = (frame_index, rng.normal(size=(n, dim)).astype(np.float32))
    windows, rows, max_buffered, max_pending = _run_streaming(tracks, length, stride, proj)

    for tid, (frame_index, feats) in tracks.items():
        n = len(frame_index)
        plan = plan_windows(n, length, stride)
        got = windows[tid]
        assert [(w.start, w.valid_length) for w in got] == plan
        offline_feats, _mask = gather_windows(feats, plan, length)
        for k, win in enumerate(got):
            assert win.track_id == tid and win.features.dtype == np.float32
            np.testing.assert_array_equal(win.features, offline_feats[k, : win.valid_length])
            np.testing.assert_array_equal(win.frame_index, frame_index[win.start : win.start + win.valid_length])

        outputs = np.full((len(plan), length, channels), 1e6)  # padding must not leak
        for k, (start, valid) in enumerate(plan):
            outputs[k, :valid] = _window_outputs(start, offline_feats[k, :valid], proj)
        expected = stitch_windows(outputs, plan, n)

        assert [idx for idx, _ in rows[tid]] == list(frame_index)  # each frame once, in order
        streamed = np.array([v for _, v in rows[tid]]).reshape(n, channels)
        np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(streamed, expected)
    assert max_buffered <= length
    assert max_pending <= length


def test_frames_final_as_soon_as_possible():
    buffer, stitcher = TrackWindowBuffer(300, 200), WindowStitcher(300, 200)
    emitted = []
    for i in range(500):
        for win in buffer.push(0, i + 1, np.zeros(2)):
            emitted.append((i, win.start, len(stitcher.add(win, np.zeros((win.valid_length, 1))))))
    # Window 0 finalises position 0; window 200 finalises positions 1..200.
    assert emitted == [(299, 0, 1), (499, 200, 200)]
    assert stitcher.pending_frames(0) == 299
    # n == 500 ends exactly on a regular window: no extra window, finish flushes.
    assert buffer.finish(0) == []
    assert len(stitcher.finish(0)) == 299


def test_end_aligned_window_flushes_track():
    buffer, stitcher = TrackWindowBuffer(300, 200), WindowStitcher(300, 200)
    count = 0
    for i in range(350):
        for win in buffer.push(5, i + 1, np.ones(2)):
            count += len(stitcher.add(win, np.zeros((win.valid_length, 1))))
    last = buffer.finish(5)
    assert [(w.start, w.valid_length) for w in last] == [(50, 300)]
    count += len(stitcher.add(last[0], np.zeros((300, 1))))
    assert count == 350 and stitcher.pending_frames(5) == 0
    assert stitcher.finish(5) == []


def test_buffer_and_stitcher_reject_misuse():
    buffer = TrackWindowBuffer(4, 2)
    buffer.push(1, 5, np.zeros(3))
    with pytest.raises(ValueError):
        buffer.push(1, 5, np.zeros(3))  # frame index not increasing
    with pytest.raises(ValueError):
        buffer.push(1, 6, np.zeros(4))  # width changed
    with pytest.raises(ValueError):
        buffer.push(2, 1, np.zeros((1, 3)))
    assert buffer.finish(99) == []
    with pytest.raises(ConfigError):
        TrackWindowBuffer(4, 5)

    stitcher = WindowStitcher(4, 2)
    win = ReadyWindow(0, 2, np.arange(4, dtype=np.int64), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError):
        stitcher.add(win, np.zeros((4, 1)))  # first window must start at 0
    first = ReadyWindow(0, 0, np.arange(1, 5, dtype=np.int64), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError):
        stitcher.add(first, np.zeros((3, 1)))  # wrong number of rows
    stitcher.add(first, np.zeros((4, 1)))
    with pytest.raises(ValueError):
        stitcher.add(first, np.zeros((4, 1)))  # same window twice


def test_stack_windows():
    wins = [
        ReadyWindow(0, 0, np.arange(1, 4, dtype=np.int64), np.ones((3, 2), np.float32)),
        ReadyWindow(1, 0, np.arange(1, 6, dtype=np.int64), np.full((5, 2), 2, np.float32)),
    ]
    feats, mask = stack_windows(wins, 5)
    assert feats.shape == (2, 5, 2) and feats.dtype == np.float32
    np.testing.assert_array_equal(mask.sum(1), [3, 5])
    np.testing.assert_array_equal(feats[0, 3:], 0)
    np.testing.assert_array_equal(feats[1], 2)
