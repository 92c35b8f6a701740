"""Detecting every k-th frame and following the tracks in between (O-Net on predicted
boxes): the same rows as detecting every frame, boxes that agree, and the schedule's
bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from affstream.detect.track import box_iou
from affstream.pipeline.faces import DetectSchedule


def test_schedule_detects_every_kth_frame_and_after_a_lost_track():
    schedule = DetectSchedule(3)
    ran = []
    for frame in range(1, 11):
        full = schedule.due()
        ran.append(full)
        schedule.done(full, lost=(frame == 5))  # frame 5 (followed) lost a track
    # 1 full, 2-3 followed, 4 full, 5 followed and lost -> 6 full, 7-8 followed, 9 full
    assert [f for f, r in zip(range(1, 11), ran, strict=True) if r] == [1, 4, 6, 9]
    assert schedule.full == 4 and schedule.followed == 6
    with pytest.raises(ValueError):
        DetectSchedule(0)


def test_follow_confirms_a_face_from_its_previous_box(single_face_mp4):
    from affstream.config import DetectConfig
    from affstream.detect.mtcnn import MTCNNDetector
    from affstream.io.sources import iter_frames
    from affstream.records import DecodeStats

    detector = MTCNNDetector(DetectConfig())
    frames = [f.image for f, _ in zip(iter_frames(single_face_mp4, stats=DecodeStats()), range(3), strict=False)]
    full = detector.detect(frames)
    assert all(len(found) == 1 for found in full)
    pixels = detector.to_device(frames[1:2])
    followed = detector.follow(pixels, [full[0][0].box_xyxy[None]])[0]
    assert len(followed) == 1 and followed[0].landmarks.shape == (5, 2)
    assert box_iou(followed[0].box_xyxy[None], full[1][0].box_xyxy[None])[0, 0] > 0.85
    # a box where there is no face is not confirmed
    assert detector.follow(pixels, [np.array([[0, 0, 40, 40]], dtype=np.float32)])[0] == []
    assert detector.follow(pixels, [np.zeros((0, 4), dtype=np.float32)]) == [[]]


@pytest.mark.slow
def test_annotate_with_detect_every_agrees_with_every_frame(single_face_mp4):
    from affstream.api import annotate, resolve_config

    def rows(every: int):
        config = resolve_config("smoke", device="cpu").with_overrides(schedule={"detect_every": every})
        return list(annotate(single_face_mp4, pipeline=config))

    reference, sparse = rows(1), rows(4)
    assert [r.frame_index for r in sparse] == [r.frame_index for r in reference]  # one row per frame, as always
    pairs = [(a, b) for a, b in zip(reference, sparse, strict=True) if a.success and b.success]
    assert len(pairs) >= 0.95 * sum(r.success for r in reference)
    ious = [box_iou(a.box_xyxy[None], b.box_xyxy[None])[0, 0] for a, b in pairs]
    assert np.mean(ious) > 0.85 and min(ious) > 0.6
    assert {b.track_id for _, b in pairs} == {0}  # followed faces keep their track
