"""Labelled face crops for fine-tuning an image encoder, and the augmentation used on them.

:func:`index_crops` lists, for one split of an Aff-Wild2-format root, every crop image
``ROOT/cropped_aligned/PERSON/%05d.jpg`` whose frame has an EXPR label (0..7; frames
marked -1 and frames without a crop are left out), optionally every ``frame_step``-th
frame only (neighbouring video frames are near duplicates). The folder rules are those
of ``affstream features`` (:func:`affstream.train.features.find_crop_dir`); a person
without a crop folder is skipped with a warning.

:class:`CropDataset` loads a crop (header checked first, as for a feature bank: a
decompression bomb is never decoded), resizes it to the encoder's input side S and
returns ``(image, label, ok, i)``: image (3, S, S) uint8 RGB; ok False for a crop that
cannot be used (truncated, corrupt), which :func:`collate_usable` drops from the batch,
returning its index ``i`` so that the caller counts each bad file once.

Augmentation (:class:`FaceAugment`, training only), chosen for aligned faces and drawn
per crop but applied to a whole batch at once on the training device (one
``grid_sample`` and a few tensor operations, so it never starves a GPU):

- a random crop keeping 80-100 % of the area at an aspect ratio of 0.9-1.1, resized
  back to S (the face stays whole and upright: alignment already fixed scale and
  position), rotated by at most 10 degrees (residual head roll), and mirrored with
  p = 0.5 (an expression is the same mirrored);
- brightness and contrast factors in [0.7, 1.3], saturation in [0.8, 1.2] (lighting and
  camera differences); no hue shift (it would change skin colour beyond anything real);
- grey scale with p = 0.05 (grey-scale footage exists in the wild).

No vertical flips, no large crops or erasing: they remove the mouth or the eyes, which
carry the expression.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .affwild import scan_affwild
from .features import CROPS_DIR, _load_crop, find_crop_dir, list_crops

log = logging.getLogger("affstream")


@dataclass(frozen=True)
class CropIndex:
    """The labelled crops of one split.

    paths:  N crop files. labels: (N,) int64 EXPR class 0..7. person: (N,) int64 index
    into ``people`` of each crop. skipped: people without a crop folder.
    """

    split: str
    paths: tuple[Path, ...]
    labels: np.ndarray
    person: np.ndarray
    people: tuple[str, ...]
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=8)[:8].astype(int).tolist()

    def subset(self, rows: np.ndarray) -> CropIndex:
        """The crops at ``rows`` (a (K,) int index array), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return CropIndex(
            self.split,
            tuple(self.paths[i] for i in rows),
            self.labels[rows],
            self.person[rows],
            self.people,
            self.skipped,
        )


def index_crops(root: str | Path, split: str, task: str = "expr", *, frame_step: int = 1,
                crops_root: str | Path | None = None) -> CropIndex:
    """Every labelled crop of ``split`` (``Train_Set`` or ``Validation_Set``): labels
    from ``root``'s annotations, crops from ``crops_root/cropped_aligned`` (default:
    ``root``; e.g. the folder :func:`affstream.train.video_crops.extract_crops` wrote).

    Raises DataError when the root has no annotations for ``task`` or no crops at all
    (naming what to check); ConfigError for an unknown task or split.
    """
    if task != "expr":
        raise DataError(f"image-encoder fine-tuning learns expressions only (task expr), not '{task}'")
    root = Path(root)
    crops_root = Path(crops_root) if crops_root is not None else root
    people = scan_affwild(root, (split,), (task,))
    paths: list[Path] = []
    labels: list[int] = []
    person: list[int] = []
    names: list[str] = []
    skipped: list[str] = []
    for name, record in people.items():
        expr = record.expr
        if expr is None:
            continue
        try:
            crop_dir = find_crop_dir(crops_root, record)
        except DataError as exc:  # a _left / _right person without its own folder
            log.warning("%s", exc)
            crop_dir = None
        if crop_dir is None:
            skipped.append(name)
            continue
        crops = list_crops(crop_dir, record.n_frames)
        kept = [(frame, path) for frame, path in crops.items() if expr[frame - 1] >= 0 and (frame - 1) % frame_step == 0]
        if not kept:
            continue
        names.append(name)
        for frame, path in kept:
            paths.append(path)
            labels.append(int(expr[frame - 1]))
            person.append(len(names) - 1)
    if not paths:
        raise DataError(
            f"{root}: no labelled crops in {split} (annotations of {len(people)} people, crops under "
            f"{crops_root / CROPS_DIR}/PERSON/%05d.jpg); check the dataset root or use --source videos"
        )
    if skipped:
        log.warning("%s: %d of %d people of %s have no crop folder (first: %s); they are skipped",
                    crops_root / CROPS_DIR, len(skipped), len(people), split, skipped[0])
    labels_array, person_array = np.asarray(labels, np.int64), np.asarray(person, np.int64)
    return CropIndex(split, tuple(paths), labels_array, person_array, tuple(names), tuple(skipped))


def spread(n: int, at_most: int | None) -> np.ndarray:
    """Row indices of at most ``at_most`` items evenly spread over ``n`` (all if None)."""
    if at_most is None or n <= at_most:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, at_most).round().astype(np.int64))


_GREY = (0.299, 0.587, 0.114)


class FaceAugment:
    """Batched face augmentation and normalisation (module docstring).

    size: S; mean, std: per-channel RGB normalisation for pixel values in [0, 1].
    The random parameters are drawn on the CPU from ``generator`` (reproducible on
    any device).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.grey = torch.tensor(_GREY, dtype=torch.float32).view(1, 3, 1, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 (or float in [0, 1]) -> float32 normalised, same device."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, 3, S, S) float32, augmented and normalised."""
        x = images.float() / 255.0
        b, dev = x.shape[0], x.device
        if b == 0:
            return self.normalize(x)

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(b, generator=generator)

        area, aspect = uniform(0.8, 1.0), torch.exp(uniform(math.log(0.9), math.log(1.1)))
        w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
        cx, cy = (1 - w) * uniform(-1.0, 1.0), (1 - h) * uniform(-1.0, 1.0)
        angle = uniform(-10.0, 10.0) * math.pi / 180.0
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [torch.stack([flip * w * cos, -flip * w * sin, cx], -1), torch.stack([h * sin, h * cos, cy], -1)], 1
        ).to(dev)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        grey = self.grey.to(dev)
        brightness = uniform(0.7, 1.3).to(dev).view(-1, 1, 1, 1)
        contrast = uniform(0.7, 1.3).to(dev).view(-1, 1, 1, 1)
        saturation = uniform(0.8, 1.2).to(dev).view(-1, 1, 1, 1)
        to_grey = (torch.rand(b, generator=generator) < 0.05).to(dev).view(-1, 1, 1, 1)
        x = x * brightness
        luma = (x * grey).sum(1, keepdim=True)
        x = (x - luma.mean((2, 3), keepdim=True)) * contrast + luma.mean((2, 3), keepdim=True)
        luma = (x * grey).sum(1, keepdim=True)
        x = luma + (x - luma) * saturation
        x = torch.where(to_grey, (x * grey).sum(1, keepdim=True).expand_as(x), x)
        return self.normalize(x.clamp(0.0, 1.0))


class CropDataset(torch.utils.data.Dataset):
    """Crops of a :class:`CropIndex` as (3, S, S) uint8 tensors, S = ``size`` (module
    docstring); normalisation and augmentation happen batched, in :class:`FaceAugment`."""

    def __init__(self, index: CropIndex, size: int) -> None:
        self.index = index
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool, int]:
        image, _ = _load_crop(self.index.paths[i], self.size, warn=False)
        label = int(self.index.labels[i])
        if image is None:
            return torch.zeros((3, self.size, self.size), dtype=torch.uint8), label, False, int(i)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous(), label, True, int(i)


def note_unreadable(seen: set[Path], index: CropIndex, dropped: list[int]) -> None:
    """Add the crops of ``index`` at ``dropped`` to ``seen``, warning once per new file."""
    for i in dropped:
        path = index.paths[i]
        if path not in seen:
            seen.add(path)
            log.warning("%s: unreadable crop (it does not decode); left out of training, replace or delete it", path)


def collate_usable(items: list[tuple[torch.Tensor, int, bool, int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack the usable items: (B', 3, S, S) uint8 images, (B',) int64 labels, and the
    dataset indices of the unusable crops dropped from the batch."""
    usable = [(x, y) for x, y, ok, _ in items if ok]
    dropped = [i for _, _, ok, i in items if not ok]
    if not usable:
        side = items[0][0].shape[-1] if items else 0
        return torch.zeros((0, 3, side, side), dtype=torch.uint8), torch.zeros((0,), dtype=torch.int64), dropped
    images = torch.stack([x for x, _ in usable])
    labels = torch.tensor([y for _, y in usable], dtype=torch.int64)
    return images, labels, dropped
