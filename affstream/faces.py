"""From frames to face features: detect -> track -> align -> embed, in frame order.

This is the part of the pipeline shared by ``annotate`` (which then runs a head),
``features`` (which stores the features for training) and the live and corpus paths.
It consumes any iterator of :class:`~affstream.records.Frame` (a file decoder or a
live source) and yields :class:`FaceChunk` records: a run of consecutive frames with
their tracked faces and one feature row per face, still on the device.

Batching: frames are detected ``detect.batch_frames`` at a time; the aligned crops of
several detection batches are pooled until ``embed.batch_size`` faces (or
``MAX_POOLED_FRAMES`` frames) are waiting, so the backbone sees large batches whatever
the number of faces per frame. Decoded images
are dropped as soon as their crops are taken: memory does not grow with video length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from .detect.align import align_faces
from .detect.track import FaceTracker
from .runtime import release_free_memory
from .runtime import StageTimes
from .records import Frame, FrameFaces

log = logging.getLogger("affstream")

# Frames per detector call when DetectConfig.batch_frames is 0 (benchmarks/README).
AUTO_DETECT_BATCH_CPU = 16
AUTO_DETECT_BATCH_CUDA = 64
# Frames waiting for their backbone batch before a smaller batch is embedded anyway.
MAX_POOLED_FRAMES = 256


@dataclass(frozen=True, eq=False)
class FaceChunk:
    """Consecutive frames, their faces and the faces' features.

    frames:   the frames in decode order, each with its tracked faces (maybe none).
    features: torch.Tensor (N, D) float32 on the pipeline device, L2-normalised; row i
              belongs to ``frames[owner[i]]``, faces in the order of ``FrameFaces.faces``.
    owner:    (N,) int64 index into ``frames``.
    """

    frames: tuple[FrameFaces, ...]
    features: torch.Tensor
    owner: np.ndarray

    def per_frame_features(self) -> list[np.ndarray]:
        """Host copy split per frame: a list of (n_faces_k, D) float32 arrays."""
        host = self.features.float().cpu().numpy()
        counts = [len(f.faces) for f in self.frames]
        return np.split(host, np.cumsum(counts)[:-1]) if counts else []


class _CropPool:
    """Aligned crops and their frames, waiting for a full backbone batch."""

    def __init__(self) -> None:
        self.frames: list[FrameFaces] = []
        self.crops: list[torch.Tensor] = []
        self.n_faces = 0

    def add(self, frames: list[FrameFaces], crops: torch.Tensor) -> None:
        self.frames.extend(frames)
        if crops.shape[0]:
            self.crops.append(crops)
        self.n_faces += int(crops.shape[0])

    def take(self) -> tuple[list[FrameFaces], list[torch.Tensor]]:
        frames, crops = self.frames, self.crops
        self.frames, self.crops, self.n_faces = [], [], 0
        return frames, crops


def _chunked(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Batches of up to ``size`` consecutive frames of one image size (a stream whose
    resolution changes mid-way starts a new batch at the change)."""
    batch: list[Frame] = []
    for frame in frames:
        if batch and frame.image.shape != batch[0].image.shape:
            yield batch
            batch = []
        batch.append(frame)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class FaceExtractor:
    """The detect/track/align/embed stages of one pipeline, reusable across videos.

    Holds the loaded models (detector, backbone); each call of :meth:`iter_chunks`
    starts a fresh tracker, so face ids restart at 0 for every video.
    """

    def __init__(self, stages, times: StageTimes | None = None) -> None:
        self.stages = stages
        self.config = stages.config
        self.device = stages.device
        self.times = times or StageTimes(stages.device)
        auto = AUTO_DETECT_BATCH_CUDA if self.device.type == "cuda" else AUTO_DETECT_BATCH_CPU
        self.detect_batch = self.config.detect.batch_frames or auto

    def iter_chunks(self, frames: Iterable[Frame]) -> Iterator[FaceChunk]:
        """Yield FaceChunks covering every frame of ``frames`` exactly once, in order."""
        tracker = FaceTracker(self.config.track)
        pool = _CropPool()
        batch_faces = max(1, self.config.embed.batch_size)
        for batch in _chunked(frames, self.detect_batch):
            with self.times.time("detect"):  # one upload serves detection and alignment
                pixels = self.stages.detector.to_device([f.image for f in batch])
            tracked = self._detect_and_track(batch, pixels, tracker)
            crops = self._align(pixels, tracked)
            del batch, pixels  # the decoded images are no longer needed
            release_free_memory()
            pool.add(tracked, crops)
            # faceless stretches must not wait for a full backbone batch: rows flow and
            # memory stays bounded whatever the video holds
            if pool.n_faces >= batch_faces or len(pool.frames) >= MAX_POOLED_FRAMES:
                yield self._embed(*pool.take())
        if pool.frames:
            yield self._embed(*pool.take())

    def _detect_and_track(self, batch: list[Frame], pixels: torch.Tensor, tracker: FaceTracker) -> list[FrameFaces]:
        with self.times.time("detect"):
            detections = self.stages.detector.detect_frames(pixels)
        with self.times.time("track"):
            return [
                FrameFaces(f.index, f.time_s, tracker.update(f.index, f.time_s, dets))
                for f, dets in zip(batch, detections)
            ]

    def _align(self, pixels: torch.Tensor, tracked: list[FrameFaces]) -> torch.Tensor:
        """Crops of every face of a batch from its frames already on the device.

        pixels: (F, H, W, 3) uint8 on the device, the batch's frames in order.
        """
        backbone = self.stages.backbone
        size = backbone.image_size
        slots = [k for k, ff in enumerate(tracked) for _ in ff.faces]
        if not slots:
            return torch.empty((0, 3, size, size), device=self.device)
        with self.times.time("align"):
            # detections use pixel-edge coordinates, align_faces pixel-centre ones
            landmarks = np.stack([face.detection.landmarks for ff in tracked for face in ff.faces]) - 0.5
            return align_faces(
                pixels.permute(0, 3, 1, 2),
                torch.as_tensor(slots, device=self.device),
                torch.from_numpy(landmarks.astype(np.float32)).to(self.device),
                size=size,
                mean=backbone.mean,
                std=backbone.std,
                face_scale=self.config.align.face_scale,
            )

    def _embed(self, frames: list[FrameFaces], crops: list[torch.Tensor]) -> FaceChunk:
        backbone = self.stages.backbone
        owner = np.asarray([k for k, ff in enumerate(frames) for _ in ff.faces], dtype=np.int64)
        if crops:
            with self.times.time("embed"):
                features = backbone.encode_images(torch.cat(crops))
        else:
            features = torch.empty((0, backbone.feature_dim), device=self.device)
        return FaceChunk(tuple(frames), features, owner)
