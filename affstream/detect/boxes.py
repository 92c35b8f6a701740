"""Box geometry for the MTCNN cascade, batched on the device.

Box convention inside the cascade (inherited from the original Matlab MTCNN, which the
shipped weights were trained and validated with): a box ``(x1, y1, x2, y2)`` is float32
pixels where ``x1, y1`` are the *1-based* indices of its first column/row and ``x2, y2``
the 1-based indices of its last ones; its width is ``x2 - x1 + 1``. In continuous
pixel-edge coordinates (0 at the image's left edge) it spans ``[x1 - 1, x2]``;
:func:`to_edge_boxes` converts. Landmarks are computed directly in edge coordinates.

Candidates of many images travel together: every per-box tensor has a leading dim K
and an ``image_idx`` (K,) int64 says which image of the batch each box belongs to.
Nothing here moves data to the host except :func:`nms_min`, which works on host arrays
after the single transfer at the end of detection.
"""

from __future__ import annotations

import numpy as np
import torch

PNET_STRIDE = 2  # px of P-Net input between neighbouring output cells
PNET_CELL = 12  # px, side of the P-Net receptive window (smallest detectable face)


def pnet_proposals(
    face_prob: torch.Tensor, offsets: torch.Tensor, scale: float, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn one pyramid level's P-Net map into candidate boxes in working-image pixels.

    face_prob: (N, H', W') float32 face probability per output cell.
    offsets:   (N, 4, H', W') float32 box offsets (dx1, dy1, dx2, dy2) in cell units.
    scale:     the level's resize factor (level pixels / working-image pixels).
    Returns boxes (M, 4), scores (M,), offsets (M, 4), image_idx (M,) int64 for every
    cell with ``face_prob >= threshold``.
    """
    mask = face_prob >= threshold
    cells = mask.nonzero()  # (M, 3): image, row, col -- same order as mask indexing
    scores = face_prob[mask]
    cell_offsets = offsets.permute(0, 2, 3, 1)[mask]
    xy = cells[:, [2, 1]].to(face_prob.dtype)
    top_left = torch.floor((PNET_STRIDE * xy + 1) / scale)
    bottom_right = torch.floor((PNET_STRIDE * xy + PNET_CELL) / scale)
    boxes = torch.cat([top_left, bottom_right], dim=1)
    return boxes, scores, cell_offsets, cells[:, 0]


def regress_proposals(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply P-Net offsets: (K, 4) boxes shifted by offsets times ``x2 - x1`` / ``y2 - y1``.

    (P-Net's cell regression uses the side without the +1, as the reference does.)
    """
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def regress_boxes(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply R-Net/O-Net offsets (K, 4) in units of the box side ``x2 - x1 + 1``."""
    size = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)
    return boxes + offsets * size


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(K, 4) boxes grown to squares of side max(w, h), same centre (w = x2 - x1)."""
    size = boxes[:, 2:] - boxes[:, :2]
    side = size.max(dim=1, keepdim=True).values
    top_left = boxes[:, :2] + 0.5 * size - 0.5 * side
    return torch.cat([top_left, top_left + side], dim=1)


def crop_windows(boxes: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer pixel windows of (K, 4) boxes, clipped to a ``width`` x ``height`` image.

    Coordinates are truncated toward zero, then clipped, as the reference does (the
    part of a box outside the image is cut off, not zero-padded).
    Returns windows (K, 4) int64 ``(row0, row1, col0, col1)``, 0-based half-open, and
    valid (K,) bool; an empty window is replaced by the 1x1 window at the origin and
    marked invalid.
    """
    corners = boxes.trunc().long()
    col0 = corners[:, 0].clamp(min=1) - 1
    row0 = corners[:, 1].clamp(min=1) - 1
    col1 = corners[:, 2].clamp(max=width)
    row1 = corners[:, 3].clamp(max=height)
    valid = (col1 > col0) & (row1 > row0)
    windows = torch.stack([row0, row1, col0, col1], dim=1)
    fallback = torch.tensor([0, 1, 0, 1], dtype=windows.dtype, device=windows.device)
    windows = torch.where(valid[:, None], windows, fallback)
    return windows, valid


def integral_images(images: torch.Tensor) -> torch.Tensor:
    """Summed-area tables of (N, H, W, C) integer pixels (uint8 or integer-valued).

    Returns (N, H + 1, W + 1, C) int32 (int64 for frames too large for int32) with a
    zero first row and column: ``T[n, r, c]`` is the sum of the pixels above and left
    of ``(r, c)``. Integer sums make every area average exact.
    """
    n, h, w, c = images.shape
    dtype = torch.int32 if (h + 1) * (w + 1) * 255 < 2**31 else torch.int64
    table = torch.zeros((n, h + 1, w + 1, c), dtype=dtype, device=images.device)
    table[:, 1:, 1:] = images.cumsum(dim=1, dtype=dtype).cumsum(dim=2, dtype=dtype)
    return table


def _bins(start: torch.Tensor, stop: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pooling bins of [start, stop) in ``size`` parts: (K, size) first
    index and (exclusive) end index of each bin."""
    length = (stop - start)[:, None]
    i = torch.arange(size, device=start.device)[None, :]
    first = start[:, None] + (i * length) // size
    end = start[:, None] + ((i + 1) * length + size - 1) // size
    return first, end


def area_resample(
    table: torch.Tensor, image_idx: torch.Tensor, windows: torch.Tensor, out_h: int, out_w: int
) -> torch.Tensor:
    """Resample K pixel windows to ``out_h`` x ``out_w`` by area averaging.

    table:     (N, H + 1, W + 1, C) from :func:`integral_images`.
    image_idx: (K,) int64 image of each window; windows: (K, 4) int64
               ``(row0, row1, col0, col1)`` as from :func:`crop_windows`.
    Returns (K, C, out_h, out_w) float32 pixel values (0..255) in channels-last memory,
    equal to ``F.interpolate(window, (out_h, out_w), mode="area")`` of each window.
    """
    _, rows, cols, channels = table.shape
    row_first, row_end = _bins(windows[:, 0], windows[:, 1], out_h)
    col_first, col_end = _bins(windows[:, 2], windows[:, 3], out_w)
    channel = torch.arange(channels, device=table.device)
    flat = table.reshape(-1)

    def corner(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        row_base = ((image_idx[:, None] * rows + r) * cols)[:, :, None, None]
        return flat[(row_base + c[:, None, :, None]) * channels + channel]

    total = corner(row_end, col_end) - corner(row_first, col_end) - corner(row_end, col_first)
    total = total + corner(row_first, col_first)
    count = (row_end - row_first)[:, :, None, None] * (col_end - col_first)[:, None, :, None]
    return (total.to(torch.float32) / count.to(torch.float32)).permute(0, 3, 1, 2)


def area_resize(table: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Whole images of a (N, H + 1, W + 1, C) integral table resized to ``out_h`` x
    ``out_w`` by area averaging: (N, C, out_h, out_w) float32 pixels, channels-last,
    equal to ``F.interpolate(images, (out_h, out_w), mode="area")``."""
    _, rows, cols, _ = table.shape
    zero = torch.zeros(1, dtype=torch.long, device=table.device)
    row_first, row_end = (b[0] for b in _bins(zero, zero + rows - 1, out_h))
    col_first, col_end = (b[0] for b in _bins(zero, zero + cols - 1, out_w))
    band = table.index_select(1, row_end) - table.index_select(1, row_first)
    total = band.index_select(2, col_end) - band.index_select(2, col_first)
    area = (row_end - row_first)[:, None, None] * (col_end - col_first)[None, :, None]
    return (total.to(torch.float32) / area.to(torch.float32)).permute(0, 3, 1, 2)


def to_edge_boxes(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) cascade boxes -> continuous pixel-edge ``x1, y1, x2, y2`` (0 = left edge)."""
    return boxes - np.array([1.0, 1.0, 0.0, 0.0], dtype=boxes.dtype)


def nms_min(boxes: np.ndarray, scores: np.ndarray, image_idx: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS per image with overlap = intersection / min(area_a, area_b).

    boxes: (K, 4) float cascade boxes (areas count the +1 pixel, as the reference);
    scores: (K,); image_idx: (K,) int. Returns kept indices (int64), best score first
    within each image. A box is dropped when its overlap with a kept one exceeds
    ``threshold``.
    """
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    for image in np.unique(image_idx):
        order = np.flatnonzero(image_idx == image)
        order = order[np.argsort(-scores[order], kind="stable")]
        while order.size:
            best, rest = order[0], order[1:]
            keep.append(int(best))
            inter_w = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1
            inter_h = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1
            inter = np.maximum(inter_w, 0.0) * np.maximum(inter_h, 0.0)
            overlap = inter / np.minimum(area[best], area[rest])
            order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)
