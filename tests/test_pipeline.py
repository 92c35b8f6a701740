"""End-to-end annotate pipeline on real and synthetic clips (smoke preset, CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from media import VFR_PTS_MS
from two_faces import make_two_face_clip

import affstream
from affstream.api import annotate_to_files, iter_face_features, resolve_config
from affstream.io import iter_frames
from affstream.pipeline import load_stages
from affstream.records import DecodeStats
from affstream.writers.columns import CSV_COLUMNS


@pytest.fixture(scope="module")
def smoke_stages():
    return load_stages(resolve_config("smoke", device="cpu"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def decoded_count(path: Path) -> int:
    stats = DecodeStats()
    return sum(1 for _ in iter_frames(path, stats=stats))


def test_single_face_clip_one_row_per_frame(single_face_mp4, tmp_path, smoke_stages):
    files = annotate_to_files(single_face_mp4, tmp_path, stages=smoke_stages)
    rows = read_rows(files.csv_path)
    assert len(rows) == decoded_count(single_face_mp4) == 72
    assert [int(r["frame"]) for r in rows] == list(range(1, 73))
    assert all(r["success"] == "1" and r["face_id"] == "0" for r in rows)
    probs = np.array([[float(r[c]) for c in CSV_COLUMNS if c.startswith("expr_")] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=2e-3)
    report = json.loads(files.json_path.read_text())
    assert report["meaningful"] is False and "meaningless" in report["warning"]
    assert report["counts"]["rows"] == 72 and report["counts"]["tracks"] == 1
    assert report["source"]["frame_count"] == 72
    assert set(report["timings"]["stages"]) >= {"decode", "detect", "align", "embed", "head"}


def test_no_face_clip_rows_are_empty(no_face_mp4, tmp_path, smoke_stages):
    files = annotate_to_files(no_face_mp4, tmp_path, stages=smoke_stages)
    rows = read_rows(files.csv_path)
    assert len(rows) == decoded_count(no_face_mp4)
    assert all(r["face_id"] == "-1" and r["success"] == "0" and r["valence"] == "" for r in rows)
    assert files.report.counts.frames_with_faces == 0


def test_variable_frame_rate_times_follow_pts(vfr_clip, tmp_path, smoke_stages):
    files = annotate_to_files(vfr_clip, tmp_path, stages=smoke_stages)
    rows = read_rows(files.csv_path)
    assert len(rows) == len(VFR_PTS_MS)
    times = [float(r["timestamp"]) for r in rows]
    expected = [(p - VFR_PTS_MS[0]) / 1000.0 for p in VFR_PTS_MS]
    np.testing.assert_allclose(times, expected, atol=1e-6)


def test_rotated_clip_is_reported_upright(rotated_clip, tmp_path, smoke_stages):
    files = annotate_to_files(rotated_clip, tmp_path, stages=smoke_stages)
    source = files.report.to_dict()["source"]
    assert source["rotation_deg"] in (90, 270)
    assert source["height"] > source["width"]
    assert len(read_rows(files.csv_path)) == decoded_count(rotated_clip)


def test_two_faces_keep_two_stable_ids(tmp_path, smoke_stages):
    clip = make_two_face_clip(tmp_path / "two.mp4", frames=30)
    run = affstream.annotate(clip, stages=smoke_stages)
    rows = list(run)
    assert run.counts.frames_written == 30
    faces = [r for r in rows if r.success]
    assert {r.track_id for r in faces} == {0, 1}
    # every frame has both faces, and each id stays on its side of the picture
    assert len(faces) == 60
    centre = {0: [], 1: []}
    for r in faces:
        centre[r.track_id].append((r.box_xyxy[0] + r.box_xyxy[2]) / 2)
    left, right = (0, 1) if np.mean(centre[0]) < np.mean(centre[1]) else (1, 0)
    assert max(centre[left]) < min(centre[right])
    # face A drifts right, face B drifts left, 2 px per frame
    assert centre[left][-1] - centre[left][0] == pytest.approx(58, abs=8)
    assert centre[right][0] - centre[right][-1] == pytest.approx(58, abs=8)


def test_multi_face_photo_gives_five_faces(multi_face_jpg, tmp_path, smoke_stages):
    files = annotate_to_files(multi_face_jpg, tmp_path, stages=smoke_stages)
    rows = read_rows(files.csv_path)
    assert len(rows) == 5
    assert sorted(int(r["face_id"]) for r in rows) == [0, 1, 2, 3, 4]


def test_iter_face_features_matches_annotation_frames(single_face_mp4, smoke_stages):
    items = list(iter_face_features(single_face_mp4, stages=smoke_stages))
    assert [f.frame_index for f, _ in items] == list(range(1, 73))
    feats = np.concatenate([x for _, x in items])
    assert feats.shape == (72, smoke_stages.backbone.feature_dim)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)


def test_interrupted_run_leaves_no_final_file(single_face_mp4, tmp_path, smoke_stages, monkeypatch):
    from affstream.pipeline import predict

    calls = {"n": 0}
    original = predict.FramePredictor.feed

    def failing_feed(self, chunk):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        yield from original(self, chunk)

    monkeypatch.setattr(predict.FramePredictor, "feed", failing_feed)
    stages = load_stages(resolve_config("smoke", device="cpu", batch_size=16), backbone=smoke_stages.backbone)
    with pytest.raises(KeyboardInterrupt):
        annotate_to_files(single_face_mp4, tmp_path, stages=stages)
    assert list(tmp_path.iterdir()) == []


def test_resolution_change_mid_stream(tmp_path, smoke_stages):
    """Two MPEG-TS segments of different sizes joined byte-wise (as a live encoder
    switching resolution produces): every frame is annotated, none is lost."""
    import av

    parts = []
    for k, (width, height, count) in enumerate(((320, 240, 7), (480, 360, 9))):
        path = tmp_path / f"part{k}.ts"
        with av.open(str(path), "w", format="mpegts") as container:
            stream = container.add_stream("mpeg2video", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(count):
                image = np.full((height, width, 3), 40 + 10 * i, dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        parts.append(path.read_bytes())
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(parts))
    expected = decoded_count(joined)
    assert expected >= 14
    run = affstream.annotate(joined, stages=smoke_stages)
    rows = list(run)
    assert [r.frame_index for r in rows] == list(range(1, expected + 1))


def test_faceless_stretches_are_not_held_back(no_face_mp4, smoke_stages, monkeypatch):
    from affstream.config import ScheduleConfig
    from affstream.pipeline.faces import FaceSteps
    from affstream.pipeline.offline import iter_face_chunks

    frames = iter_frames(no_face_mp4, stats=DecodeStats())
    chunks = list(iter_face_chunks(FaceSteps(smoke_stages), frames, ScheduleConfig(embed_pool_frames=32)))
    assert len(chunks) >= 3
    assert max(len(c.frames) for c in chunks) <= 32 + 16


def test_stages_and_model_options_are_exclusive(single_face_jpg, smoke_stages):
    from affstream.errors import ConfigError

    with pytest.raises(ConfigError, match="head"):
        affstream.annotate(single_face_jpg, stages=smoke_stages, head="zeroshot")
    no_head = load_stages(resolve_config("smoke", device="cpu"), backbone=smoke_stages.backbone, with_head=False)
    with pytest.raises(ConfigError, match="without a head"):
        affstream.annotate(single_face_jpg, stages=no_head)
