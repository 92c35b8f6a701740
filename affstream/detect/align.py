"""Landmark alignment: warp every face of a chunk of frames to a canonical crop, on the device.

Each face's five landmarks (left eye, right eye, nose tip, left mouth corner, right mouth
corner; "left" = image left) are mapped by a least-squares similarity (rotation, uniform
scale, translation) onto a canonical template, and the crop is sampled bilinearly with
``grid_sample``: one call for all faces of all frames.

Pixel convention: coordinates are in pixels with pixel (i, j) centred at x = i, y = j
(the convention of OpenCV's ``warpAffine`` and of detector landmarks), so an image of
width W spans x in [-0.5, W - 0.5].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The widely used 5-point template for 112 x 112 face crops (ArcFace / InsightFace):
# left eye, right eye, nose tip, left mouth corner, right mouth corner, in pixels.
TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
_TEMPLATE_SIDE = 112.0


def canonical_template(size: int, face_scale: float) -> torch.Tensor:
    """Landmark positions in an S x S crop (S = ``size``), shape (5, 2) float32 pixels.

    Starts from the 112 x 112 template, centres it horizontally (mean landmark x on the
    crop's middle column; vertical placement relative to the 112 frame's centre is kept),
    and scales it so that the 112-pixel frame spans ``face_scale`` of the crop side.
    ``face_scale = 1`` reproduces the usual tight 112 crop (rescaled to S); smaller values
    show the same face smaller, with more context (hair, chin, background) around it.
    """
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    if not 0.0 < face_scale <= 4.0:
        raise ValueError(f"face_scale must be in (0, 4], got {face_scale}")
    points = torch.tensor(TEMPLATE_112, dtype=torch.float64)
    centre_112 = (_TEMPLATE_SIDE - 1.0) / 2.0
    offset = torch.tensor([points[:, 0].mean().item(), centre_112], dtype=torch.float64)
    scale = face_scale * size / _TEMPLATE_SIDE
    centre = (size - 1.0) / 2.0
    return ((points - offset) * scale + centre).to(torch.float32)


def similarity_transforms(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity maps from each landmark set onto the template.

    src: (N, K, 2) source points (K >= 2), dst: (K, 2) target points, same units.
    Returns (N, 2, 3) float32 matrices [sR | t] with x_dst ~= sR @ x_src + t, where R is
    a rotation (never a reflection) and s > 0. This is Umeyama's solution written in its
    closed 2-D form: with centred points p (source) and q (target),
    s cos(theta) = sum(p . q) / sum|p|^2 and s sin(theta) = sum(p x q) / sum|p|^2.
    Batched over N without a Python loop. Degenerate sources (all points equal) give a
    zero matrix, i.e. every crop pixel maps to that point.
    """
    if src.ndim != 3 or src.shape[-1] != 2 or tuple(dst.shape) != tuple(src.shape[1:]):
        raise ValueError(
            f"expected src (N, K, 2) and dst (K, 2), got {tuple(src.shape)}, {tuple(dst.shape)}"
        )
    src = src.to(torch.float32)
    dst = dst.to(device=src.device, dtype=torch.float32)
    src_mean = src.mean(dim=1, keepdim=True)
    dst_mean = dst.mean(dim=0)
    p = src - src_mean
    q = (dst - dst_mean).unsqueeze(0)
    spread = (p * p).sum(dim=(1, 2)).clamp_min(1e-12)
    a = (p * q).sum(dim=(1, 2)) / spread
    b = (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]).sum(dim=1) / spread
    linear = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=-2)
    shift = dst_mean.unsqueeze(0) - (linear @ src_mean.transpose(1, 2)).squeeze(-1)
    return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)


def _invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) affine maps -> their inverses, (N, 2, 3). Singular maps give zeros."""
    linear, shift = matrices[..., :2], matrices[..., 2:]
    a, b = linear[..., 0, 0], linear[..., 0, 1]
    c, d = linear[..., 1, 0], linear[..., 1, 1]
    det = a * d - b * c
    safe = torch.where(det.abs() > 1e-12, det, torch.ones_like(det))
    inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    inv = inv / safe[..., None, None]
    inv = torch.where((det.abs() > 1e-12)[..., None, None], inv, torch.zeros_like(inv))
    return torch.cat([inv, -(inv @ shift)], dim=-1)


def _sampling_thetas(to_crop: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """affine_grid thetas (N, 2, 3) from source-pixel -> crop-pixel maps.

    affine_grid (align_corners=False) gives, for crop pixel j, the normalised coordinate
    v = (2j + 1) / S - 1; grid_sample reads source pixel x at u = (2x + 1) / W - 1. Theta
    is therefore  normalise_source o inverse(to_crop) o pixel_of_crop.
    """
    device, dtype = to_crop.device, to_crop.dtype
    to_source = _invert_affine(to_crop)
    homog = torch.zeros((to_crop.shape[0], 3, 3), device=device, dtype=dtype)
    homog[:, :2] = to_source
    homog[:, 2, 2] = 1.0
    half = size / 2.0
    crop_pixels = torch.tensor(
        [[half, 0.0, (size - 1) / 2.0], [0.0, half, (size - 1) / 2.0], [0.0, 0.0, 1.0]],
        device=device, dtype=dtype,
    )
    normalise = torch.tensor(
        [
            [2.0 / width, 0.0, 1.0 / width - 1.0],
            [0.0, 2.0 / height, 1.0 / height - 1.0],
            [0.0, 0.0, 1.0],
        ],
        device=device, dtype=dtype,
    )
    return (normalise @ homog @ crop_pixels)[:, :2]


def _rank_within_groups(groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """For each element, how many earlier elements share its group: (N,) int64."""
    order = torch.argsort(groups, stable=True)
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(groups)
    rank[order] = torch.arange(groups.shape[0], device=groups.device) - starts[groups[order]]
    return rank


def align_faces(
    frames: torch.Tensor,
    frame_slot: torch.Tensor,
    landmarks: torch.Tensor,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    face_scale: float,
) -> torch.Tensor:
    """Aligned, normalised crops of N faces taken from F frames, in one sampling call.

    frames:     (F, 3, H, W) uint8 RGB on the device (a chunk of frames stacked once).
    frame_slot: (N,) int64, index into ``frames`` of each face's frame.
    landmarks:  (N, 5, 2) float32 source pixels (see the module's pixel convention).
    size:       S, side of the square crop in pixels.
    mean, std:  per-channel RGB normalisation for values in [0, 1] (the backbone's).
    face_scale: fraction of the crop spanned by the template (see canonical_template).

    Returns (N, 3, S, S) float32 on ``frames.device``: ((pixel / 255) - mean) / std, with
    bilinear sampling and black (zero) padding outside the frame. N = 0 gives (0, 3, S, S).
    Faces are packed per frame (each frame is converted to float once, however many faces
    it holds), costing one host sync for the largest face count per frame.
    """
    device = frames.device
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames (F, 3, H, W), got {tuple(frames.shape)}")
    count = int(landmarks.shape[0])
    if count == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.float32, device=device)
    height, width = int(frames.shape[2]), int(frames.shape[3])
    template = canonical_template(size, face_scale).to(device)
    to_crop = similarity_transforms(landmarks.to(device=device, dtype=torch.float32), template)
    grids = F.affine_grid(
        _sampling_thetas(to_crop, size, height, width), [count, 3, size, size], align_corners=False
    )

    slots = frame_slot.to(device=device, dtype=torch.int64)
    used, group = torch.unique(slots, return_inverse=True)
    rank = _rank_within_groups(group, int(used.shape[0]))
    per_frame = int(rank.max().item()) + 1
    packed = grids.new_zeros((used.shape[0], per_frame, size, size, 2))
    packed[group, rank] = grids
    packed = packed.view(used.shape[0], per_frame * size, size, 2)

    source = frames.index_select(0, used).to(torch.float32)
    sampled = F.grid_sample(
        source, packed, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    sampled = sampled.view(used.shape[0], 3, per_frame, size, size).permute(0, 2, 1, 3, 4)
    crops = sampled[group, rank]

    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (crops / 255.0 - mean_t) / std_t
