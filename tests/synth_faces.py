"""Synthetic Aff-Wild2-format face crops whose expression is a small visual mark.

For image-encoder fine-tuning tests: the crops are real faces (frames of the clips in
tests/data) under random brightness, contrast and shift, and the expression class is a
small dark mark over the mouth whose *shape* is the class (a bar, a post, a V, an
inverted V, a cross, two dots, a ring, a block; all left-right symmetric, so a
horizontal flip keeps the class). The mark covers about 10 % of the crop: a frozen
random encoder's features hardly see it next to the face and lighting changes, while
an encoder trained on the labels can learn to. Labels come in segments of 30-90 frames
(as Aff-Wild2's), with a few unannotated frames (-1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from synth_affwild import CLIPS, annotation_text, clip_frames

GLYPH = 12
CROP = 112
SCALE = 3
AMPLITUDE = 40.0


def glyphs() -> np.ndarray:
    """(8, 12, 12) float32 masks, one per class, each left-right symmetric."""
    g = np.zeros((8, GLYPH, GLYPH), np.float32)
    g[0, 5:7, :] = 1
    g[1, :, 5:7] = 1
    for i in range(6):
        g[2, 2 + i, i] = g[2, 2 + i, 11 - i] = g[2, 3 + i, i] = g[2, 3 + i, 11 - i] = 1
        g[3, 9 - i, i] = g[3, 9 - i, 11 - i] = g[3, 8 - i, i] = g[3, 8 - i, 11 - i] = 1
    g[4, 5:7, :] = 1
    g[4, :, 5:7] = 1
    g[5, 3:6, 1:4] = 1
    g[5, 3:6, 8:11] = 1
    yy, xx = np.mgrid[:GLYPH, :GLYPH]
    r = np.hypot(yy - 5.5, xx - 5.5)
    g[6] = (r > 3.5) & (r < 5.5)
    g[7, 2:10, 2:10] = 1
    assert np.array_equal(g, g[:, :, ::-1])
    return g


def _faces() -> list[np.ndarray]:
    from PIL import Image

    faces = []
    for clip, (_, (x1, y1, x2, y2)) in CLIPS.items():
        for frame in clip_frames(clip, 72):
            faces.append(np.asarray(Image.fromarray(frame[y1:y2, x1:x2]).resize((CROP, CROP), Image.Resampling.BICUBIC)))
    return faces


def render(face: np.ndarray, label: int, rng: np.random.Generator, *, scale: int = SCALE,
           amplitude: float = AMPLITUDE) -> np.ndarray:
    """One (112, 112, 3) uint8 crop: ``face`` relit, with the mark of ``label`` (-1: none)
    drawn ``scale`` pixels per glyph cell, ``amplitude`` grey levels dark."""
    image = face.astype(np.float32) * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30)
    if label >= 0:
        half = GLYPH * scale // 2
        cx, cy = 56 + int(rng.integers(-4, 5)), min(84, CROP - half - 4) + int(rng.integers(-4, 5))
        mark = np.kron(glyphs()[label], np.ones((scale, scale), np.float32))
        image[cy - half : cy + half, cx - half : cx + half] -= amplitude * mark[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _segments(rng: np.random.Generator, n: int) -> np.ndarray:
    labels = np.empty(n, np.int64)
    k = 0
    while k < n:
        length = int(rng.integers(30, 91))
        labels[k : k + length] = rng.integers(0, 8)
        k += length
    labels[rng.choice(n, size=max(1, n // 25), replace=False)] = -1
    return labels


def make_face_root(path: str | Path, *, n_train: int = 6, n_val: int = 3, frames: int = 200, seed: int = 0,
                   scale: int = SCALE, amplitude: float = AMPLITUDE) -> Path:
    """Write an Aff-Wild2-format root with EXPR annotations and ``cropped_aligned``
    crops (112x112 JPEG) for ``n_train`` + ``n_val`` people of ``frames`` frames
    (marks as :func:`render`)."""
    from PIL import Image

    path = Path(path)
    rng = np.random.default_rng(seed)
    faces = _faces()
    for i in range(n_train + n_val):
        name = f"face{i:02d}"
        split = "Train_Set" if i < n_train else "Validation_Set"
        labels = _segments(rng, frames)
        target = path / "EXPR_Recognition_Challenge" / split / f"{name}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(annotation_text("expr", labels))
        folder = path / "cropped_aligned" / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, frames + 1):
            face = faces[int(rng.integers(len(faces)))]
            crop = render(face, int(labels[k - 1]), rng, scale=scale, amplitude=amplitude)
            Image.fromarray(crop).save(folder / f"{k:05d}.jpg", quality=92)
    return path
