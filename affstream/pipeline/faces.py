"""The face steps, shared by every schedule: frames -> tracked, aligned, embedded faces.

    steps = FaceSteps(stages, times)
    tracker = steps.new_tracker()                 # one per video or live session
    pixels = steps.upload(batch)                  # (F, H, W, 3) uint8 on the device, once
    tracked = steps.detect_and_track(batch, pixels, tracker)   # list[FrameFaces]
    crops = steps.align(pixels, tracked)          # (N, 3, S, S) normalised, on the device
    chunk = steps.embed(frames, [crops, ...])     # FaceChunk: frames + (N, D) features

A schedule decides how many frames go into one batch and how many crops wait for one
backbone call (:mod:`affstream.pipeline.offline` pools them for throughput; a live
schedule runs whatever has arrived). The steps themselves hold no state between calls
except the tracker the caller passes in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..detect.align import align_faces
from ..detect.track import FaceTracker
from ..records import FaceChunk, Frame, FrameFaces
from ..runtime import StageTimes
from . import Stages


class DetectSchedule:
    """When a full face detection runs: every ``every``-th frame (1: every frame), and
    on the next frame after a followed track was lost.

    Between full detections the tracks are followed cheaply (see
    :meth:`FaceSteps.find_faces`); a frame with no track to follow waits for the next
    due frame, so new faces are found within ``every`` frames.
    """

    def __init__(self, every: int) -> None:
        if int(every) < 1:
            raise ValueError(f"detect every must be >= 1, got {every}")
        self.every = int(every)
        self.since = self.every  # frames since the last full detection: the first frame is due
        self.force = False
        self.full = 0
        self.followed = 0

    def due(self) -> bool:
        return self.force or self.since >= self.every

    def done(self, full: bool, lost: bool) -> None:
        """Record what ran on a frame; ``lost``: a followed track was not confirmed."""
        if full:
            self.full += 1
            self.since = 1
            self.force = False
        else:
            self.followed += 1
            self.since += 1
            self.force = lost


class FaceSteps:
    """The detect/track/align/embed steps of one loaded pipeline.

    times: where each step's seconds are charged ("detect", "track", "align", "embed").
    """

    def __init__(self, stages: Stages, times: StageTimes | None = None) -> None:
        self.stages = stages
        self.device = stages.device
        self.times = times or StageTimes(stages.device)

    def new_tracker(self) -> FaceTracker:
        """A fresh tracker: track ids restart at 0."""
        return FaceTracker(self.stages.config.track)

    def upload(self, frames: Sequence[Frame]) -> torch.Tensor:
        """Stack the frames' images on the device once; serves detection and alignment.

        frames: consecutive frames of one image size. Returns (F, H, W, 3) uint8.
        """
        with self.times.time("detect"):
            return self.stages.detector.to_device([f.image for f in frames])

    def detect_and_track(self, frames: Sequence[Frame], pixels: torch.Tensor,
                         tracker: FaceTracker) -> list[FrameFaces]:
        """Detect faces in every frame of the batch and give them track ids, in order."""
        with self.times.time("detect"):
            detections = self.stages.detector.detect_frames(pixels)
        with self.times.time("track"):
            return [
                FrameFaces(f.frame_index, f.time_s, tracker.update(f.frame_index, f.time_s, dets))
                for f, dets in zip(frames, detections, strict=True)
            ]

    def find_faces(self, frames: Sequence[Frame], pixels: torch.Tensor, tracker: FaceTracker,
                   schedule: DetectSchedule | None) -> list[FrameFaces]:
        """:meth:`detect_and_track`, or with a :class:`DetectSchedule` of k > 1: a full
        detection on every k-th frame (and whenever a track was lost or none exists on
        a due frame), and in between each live track followed by
        :meth:`~affstream.detect.mtcnn.MTCNNDetector.follow` from its predicted box."""
        if schedule is None or schedule.every == 1:
            return self.detect_and_track(frames, pixels, tracker)
        found = []
        detector = self.stages.detector
        for k, frame in enumerate(frames):
            one = pixels[k : k + 1]
            predicted = tracker.predicted_boxes(frame.frame_index)
            full = schedule.due()
            with self.times.time("detect"):
                detections = detector.detect_frames(one)[0] if full else detector.follow(one, [predicted])[0]
            schedule.done(full, lost=not full and len(detections) < len(predicted))
            with self.times.time("track"):
                found.append(FrameFaces(frame.frame_index, frame.time_s,
                                        tracker.update(frame.frame_index, frame.time_s, detections)))
        return found

    def align(self, pixels: torch.Tensor, tracked: Sequence[FrameFaces]) -> torch.Tensor:
        """Crops of every face of a batch, cut from its frames already on the device.

        pixels: (F, H, W, 3) uint8 on the device, the batch's frames in order.
        Returns (N, 3, S, S) float32, normalised with the backbone's mean/std, faces in
        frame order and, within a frame, in the order of ``FrameFaces.faces``.
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
                face_scale=self.stages.config.align.face_scale,
            )

    def embed(self, frames: Sequence[FrameFaces], crops: Sequence[torch.Tensor]) -> FaceChunk:
        """One FaceChunk for ``frames`` from their crops (the outputs of :meth:`align`,
        in the same frame order), embedded in one backbone call."""
        backbone = self.stages.backbone
        owner = np.asarray([k for k, ff in enumerate(frames) for _ in ff.faces], dtype=np.int64)
        if crops:
            with self.times.time("embed"):
                features = backbone.encode_images(torch.cat(list(crops)))
        else:
            features = torch.empty((0, backbone.feature_dim), device=self.device)
        return FaceChunk(tuple(frames), features, owner)
