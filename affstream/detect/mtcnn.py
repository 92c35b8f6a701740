"""MTCNN face detector (Zhang et al. 2016), batched over the frames of a video.

The cascade: an image pyramid scanned by P-Net (12 px cells, stride 2) proposes boxes;
NMS per level and across levels; squared boxes are cropped to 24 px for R-Net, which
rescores and refines them; survivors are cropped to 48 px for O-Net, which rescores,
refines and places five landmarks; a final 'Min'-overlap NMS removes nested boxes.

Every stage runs on all frames of a batch at once (one P-Net call per pyramid level
over the stacked frames, R-Net and O-Net over the crops of all frames together), stays
on the device, and the results reach the host in one transfer at the end.

Weights are the Caffe/TF MTCNN as converted by facenet-pytorch 2.6.0 (MIT), shipped as
safetensors in ``weights/mtcnn/`` and checked against ``weights/manifest.json``. Their
input contract: RGB float pixels normalised as ``(x - 127.5) * 0.0078125``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import batched_nms

from ..config import DetectConfig
from ..errors import ConfigError, WeightsError
from ..records import Detection
from ..weights import load_verified_state
from . import boxes as B

log = logging.getLogger("affstream")

PIXEL_MEAN = 127.5  # subtracted from 0..255 pixel values
PIXEL_SCALE = 0.0078125  # 1/128, applied after the mean
RNET_SIZE = 24  # px, R-Net input side
ONET_SIZE = 48  # px, O-Net input side
LEVEL_NMS_IOU = 0.5  # NMS within one pyramid level
PYRAMID_NMS_IOU = 0.7  # NMS across the levels of an image
RNET_NMS_IOU = 0.7
ONET_NMS_MIN = 0.7  # final NMS, intersection over the smaller box
CROP_CHUNK = 512  # crops resampled and scored per R-Net/O-Net call (bounds memory)
FOLLOW_GROW = 1.0  # side ratio of the searched box to the predicted one (1.0: O-Net regresses best; 1.1 and 1.2 were worse)
WEIGHT_FILES = {"pnet": "mtcnn/pnet.safetensors", "rnet": "mtcnn/rnet.safetensors", "onet": "mtcnn/onet.safetensors"}


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    """(K, C, H, W) -> (K, W*H*C) in (width, height, channel) order, as the TF weights expect."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal net, fully convolutional.

    forward: (N, 3, H, W) normalised float32 -> face_prob (N, H', W') and box offsets
    (N, 4, H', W'), with H' = ceil((H - 2) / 2) - 4 (one cell per 2 input px).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        face_prob = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return face_prob, self.conv4_2(x)


class RNet(nn.Module):
    """Refine net. forward: (K, 3, 24, 24) -> face_prob (K,), box offsets (K, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_whc(self.prelu3(self.conv3(x)))))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net. forward: (K, 3, 48, 48) -> face_prob (K,), box offsets (K, 4),
    landmarks (K, 10): 5 x then 5 y as fractions of the box side."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_whc(self.prelu4(self.conv4(x)))))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def _build_net(net: nn.Module, relpath: str, weights_dir: Path | None, device: torch.device) -> nn.Module:
    state = load_verified_state(relpath, weights_dir)
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise WeightsError(f"{relpath}: tensors do not match the network; reinstall affstream") from None
    net = net.to(device=device, dtype=torch.float32, memory_format=torch.channels_last)
    return net.eval().requires_grad_(False)


def pyramid_scales(height: int, width: int, min_face: float, factor: float) -> list[float]:
    """Resize factors of the P-Net pyramid for a ``height`` x ``width`` image.

    The first level maps a ``min_face`` px face to 12 px; each next level is ``factor``
    smaller, while the image's short side still spans at least 12 px.
    """
    scale = B.PNET_CELL / min_face
    short_side = min(height, width) * scale
    scales = []
    while short_side >= B.PNET_CELL:
        scales.append(scale)
        scale *= factor
        short_side *= factor
    return scales


def _check_config(config: DetectConfig) -> None:
    """Raise ConfigError for detector settings the cascade cannot run with."""
    if not 0.0 < config.pyramid_factor < 1.0:
        raise ConfigError(f"detect.pyramid_factor must be in (0, 1), got {config.pyramid_factor}; 0.709 is usual")
    if len(config.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in config.thresholds):
        raise ConfigError(f"detect.thresholds must be three probabilities (P, R, O-Net), got {config.thresholds}")
    if config.min_face_px <= 0:
        raise ConfigError(f"detect.min_face_px must be positive, got {config.min_face_px}")
    if config.detect_size_px < 0:
        raise ConfigError(f"detect.detect_size_px must be >= 0 (0 = full size), got {config.detect_size_px}")


class MTCNNDetector:
    """Batched MTCNN over frames of one size.

    config: thresholds, pyramid factor, minimum face size (source px), downscale size and
            minimum final score (see :class:`affstream.config.DetectConfig`).
    device: where the networks run ("cpu", "cuda", "cuda:N" or a torch.device).
    weights_dir: directory holding ``manifest.json`` and ``mtcnn/``; default the shipped
            ``weights/``.
    """

    def __init__(
        self, config: DetectConfig, device: str | torch.device = "cpu", *, weights_dir: Path | None = None
    ) -> None:
        _check_config(config)
        self.config = config
        self.device = torch.device(device)
        self.pnet = _build_net(PNet(), WEIGHT_FILES["pnet"], weights_dir, self.device)
        self.rnet = _build_net(RNet(), WEIGHT_FILES["rnet"], weights_dir, self.device)
        self.onet = _build_net(ONet(), WEIGHT_FILES["onet"], weights_dir, self.device)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces in each of a batch of frames.

        images: frames, each (H, W, 3) uint8 RGB, all the same size.
        Returns one list per frame of :class:`Detection` in source pixels (boxes may reach
        slightly past the frame edge), best score first, all with ``score >= min_score``.
        """
        if len(images) == 0:
            return []
        return self.detect_frames(self.to_device(images))

    @torch.inference_mode()
    def detect_frames(self, frames: torch.Tensor) -> list[list[Detection]]:
        """:meth:`detect` on frames already on the device: (N, H, W, 3) uint8 RGB, as
        :meth:`to_device` makes them (so a caller can reuse the upload, e.g. to align)."""
        if frames.shape[0] == 0:
            return []
        work, scale_x, scale_y = self._downscale(frames)
        min_face = max(float(B.PNET_CELL), self.config.min_face_px * min(scale_x, scale_y))
        # TF32 convolutions move boxes by up to 2 px and landmarks by more (measured on
        # an H100) for no speed gain on these narrow layers: keep the detector in fp32.
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            rows = self._cascade(work, min_face)
        host = rows.cpu().numpy()  # the one device -> host transfer
        return self._to_detections(host, int(frames.shape[0]), scale_x, scale_y)

    @torch.inference_mode()
    def follow(self, frames: torch.Tensor, boxes: Sequence[np.ndarray], grow: float = FOLLOW_GROW) -> list[list[Detection]]:
        """Faces near known boxes, from the last stage (O-Net) alone: the cheap step
        between full detections when tracks are followed (every k-th frame detected).

        frames: (N, H, W, 3) uint8 on the device (:meth:`to_device`); boxes: per frame
        (M_i, 4) pixel-edge ``x1, y1, x2, y2`` in source pixels (a track's predicted box),
        each grown by ``grow`` around its centre so that a moving face stays inside.
        Returns per frame the Detections O-Net confirms (fresh box, score, landmarks),
        with the same thresholds and final NMS as :meth:`detect`; a face O-Net rejects
        is absent (its track then misses this frame).
        """
        count = int(frames.shape[0])
        if count == 0 or not any(len(b) for b in boxes):
            return [[] for _ in range(count)]
        work, scale_x, scale_y = self._downscale(frames)
        height, width = work.shape[1:3]
        scale = np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)
        parts, owners = [], []
        for index, frame_boxes in enumerate(boxes):
            for box in np.asarray(frame_boxes, dtype=np.float32).reshape(-1, 4):
                centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) * grow / 2
                parts.append(np.concatenate([centre - half, centre + half]) * scale + np.array([1, 1, 0, 0]))
                owners.append(index)
        table = B.integral_images(work)
        cascade = B.square_boxes(torch.as_tensor(np.stack(parts), dtype=torch.float32, device=work.device))
        image_idx = torch.as_tensor(owners, dtype=torch.long, device=work.device)
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            out_boxes, scores, landmarks, image_idx = self._output(table, cascade, image_idx, width, height)
        rows = torch.cat([out_boxes, scores[:, None], landmarks, image_idx[:, None].to(out_boxes.dtype)], dim=1)
        return self._to_detections(rows.cpu().numpy(), count, scale_x, scale_y)

    # --- stages -------------------------------------------------------------------

    def to_device(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack frames into one (N, H, W, 3) uint8 tensor on the device."""
        first = images[0]
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape != first.shape:
                raise ValueError(
                    f"MTCNNDetector.detect needs (H, W, 3) uint8 frames of one size; got {image.shape} "
                    f"{image.dtype} beside {first.shape}"
                )
        batch = torch.from_numpy(np.stack(images))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def _downscale(self, frames: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """Working copy whose longest side is ``detect_size_px`` (if the frame is larger).

        frames: (N, H, W, 3) uint8. Returns the (N, h, w, 3) uint8 copy (or the frames
        themselves) and the x / y factors working px per source px.
        """
        height, width = frames.shape[1:3]
        limit = self.config.detect_size_px
        if limit <= 0 or max(height, width) <= limit:
            return frames, 1.0, 1.0
        ratio = limit / max(height, width)
        size = (max(1, round(height * ratio)), max(1, round(width * ratio)))
        pixels = frames.permute(0, 3, 1, 2).to(torch.float32)
        work = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
        work = work.round().clamp(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return work, size[1] / width, size[0] / height

    def _cascade(self, work: torch.Tensor, min_face: float) -> torch.Tensor:
        """All three stages on (N, h, w, 3) uint8 pixels; returns (K, 16) float32 rows on
        the device: cascade box (4), score, landmarks x (5), landmarks y (5), image index."""
        empty = torch.zeros((0, 16), device=work.device)
        height, width = work.shape[1:3]
        table = B.integral_images(work)
        boxes, image_idx = self._propose(table, height, width, min_face)
        if boxes.shape[0] == 0:
            return empty
        boxes, image_idx = self._refine(table, boxes, image_idx, width, height)
        if boxes.shape[0] == 0:
            return empty
        boxes, scores, landmarks, image_idx = self._output(table, boxes, image_idx, width, height)
        return torch.cat([boxes, scores[:, None], landmarks, image_idx[:, None].to(boxes.dtype)], dim=1)

    def _propose(self, table: torch.Tensor, height: int, width: int,
                 min_face: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over the pyramid of the images of integral ``table``.
        Returns squared boxes (M, 4) and image_idx (M,)."""
        device = table.device
        found = []
        for scale in pyramid_scales(height, width, min_face, self.config.pyramid_factor):
            level = B.area_resize(table, int(height * scale + 1), int(width * scale + 1))
            face_prob, offsets = self.pnet((level - PIXEL_MEAN) * PIXEL_SCALE)
            boxes, scores, offs, image_idx = B.pnet_proposals(face_prob, offsets, scale, self.config.thresholds[0])
            keep = batched_nms(boxes, scores, image_idx, LEVEL_NMS_IOU)
            found.append((boxes[keep], scores[keep], offs[keep], image_idx[keep]))
        if not found:
            return torch.zeros((0, 4), device=device), torch.zeros(0, dtype=torch.long, device=device)
        boxes, scores, offs, image_idx = (torch.cat(parts) for parts in zip(*found, strict=True))
        keep = batched_nms(boxes, scores, image_idx, PYRAMID_NMS_IOU)
        boxes = B.regress_proposals(boxes[keep], offs[keep])
        return B.square_boxes(boxes), image_idx[keep]

    def _score_crops(self, net: nn.Module, table: torch.Tensor, boxes: torch.Tensor, image_idx: torch.Tensor,
                     size: int, width: int, height: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Crop boxes at ``size`` px, run ``net`` in chunks; returns its outputs and a
        (K,) bool of crops that lay (partly) inside the image."""
        windows, valid = B.crop_windows(boxes, width, height)
        outputs = []
        for start in range(0, boxes.shape[0], CROP_CHUNK):
            part = slice(start, start + CROP_CHUNK)
            crops = B.area_resample(table, image_idx[part], windows[part], size, size)
            outputs.append(net((crops - PIXEL_MEAN) * PIXEL_SCALE))
        return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True)), valid

    def _refine(self, table: torch.Tensor, boxes: torch.Tensor, image_idx: torch.Tensor,
                width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net rescoring, NMS and refinement. Returns squared boxes, image_idx."""
        (face_prob, offsets), valid = self._score_crops(self.rnet, table, boxes, image_idx, RNET_SIZE, width, height)
        passed = (face_prob > self.config.thresholds[1]) & valid
        boxes, face_prob, offsets, image_idx = boxes[passed], face_prob[passed], offsets[passed], image_idx[passed]
        keep = batched_nms(boxes, face_prob, image_idx, RNET_NMS_IOU)
        boxes = B.regress_boxes(boxes[keep], offsets[keep])
        return B.square_boxes(boxes), image_idx[keep]

    def _output(self, table: torch.Tensor, boxes: torch.Tensor, image_idx: torch.Tensor,
                width: int, height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 3: O-Net. Returns refined cascade boxes (K, 4), scores (K,), landmarks
        (K, 10) (5 x, 5 y in working-image edge coordinates) and image_idx (K,)."""
        (face_prob, offsets, marks), valid = self._score_crops(
            self.onet, table, boxes, image_idx, ONET_SIZE, width, height
        )
        passed = (face_prob > self.config.thresholds[2]) & valid
        boxes, face_prob, offsets, marks = boxes[passed], face_prob[passed], offsets[passed], marks[passed]
        side = boxes[:, 2:] - boxes[:, :2] + 1
        marks_x = side[:, :1] * marks[:, :5] + boxes[:, :1] - 1
        marks_y = side[:, 1:] * marks[:, 5:] + boxes[:, 1:2] - 1
        boxes = B.regress_boxes(boxes, offsets)
        return boxes, face_prob, torch.cat([marks_x, marks_y], dim=1), image_idx[passed]

    def _to_detections(self, rows: np.ndarray, count: int, scale_x: float, scale_y: float) -> list[list[Detection]]:
        """Host rows (K, 16) -> per-frame Detections in source pixels, after 'Min' NMS."""
        result: list[list[Detection]] = [[] for _ in range(count)]
        if rows.shape[0] == 0:
            return result
        image_idx = rows[:, 15].astype(np.int64)
        keep = B.nms_min(rows[:, :4], rows[:, 4], image_idx, ONET_NMS_MIN)
        rows, image_idx = rows[keep], image_idx[keep]
        boxes = B.to_edge_boxes(rows[:, :4])
        boxes = boxes / np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)
        landmarks = np.stack([rows[:, 5:10] / scale_x, rows[:, 10:15] / scale_y], axis=-1)
        for k in np.argsort(-rows[:, 4], kind="stable"):
            score = float(rows[k, 4])
            if score >= self.config.min_score and math.isfinite(score):
                result[image_idx[k]].append(
                    Detection(
                        box_xyxy=boxes[k].astype(np.float32),
                        score=score,
                        landmarks=landmarks[k].astype(np.float32),
                    )
                )
        log.debug("MTCNN: %d faces in %d frames", sum(map(len, result)), count)
        return result
