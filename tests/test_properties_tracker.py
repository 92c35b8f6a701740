"""Property tests: FaceTracker id assignment over random detection sequences.

The rules are those of :mod:`affstream.detect.track`: every detection gets exactly one
id, ids are unique within a frame, new ids count up from 0 and are handed out left to
right, a retired id (missed for more than ``max_missed_frames`` frames) never returns,
and the detector's output order within a frame does not matter.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from affstream.config import TrackConfig
from affstream.detect.track import FaceTracker
from affstream.records import Detection

TRACKER = settings(max_examples=50, deadline=None)

# Irrational per-slot offsets: boxes drawn on an integer grid would tie exactly in IoU
# or centre distance, and ties are resolved by detection order (documented in _greedy).
_JITTER = np.array([0.0137, 0.0291, 0.0173, 0.0419]) * np.sqrt(2.0)


def make_detection(box, score: float = 0.9) -> Detection:
    return Detection(
        box_xyxy=np.asarray(box, dtype=np.float32).reshape(4),
        score=score,
        landmarks=np.zeros((5, 2), dtype=np.float32),
    )


@st.composite
def raw_box(draw, jitter_slot: int | None = None) -> tuple[float, float, float, float]:
    """A box in a 640x480 frame, 8..160 px per side (integer grid, optionally jittered)."""
    x1, y1 = draw(st.integers(0, 600)), draw(st.integers(0, 440))
    w, h = draw(st.integers(8, 160)), draw(st.integers(8, 160))
    box = np.array([x1, y1, x1 + w, y1 + h], dtype=np.float64)
    if jitter_slot is not None:
        box = box + _JITTER * (1 + jitter_slot) ** 0.5 * np.pi
    return tuple(float(v) for v in box)


@st.composite
def tracker_config(draw) -> TrackConfig:
    return TrackConfig(iou_min=draw(st.sampled_from([0.1, 0.3, 0.5, 0.8])), max_missed_frames=draw(st.integers(0, 4)))


@st.composite
def detection_sequences(draw, jitter: bool = False, max_frames: int = 14):
    """[(frame_index, [box, ...]), ...]: increasing frames with gaps, 0..6 boxes each.

    Boxes of the previous frame are often re-drawn slightly moved, so tracks continue."""
    frames = []
    frame = draw(st.integers(1, 5))
    previous: list[tuple[float, ...]] = []
    slot = 0
    for _ in range(draw(st.integers(1, max_frames))):
        boxes = []
        for box in previous:
            if draw(st.integers(0, 3)) > 0:  # mostly keep a face, moved by a few pixels
                dx, dy = draw(st.integers(-6, 6)), draw(st.integers(-6, 6))
                boxes.append((box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy))
        for _ in range(draw(st.integers(0, max(0, 6 - len(boxes))))):
            boxes.append(draw(raw_box(slot if jitter else None)))
            slot += 1
        boxes = boxes[:6]
        if jitter:
            # keep the moved copies distinct from each other too
            boxes = [tuple(v + 1e-3 * np.sqrt(2 + k) for v in b) for k, b in enumerate(boxes)]
        frames.append((frame, boxes))
        previous = boxes
        frame += draw(st.integers(1, 7))
    return frames


def run(tracker: FaceTracker, frames, order=None):
    """Feed the frames (each frame's boxes permuted by ``order[k]`` if given); returns the
    faces of every frame."""
    out = []
    for k, (frame, boxes) in enumerate(frames):
        dets = [make_detection(b) for b in boxes]
        if order is not None:
            dets = [dets[i] for i in order[k]]
        out.append(tracker.update(frame, frame / 30.0, dets))
    return out


@TRACKER
@given(tracker_config(), detection_sequences())
def test_every_detection_gets_exactly_one_unique_id(config, frames):
    """Each frame's output has one TrackedFace per detection, holding the same Detection
    object (box values untouched), with unique ids, sorted by id, and the frame's index
    and time copied in."""
    tracker = FaceTracker(config)
    for frame, boxes in frames:
        dets = [make_detection(b) for b in boxes]
        before = [d.box_xyxy.copy() for d in dets]
        faces = tracker.update(frame, frame / 30.0, dets)
        assert len(faces) == len(dets)
        assert sorted(id(f.detection) for f in faces) == sorted(id(d) for d in dets)
        ids = [f.track_id for f in faces]
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids)
        assert all(f.frame_index == frame and f.time_s == frame / 30.0 for f in faces)
        for d, box in zip(dets, before, strict=True):
            assert d.box_xyxy.dtype == np.float32
            np.testing.assert_array_equal(d.box_xyxy, box)


@TRACKER
@given(tracker_config(), detection_sequences())
def test_ids_count_up_left_to_right_and_are_never_reused(config, frames):
    """New ids are the next integers (0, 1, 2, ... without gaps), handed out left to right
    (ascending x1, then y1, ...) within a frame; an id comes back only if it was missed for
    at most max_missed_frames frames; after each frame live_track_ids are exactly the ids
    not retired."""
    tracker = FaceTracker(config)
    last_seen: dict[int, int] = {}
    next_id = 0
    for frame, boxes in frames:
        faces = tracker.update(frame, 0.0, [make_detection(b) for b in boxes])
        new = [f for f in faces if f.track_id not in last_seen]
        assert sorted(f.track_id for f in new) == list(range(next_id, next_id + len(new)))
        by_position = sorted(new, key=lambda f: tuple(float(v) for v in f.detection.box_xyxy))
        assert [f.track_id for f in by_position] == sorted(f.track_id for f in new)
        next_id += len(new)
        assert tracker.track_count == next_id
        for f in faces:
            if f.track_id in last_seen:
                missed = frame - last_seen[f.track_id] - 1
                assert missed <= config.max_missed_frames, f"id {f.track_id} reused after {missed} missed frames"
            last_seen[f.track_id] = frame
        alive = {tid for tid, seen in last_seen.items() if frame - seen - 1 <= config.max_missed_frames}
        assert set(tracker.live_track_ids) == alive


@TRACKER
@given(tracker_config(), detection_sequences(jitter=True), st.data())
def test_detection_order_within_a_frame_does_not_matter(config, frames, data):
    """Shuffling each frame's detections gives the same id for the same box in every frame
    (boxes are jittered off the integer grid so no two scores tie exactly; ties are the
    one documented place where detection order decides)."""
    order = [data.draw(st.permutations(range(len(boxes))), label=f"order {k}") for k, (_, boxes) in enumerate(frames)]
    plain = run(FaceTracker(config), frames)
    shuffled = run(FaceTracker(config), frames, order)
    for a, b in zip(plain, shuffled, strict=True):
        assert [(f.track_id, tuple(f.detection.box_xyxy.tolist())) for f in a] == [
            (f.track_id, tuple(f.detection.box_xyxy.tolist())) for f in b
        ]


@st.composite
def smooth_paths(draw):
    """One face moving smoothly: per observation a shift of at most 15% of its size on each
    axis and a size change of at most 5%; frames observed with gaps within max_missed."""
    max_missed = draw(st.integers(0, 4))
    x, y = draw(st.floats(0, 2000)), draw(st.floats(0, 2000))
    w, h = draw(st.floats(16, 400)), draw(st.floats(16, 400))
    frame = draw(st.integers(1, 100))
    path = []
    for _ in range(draw(st.integers(2, 40))):
        path.append((frame, (x, y, x + w, y + h)))
        x += draw(st.floats(-0.15, 0.15)) * w
        y += draw(st.floats(-0.15, 0.15)) * h
        scale = draw(st.floats(0.95, 1.05))
        w, h = w * scale, h * scale
        frame += draw(st.integers(1, max_missed + 1))
    return max_missed, path


@TRACKER
@given(smooth_paths())
def test_a_smoothly_moving_face_keeps_its_id(case):
    """A single face moving a small fraction of its size per observed frame (gaps within
    max_missed_frames) keeps id 0 throughout, with the default IoU threshold."""
    max_missed, path = case
    tracker = FaceTracker(TrackConfig(max_missed_frames=max_missed))
    for frame, box in path:
        faces = tracker.update(frame, frame / 25.0, [make_detection(box)])
        assert [f.track_id for f in faces] == [0], f"frame {frame}"
    assert tracker.track_count == 1


@settings(max_examples=25, deadline=None)
@given(tracker_config(), detection_sequences(), st.integers(0, 10))
def test_empty_frames_only_age_tracks(config, frames, empty):
    """Frames without detections return nothing and start no track."""
    tracker = FaceTracker(config)
    frame = 0
    for frame, boxes in frames:
        tracker.update(frame, 0.0, [make_detection(b) for b in boxes])
    count = tracker.track_count
    for k in range(1, empty + 1):
        assert tracker.update(frame + k, 0.0, []) == ()
    assert tracker.track_count == count
