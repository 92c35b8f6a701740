"""MTCNN detector: real faces, reference outputs, batching, downscaling, weights checks."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from affstream.config import DetectConfig
from affstream.detect import boxes as B
from affstream.detect.mtcnn import MTCNNDetector
from affstream.errors import ConfigError, WeightsError
from affstream.files import shipped_dir

DATA = Path(__file__).parent / "data"


def read_frames(name: str, step: int = 1, limit: int | None = None) -> dict[int, np.ndarray]:
    """0-based decode index -> (H, W, 3) uint8 RGB frame, every ``step``-th frame."""
    frames = {}
    with av.open(str(DATA / name)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if limit is not None and index >= limit:
                break
            if index % step == 0:
                frames[index] = frame.to_ndarray(format="rgb24")
    return frames


def read_image(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / name).convert("RGB"))


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector(DetectConfig(), device="cpu")


@pytest.fixture(scope="module")
def single_face_frames() -> dict[int, np.ndarray]:
    return read_frames("single_face.mp4", step=6)


def as_arrays(dets):
    boxes = np.array([d.box_xyxy for d in dets], dtype=np.float64).reshape(-1, 4)
    scores = np.array([d.score for d in dets], dtype=np.float64)
    marks = np.array([d.landmarks for d in dets], dtype=np.float64).reshape(-1, 5, 2)
    return boxes, scores, marks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def check_geometry(det, height: int, width: int) -> None:
    box, marks = det.box_xyxy, det.landmarks
    assert box.dtype == np.float32 and box.shape == (4,)
    assert marks.dtype == np.float32 and marks.shape == (5, 2)
    assert 0.0 <= det.score <= 1.0
    x1, y1, x2, y2 = box
    assert x2 - x1 > 20 and y2 - y1 > 20
    assert -0.1 * width < x1 < x2 < 1.1 * width and -0.1 * height < y1 < y2 < 1.1 * height
    assert np.all((marks[:, 0] > x1) & (marks[:, 0] < x2) & (marks[:, 1] > y1) & (marks[:, 1] < y2))
    left_eye, right_eye, nose, left_mouth, right_mouth = marks
    assert max(left_eye[1], right_eye[1]) < min(left_mouth[1], right_mouth[1])  # eyes above mouth
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert min(left_eye[1], right_eye[1]) < nose[1] < max(left_mouth[1], right_mouth[1])


# --- behaviour on real media ----------------------------------------------------------


def test_face_in_every_sampled_frame_of_single_face(detector, single_face_frames):
    frames = list(single_face_frames.values())
    results = detector.detect(frames)
    assert len(results) == len(frames) == 12
    for dets in results:
        assert len(dets) == 1
        assert dets[0].score >= 0.99
        check_geometry(dets[0], 360, 640)
    centres = np.array([d[0].box_xyxy.reshape(2, 2).mean(0) for d in results])
    assert np.ptp(centres, axis=0).max() < 120  # one talking head, not jumping around


def test_no_face_in_no_face_video(detector):
    frames = list(read_frames("no_face.mp4", step=6).values())
    assert len(frames) >= 15 and frames[0].shape == (540, 960, 3)
    for start in range(0, len(frames), 8):
        assert all(dets == [] for dets in detector.detect(frames[start : start + 8]))


def test_five_faces_in_multi_face_image(detector):
    image = read_image("multi_face.jpg")
    (dets,) = detector.detect([image])
    assert len(dets) == 5
    scores = [d.score for d in dets]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.9
    for det in dets:
        check_geometry(det, *image.shape[:2])
    boxes = as_arrays(dets)[0]
    assert max(iou(boxes[i], boxes[j]) for i in range(5) for j in range(i + 1, 5)) < 0.1


def test_min_score_filters(single_face_frames):
    frame = single_face_frames[0]
    strict = MTCNNDetector(DetectConfig(min_score=1.01))
    assert strict.detect([frame]) == [[]]


def test_batch_equals_one_at_a_time(detector, single_face_frames):
    frames = [single_face_frames[i] for i in (0, 24, 48, 66)] + [read_frames("WolfgangLanger_Pexels.mp4", 1, 1)[0]]
    batched = detector.detect(frames)
    for frame, dets in zip(frames, batched, strict=True):
        (alone,) = detector.detect([frame])
        assert len(alone) == len(dets) == 1
        np.testing.assert_allclose(alone[0].box_xyxy, dets[0].box_xyxy, atol=1e-3)
        np.testing.assert_allclose(alone[0].landmarks, dets[0].landmarks, atol=1e-3)
        assert abs(alone[0].score - dets[0].score) < 1e-5


def test_downscaled_detection_is_in_source_pixels(single_face_frames):
    image = read_image("multi_face.jpg")  # 1000 x 667
    frame = single_face_frames[36]  # 640 x 360
    full = MTCNNDetector(DetectConfig(detect_size_px=0, min_face_px=40))
    small = MTCNNDetector(DetectConfig(detect_size_px=480, min_face_px=40))
    for picture in (image, frame):
        (reference,) = full.detect([picture])
        (scaled,) = small.detect([picture])
        assert len(scaled) == len(reference) > 0
        ref_boxes, _, ref_marks = as_arrays(reference)
        for det in scaled:
            k = int(np.argmax([iou(det.box_xyxy, r) for r in ref_boxes]))
            assert iou(det.box_xyxy, ref_boxes[k]) > 0.8
            side = ref_boxes[k, 2] - ref_boxes[k, 0]
            assert np.abs(det.landmarks - ref_marks[k]).max() < 0.08 * side
            check_geometry(det, *picture.shape[:2])


def test_min_face_is_in_source_pixels():
    image = read_image("multi_face.jpg")  # faces are about 90-130 px wide
    for size in (0, 500):
        assert len(MTCNNDetector(DetectConfig(detect_size_px=size, min_face_px=60)).detect([image])[0]) == 5
        assert MTCNNDetector(DetectConfig(detect_size_px=size, min_face_px=400)).detect([image]) == [[]]


# --- against facenet-pytorch 2.6.0 ---------------------------------------------------------


def test_matches_facenet_pytorch_reference():
    reference = json.loads((DATA / "mtcnn_reference.json").read_text())
    settings = reference["settings"]
    config = DetectConfig(
        detect_size_px=settings["detect_size_px"],
        min_face_px=settings["min_face_px"],
        thresholds=tuple(settings["thresholds"]),
        pyramid_factor=settings["pyramid_factor"],
        min_score=0.0,
    )
    detector = MTCNNDetector(config)
    wanted: dict[str, set[int]] = {}
    for item in reference["items"]:
        if item["frame"] is not None:
            wanted.setdefault(item["file"], set()).add(item["frame"])
    videos = {name: read_frames(name, step=1, limit=max(indices) + 1) for name, indices in wanted.items()}
    for item in reference["items"]:
        image = read_image(item["file"]) if item["frame"] is None else videos[item["file"]][item["frame"]]
        assert list(image.shape) == item["shape"]
        (dets,) = detector.detect([image])
        boxes, scores, marks = as_arrays(dets)
        ref_boxes = np.array(item["boxes"]) - np.array([1.0, 1.0, 0.0, 0.0])  # to edge coordinates
        assert len(dets) == len(item["scores"]), item["file"]
        np.testing.assert_allclose(boxes, ref_boxes, atol=0.75)
        np.testing.assert_allclose(marks, np.array(item["landmarks"]), atol=0.75)
        np.testing.assert_allclose(scores, np.array(item["scores"]), atol=1e-3)


# --- building blocks ---------------------------------------------------------------------------


def test_area_resampling_equals_torch_area_interpolation():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 37, 53, 3), dtype=torch.uint8, generator=gen)
    table = B.integral_images(images)
    nchw = images.permute(0, 3, 1, 2).float()
    torch.testing.assert_close(B.area_resize(table, 17, 29), F.interpolate(nchw, (17, 29), mode="area"))
    boxes = torch.tensor([[3.7, 2.2, 30.9, 21.5], [-5.0, -3.0, 10.0, 12.0], [40.0, 20.0, 80.0, 60.0]])
    windows, valid = B.crop_windows(boxes, 53, 37)
    assert valid.tolist() == [True, True, True]
    assert windows.tolist() == [[1, 21, 2, 30], [0, 12, 0, 10], [19, 37, 39, 53]]
    image_idx = torch.tensor([1, 0, 1])
    crops = B.area_resample(table, image_idx, windows, 24, 24)
    for k, (r0, r1, c0, c1) in enumerate(windows.tolist()):
        expected = F.interpolate(nchw[image_idx[k] : image_idx[k] + 1, :, r0:r1, c0:c1], (24, 24), mode="area")
        torch.testing.assert_close(crops[k : k + 1], expected)
    _, valid = B.crop_windows(torch.tensor([[60.0, 5.0, 70.0, 15.0]]), 53, 37)
    assert valid.tolist() == [False]


def test_nms_min_drops_nested_boxes_per_image():
    boxes = np.array([[0, 0, 99, 99], [10, 10, 49, 49], [200, 0, 299, 99], [10, 10, 49, 49]], dtype=np.float32)
    scores = np.array([0.9, 0.95, 0.8, 0.7], dtype=np.float32)
    image_idx = np.array([0, 0, 0, 1])
    keep = B.nms_min(boxes, scores, image_idx, 0.7)
    assert sorted(keep.tolist()) == [1, 2, 3]  # the big box contains the better-scored small one


def test_small_empty_and_invalid_inputs(detector):
    assert detector.detect([]) == []
    assert detector.detect([np.zeros((8, 8, 3), np.uint8)]) == [[]]
    assert detector.detect([np.full((120, 160, 3), 128, np.uint8)] * 2) == [[], []]
    with pytest.raises(ValueError):
        detector.detect([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError):
        detector.detect([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 40, 3), np.uint8)])


def test_invalid_config_raises_config_error():
    with pytest.raises(ConfigError, match="pyramid_factor"):
        MTCNNDetector(replace(DetectConfig(), pyramid_factor=1.0))
    with pytest.raises(ConfigError, match="thresholds"):
        MTCNNDetector(replace(DetectConfig(), thresholds=(0.6, 0.7)))


# --- weights -------------------------------------------------------------------------------------


@pytest.fixture()
def weights_copy(tmp_path: Path) -> Path:
    target = tmp_path / "weights"
    shutil.copytree(shipped_dir("weights"), target)
    return target


def test_shipped_weights_match_manifest_and_card():
    root = shipped_dir("weights")
    manifest = json.loads((root / "manifest.json").read_text())
    card = json.loads((root / "mtcnn" / "card.json").read_text())
    for name in ("pnet", "rnet", "onet"):
        assert manifest[f"mtcnn/{name}.safetensors"] == card["sha256"][f"{name}.safetensors"]
    assert "MIT" in (root / "mtcnn" / "LICENSE").read_text()


def test_corrupt_weight_file_raises_weights_error(weights_copy):
    path = weights_copy / "mtcnn" / "rnet.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"rnet\.safetensors"):
        MTCNNDetector(DetectConfig(), weights_dir=weights_copy)


def test_missing_weight_file_raises_weights_error(weights_copy):
    (weights_copy / "mtcnn" / "onet.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"onet\.safetensors"):
        MTCNNDetector(DetectConfig(), weights_dir=weights_copy)


def test_missing_manifest_raises_weights_error(weights_copy):
    (weights_copy / "manifest.json").unlink()
    with pytest.raises(WeightsError, match="manifest"):
        MTCNNDetector(DetectConfig(), weights_dir=weights_copy)


def test_copied_weights_load(weights_copy):
    detector = MTCNNDetector(DetectConfig(), weights_dir=weights_copy)
    assert len(detector.detect([read_image("single_face.jpg")])[0]) == 1
