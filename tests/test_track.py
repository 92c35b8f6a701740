"""FaceTracker on synthetic boxes: stable ids, missed frames, new faces, order independence."""

from __future__ import annotations

import random

import numpy as np
import pytest

from affstream.config import TrackConfig
from affstream.detect.track import FaceTracker, box_iou
from affstream.errors import ConfigError
from affstream.records import Detection


def det(x1: float, y1: float, w: float = 100.0, h: float = 120.0, score: float = 0.99) -> Detection:
    box = np.array([x1, y1, x1 + w, y1 + h], dtype=np.float32)
    return Detection(box_xyxy=box, score=score, landmarks=np.zeros((5, 2), dtype=np.float32))


def ids_by_x(faces) -> dict[int, float]:
    """track_id -> x1 of the detection it was given."""
    return {f.track_id: float(f.detection.box_xyxy[0]) for f in faces}


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]], dtype=np.float64)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 9]], dtype=np.float64)
    iou = box_iou(a, b)
    assert iou.shape == (1, 4)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0, 0.0])


def test_single_face_keeps_id_and_output_fields():
    tracker = FaceTracker(TrackConfig())
    for i in range(1, 11):
        faces = tracker.update(i, (i - 1) / 30, [det(100 + 5 * i, 50)])
        assert len(faces) == 1
        assert faces[0].track_id == 0
        assert faces[0].frame_index == i
        assert faces[0].time_s == pytest.approx((i - 1) / 30)
    assert tracker.track_count == 1


def test_two_crossing_faces_keep_ids_under_shuffled_order():
    """Face A moves right, face B moves left; they overlap partially while crossing."""
    tracker = FaceTracker(TrackConfig(iou_min=0.3, max_missed_frames=5))
    rng = random.Random(0)
    max_overlap = 0.0
    for i in range(1, 31):
        xa, xb = 30.0 + 15 * i, 480.0 - 15 * i  # same x at frame 15
        a, b = det(xa, 100), det(xb, 160)  # 60 px vertical offset: partial overlap only
        max_overlap = max(max_overlap, float(box_iou(a.box_xyxy, b.box_xyxy)[0, 0]))
        dets = [a, b]
        rng.shuffle(dets)
        faces = tracker.update(i, i / 25, dets)
        assert [f.track_id for f in faces] == [0, 1]
        by_id = {f.track_id: f.detection for f in faces}
        if i == 1:
            # new tracks are numbered left to right, whatever the detector's order
            assert by_id[0] is a and by_id[1] is b
        else:
            assert by_id[0] is a, f"frame {i}: face A lost its id"
            assert by_id[1] is b, f"frame {i}: face B lost its id"
    assert max_overlap > 0.3  # the paths really did cross with substantial overlap
    assert tracker.track_count == 2


def test_same_frame_order_does_not_matter():
    frames = [[det(10 + 8 * i, 40), det(300 - 8 * i, 60), det(150, 200 + 4 * i)] for i in range(8)]
    results = []
    for seed in range(4):
        rng = random.Random(seed)
        tracker = FaceTracker(TrackConfig())
        trace = []
        for i, dets in enumerate(frames, start=1):
            shuffled = list(dets)
            rng.shuffle(shuffled)
            trace.append(ids_by_x(tracker.update(i, float(i), shuffled)))
        results.append(trace)
    assert all(r == results[0] for r in results[1:])
    assert set(results[0][-1]) == {0, 1, 2}


def test_fast_face_kept_by_centre_fallback():
    """A face moving 70% of its width per frame has IoU < iou_min with its last box."""
    tracker = FaceTracker(TrackConfig(iou_min=0.3))
    first = det(0, 0)
    second = det(70, 0)
    assert box_iou(first.box_xyxy, second.box_xyxy)[0, 0] < 0.3
    assert tracker.update(1, 0.0, [first])[0].track_id == 0
    assert tracker.update(2, 0.04, [second])[0].track_id == 0
    # from here on the velocity prediction carries it, even at 1.2 widths per frame
    for i, x in enumerate([190, 310, 430], start=3):
        assert tracker.update(i, i * 0.04, [det(x, 0)])[0].track_id == 0
    assert tracker.track_count == 1


def test_far_jump_or_other_size_is_a_new_face():
    tracker = FaceTracker(TrackConfig())
    tracker.update(1, 0.0, [det(0, 0)])
    assert tracker.update(2, 0.1, [det(400, 0)])[0].track_id == 1  # 4 widths away
    tracker2 = FaceTracker(TrackConfig())
    tracker2.update(1, 0.0, [det(100, 100, w=100, h=100)])
    # same centre region but 3x the size and little overlap of the small box in the big one
    faces = tracker2.update(2, 0.1, [det(0, 0, w=300, h=300)])
    assert faces[0].track_id == 1


def test_missing_for_fewer_than_max_missed_keeps_id():
    tracker = FaceTracker(TrackConfig(max_missed_frames=5))
    tracker.update(1, 0.0, [det(100, 100)])
    for i in range(2, 7):  # 5 frames without the face
        assert tracker.update(i, 0.0, []) == ()
    faces = tracker.update(7, 0.0, [det(104, 100)])
    assert [f.track_id for f in faces] == [0]
    assert tracker.track_count == 1


def test_missing_longer_than_max_missed_gets_new_id():
    tracker = FaceTracker(TrackConfig(max_missed_frames=5))
    tracker.update(1, 0.0, [det(100, 100)])
    for i in range(2, 8):  # 6 frames without the face
        tracker.update(i, 0.0, [])
    faces = tracker.update(8, 0.0, [det(100, 100)])
    assert [f.track_id for f in faces] == [1]
    assert tracker.live_track_ids == (1,)


def test_skipped_frame_indices_count_as_missed():
    tracker = FaceTracker(TrackConfig(max_missed_frames=3))
    tracker.update(10, 0.0, [det(0, 0)])
    assert tracker.update(14, 0.0, [det(0, 0)])[0].track_id == 0  # 3 missed
    assert tracker.update(19, 0.0, [det(0, 0)])[0].track_id == 1  # 4 missed


def test_new_face_gets_next_id_and_ids_are_never_reused():
    tracker = FaceTracker(TrackConfig(max_missed_frames=1))
    tracker.update(1, 0.0, [det(0, 0)])
    faces = tracker.update(2, 0.0, [det(2, 0), det(400, 0)])
    assert ids_by_x(faces) == {0: 2.0, 1: 400.0}
    # face 0 leaves for good; face 1 stays
    for i in range(3, 6):
        faces = tracker.update(i, 0.0, [det(400, 0)])
        assert [f.track_id for f in faces] == [1]
    # a face appears where 0 used to be: it is a new person, id 2 (0 is retired)
    faces = tracker.update(6, 0.0, [det(0, 0), det(400, 0)])
    assert ids_by_x(faces) == {1: 400.0, 2: 0.0}
    assert tracker.track_count == 3


def test_empty_frames_and_first_frame_empty():
    tracker = FaceTracker(TrackConfig())
    assert tracker.update(1, 0.0, []) == ()
    assert tracker.update(2, 0.1, ()) == ()
    assert tracker.track_count == 0
    assert [f.track_id for f in tracker.update(3, 0.2, [det(5, 5)])] == [0]


def test_output_sorted_by_track_id():
    tracker = FaceTracker(TrackConfig())
    tracker.update(1, 0.0, [det(500, 0)])  # id 0 on the right
    faces = tracker.update(2, 0.0, [det(500, 0), det(0, 0), det(250, 0)])
    assert [f.track_id for f in faces] == [0, 1, 2]
    assert [float(f.detection.box_xyxy[0]) for f in faces] == [500.0, 0.0, 250.0]


def test_frame_index_must_increase():
    tracker = FaceTracker(TrackConfig())
    tracker.update(3, 0.0, [])
    with pytest.raises(ValueError):
        tracker.update(3, 0.0, [])


@pytest.mark.parametrize("cfg", [TrackConfig(iou_min=0.0), TrackConfig(iou_min=1.5), TrackConfig(max_missed_frames=-1)])
def test_bad_config_is_a_config_error(cfg):
    with pytest.raises(ConfigError, match="track\\."):
        FaceTracker(cfg)
