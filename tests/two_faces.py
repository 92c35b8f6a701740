"""A synthetic clip with two real faces that drift towards each other (tracking tests).

The faces are the two largest faces cut from tests/data/multi_face.jpg, pasted on a
grey background at positions that change every frame. Written with PyAV.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

DATA = Path(__file__).parent / "data"
# Face regions (x1, y1, x2, y2) in multi_face.jpg, generous around each face.
_FACE_BOXES = ((285, 195, 445, 395), (655, 245, 825, 457))


def face_patches(size: int = 150) -> list[np.ndarray]:
    image = Image.open(DATA / "multi_face.jpg").convert("RGB")
    return [np.asarray(image.crop(box).resize((size, int(size * 1.25)))) for box in _FACE_BOXES]


def make_two_face_clip(path: Path, frames: int = 40, width: int = 640, height: int = 360, fps: int = 25) -> Path:
    """Write ``frames`` frames; face A moves right from x=40, face B left from x=450."""
    patches = face_patches()
    ph, pw = patches[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for k in range(frames):
            canvas = np.full((height, width, 3), 120, dtype=np.uint8)
            xa = 40 + 2 * k
            xb = 450 - 2 * k
            canvas[100 : 100 + ph, xa : xa + pw] = patches[0]
            canvas[90 : 90 + ph, xb : xb + pw] = patches[1]
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
