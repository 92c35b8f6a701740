"""Landmark alignment geometry: template, similarity fit, sampling convention, packing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from affstream.detect.align import (
    TEMPLATE_112,
    align_faces,
    canonical_template,
    similarity_transforms,
)

DATA = Path(__file__).parent / "data"
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
# Rough hand-placed landmarks of the face in tests/data/single_face.jpg (572 x 562):
# left eye, right eye, nose tip, left mouth corner, right mouth corner.
SINGLE_FACE_LANDMARKS = [[232, 244], [318, 243], [273, 290], [245, 328], [310, 326]]


def similarity(angle_rad: float, scale: float, tx: float, ty: float) -> torch.Tensor:
    c, s = scale * math.cos(angle_rad), scale * math.sin(angle_rad)
    return torch.tensor([[c, -s, tx], [s, c, ty]], dtype=torch.float32)


def apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_template_scaling_and_centring():
    size, scale = 224, 0.5
    template = canonical_template(size, scale)
    assert template.shape == (5, 2) and template.dtype == torch.float32
    base = torch.tensor(TEMPLATE_112)
    factor = scale * size / 112.0
    # Pairwise distances scale exactly; the landmarks' mean x sits on the middle column.
    assert torch.allclose(torch.cdist(template, template), torch.cdist(base, base) * factor, atol=1e-3)
    assert template[:, 0].mean().item() == pytest.approx((size - 1) / 2, abs=1e-4)
    # Eyes above nose above mouth, and the whole template inside the crop.
    assert template[0, 1] < template[2, 1] < template[3, 1]
    assert template.min() > 0 and template.max() < size - 1
    # face_scale 1 at 112 px keeps the published vertical positions.
    assert torch.allclose(canonical_template(112, 1.0)[:, 1], base[:, 1], atol=1e-4)


def test_similarity_recovers_known_transforms():
    template = canonical_template(224, 0.72)
    knowns = [similarity(0.3, 1.7, 40.0, -12.0), similarity(-2.5, 0.4, 300.0, 90.0), similarity(0.0, 1.0, 0.0, 0.0)]
    src = torch.stack([apply(m, template) for m in knowns])
    fitted = similarity_transforms(src, template)
    assert fitted.shape == (3, 2, 3)
    for matrix, points in zip(fitted, src, strict=True):
        assert torch.allclose(apply(matrix, points), template, atol=1e-3)
    # The fit is the inverse of the known map: composing them gives the identity.
    for matrix, known in zip(fitted, knowns, strict=True):
        composed = matrix[:, :2] @ known[:, :2]
        assert torch.allclose(composed, torch.eye(2), atol=1e-5)


def test_similarity_never_reflects():
    template = canonical_template(112, 1.0)
    mirrored = template.clone()
    mirrored[:, 0] = 200.0 - mirrored[:, 0]
    fitted = similarity_transforms(mirrored[None], template)[0]
    assert torch.linalg.det(fitted[:, :2]) > 0
    assert fitted[0, 0] == pytest.approx(fitted[1, 1].item()) and fitted[0, 1] == pytest.approx(-fitted[1, 0].item())


def ramp_frame(height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) uint8: red = x, green = y, blue = 100 (pixel centres at integers)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs, ys, torch.full_like(xs, 100)]).to(torch.uint8)[None]


def test_crop_samples_exactly_where_the_transform_says():
    size, face_scale = 48, 0.8
    template = canonical_template(size, face_scale)
    to_source = similarity(0.35, 1.6, 70.0, 30.0)  # crop pixel -> source pixel
    landmarks = apply(to_source, template)[None]
    crop = align_faces(ramp_frame(150, 200), torch.tensor([0]), landmarks,
                       size=size, mean=ZERO, std=ONE, face_scale=face_scale)[0] * 255.0
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    expected = apply(to_source, torch.stack([xs, ys], -1).reshape(-1, 2)).reshape(size, size, 2)
    inside = (expected[..., 0] >= 0) & (expected[..., 0] <= 199) & (expected[..., 1] >= 0) & (expected[..., 1] <= 149)
    assert inside.float().mean() > 0.9
    assert torch.allclose(crop[0][inside], expected[..., 0][inside], atol=1e-2)
    assert torch.allclose(crop[1][inside], expected[..., 1][inside], atol=1e-2)
    assert torch.allclose(crop[2][inside], torch.full_like(crop[2][inside], 100.0), atol=1e-3)


def test_dots_on_landmarks_land_on_the_template():
    size, face_scale = 64, 0.9
    template = canonical_template(size, face_scale)
    to_source = similarity(-0.6, 2.0, 120.0, 40.0)
    landmarks = apply(to_source, template)
    frame = torch.zeros(1, 3, 240, 320, dtype=torch.uint8)
    for x, y in landmarks.round().long().tolist():
        frame[0, :, y - 2 : y + 3, x - 2 : x + 3] = 255
    crop = align_faces(frame, torch.tensor([0]), landmarks[None],
                       size=size, mean=ZERO, std=ONE, face_scale=face_scale)[0, 0]
    for x, y in template.round().long().tolist():
        assert crop[y, x] > 0.9, "each dot must appear at its template position"
    assert crop.mean() < 0.1, "and nowhere much else"


def test_normalisation_and_black_padding():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    frame = torch.empty(1, 3, 100, 100, dtype=torch.uint8)
    frame[0, 0], frame[0, 1], frame[0, 2] = 204, 51, 0
    template = canonical_template(32, 0.9)
    centred = template - template.mean(0) + 50.0  # face in the middle of the frame
    crop = align_faces(frame, torch.tensor([0]), centred[None], size=32, mean=mean, std=std, face_scale=0.9)[0]
    expected = [(204 / 255 - 0.5) / 0.2, (51 / 255 - 0.4) / 0.25, (0 - 0.3) / 0.5]
    for channel in range(3):
        assert crop[channel, 16, 16].item() == pytest.approx(expected[channel], abs=1e-5)
    far_away = template + 1000.0  # crop entirely outside the frame: zero pixels, normalised
    crop = align_faces(frame, torch.tensor([0]), far_away[None], size=32, mean=mean, std=std, face_scale=0.9)[0]
    for channel in range(3):
        assert torch.allclose(crop[channel], torch.full((32, 32), -mean[channel] / std[channel]))


def test_no_faces_gives_empty_batch():
    frames = torch.zeros(2, 3, 20, 20, dtype=torch.uint8)
    out = align_faces(frames, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 5, 2),
                      size=40, mean=ZERO, std=ONE, face_scale=0.7)
    assert out.shape == (0, 3, 40, 40) and out.dtype == torch.float32


def test_many_faces_many_frames_match_one_by_one():
    gen = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (3, 3, 90, 120), dtype=torch.uint8, generator=gen)
    template = canonical_template(24, 0.7)
    slots = torch.tensor([2, 0, 2, 2, 1])
    maps = [similarity(0.2 * i, 0.8 + 0.1 * i, 20.0 + 10 * i, 15.0 + 5 * i) for i in range(5)]
    landmarks = torch.stack([apply(m, template) for m in maps])
    together = align_faces(frames, slots, landmarks, size=24, mean=ZERO, std=ONE, face_scale=0.7)
    assert together.shape == (5, 3, 24, 24)
    for i, slot in enumerate(slots.tolist()):
        alone = align_faces(frames[slot : slot + 1], torch.tensor([0]), landmarks[i : i + 1],
                            size=24, mean=ZERO, std=ONE, face_scale=0.7)
        assert torch.allclose(together[i], alone[0], atol=1e-6)
    assert not torch.allclose(together[0], together[2])


def load_single_face() -> torch.Tensor:
    from PIL import Image

    image = np.array(Image.open(DATA / "single_face.jpg").convert("RGB"))
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def test_real_face_geometry():
    frame = load_single_face()[None]
    landmarks = torch.tensor([SINGLE_FACE_LANDMARKS], dtype=torch.float32)
    template = canonical_template(224, 0.72)
    matrix = similarity_transforms(landmarks, template)[0]
    # An upright face: hardly any rotation; hand-placed points fit the template to a few px.
    assert abs(math.atan2(matrix[1, 0].item(), matrix[0, 0].item())) < math.radians(5)
    residual = (apply(matrix, landmarks[0]) - template).norm(dim=1)
    assert residual.max() < 6.0
    # The scale is the ratio of the point clouds' spreads (exactly so for a perfect fit).
    scale = math.hypot(matrix[0, 0].item(), matrix[1, 0].item())
    spread = lambda pts: (pts - pts.mean(0)).norm(dim=1).pow(2).sum().sqrt().item()  # noqa: E731
    assert scale == pytest.approx(spread(template) / spread(landmarks[0]), rel=0.03)
    crop = align_faces(frame, torch.tensor([0]), landmarks, size=224, mean=ZERO, std=ONE, face_scale=0.72)[0]
    # Skin at the cheeks is brighter in red than blue; the dark shirt fills the bottom rows.
    cheek = crop[:, 125:140, 70:85].mean(dim=(1, 2))
    assert cheek[0] > cheek[2] + 0.1
    assert crop[:, 215:, 60:160].mean() < crop[:, 120:150, 70:150].mean()


def test_rotated_face_gives_the_same_crop():
    image = load_single_face()
    _height, width = image.shape[1:]
    landmarks = torch.tensor([SINGLE_FACE_LANDMARKS], dtype=torch.float32)
    # torch.rot90 over (H, W) by +1 turns the picture 90 degrees counter-clockwise:
    # pixel (x, y) moves to (y, W - 1 - x).
    rotated = torch.rot90(image, 1, dims=(1, 2)).contiguous()
    assert rotated[:, width - 1 - 300, 200].tolist() == image[:, 200, 300].tolist()
    rotated_landmarks = torch.stack([landmarks[..., 1], (width - 1) - landmarks[..., 0]], dim=-1)
    kwargs = dict(size=112, mean=ZERO, std=ONE, face_scale=0.72)
    upright = align_faces(image[None], torch.tensor([0]), landmarks, **kwargs)
    turned = align_faces(rotated[None], torch.tensor([0]), rotated_landmarks, **kwargs)
    assert (upright - turned).abs().max() < 2e-3
