"""Turning stored pictures upright: the display matrix (rotation by a multiple of 90
degrees and an optional mirror), ``VideoFrame.rotation``, or a still image's EXIF tag.

Read from the first decoded frame and applied to every frame (see
:mod:`affstream.io.decode` for when each source is used, and why PNG frames never have
their side data listed).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import av
import numpy as np

from .avcompat import metadata_text, side_data_bytes

_LOG = logging.getLogger("affstream")

# decoders that attach side data carrying a metadata dictionary (the ICC profile's name),
# which PyAV 18.1 frees twice once ``frame.side_data`` has been listed: SIGSEGV
_NO_SIDE_DATA_LIST_CODECS = frozenset({"png", "apng"})

@dataclass(frozen=True)
class Orientation:
    """How to turn a stored picture upright: mirror left-right first (if ``mirror``),
    then rotate ``rotation_cw`` degrees clockwise (0, 90, 180 or 270)."""

    rotation_cw: int = 0
    mirror: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) stored picture -> upright C-contiguous copy (or the input if upright)."""
        if self.mirror:
            image = image[:, ::-1]
        if self.rotation_cw:
            image = np.rot90(image, k=-(self.rotation_cw // 90))
        return np.ascontiguousarray(image)

    def upright_shape(self, height: int, width: int) -> tuple[int, int]:
        return (width, height) if self.rotation_cw in (90, 270) else (height, width)

    @classmethod
    def of_frame(cls, frame: av.VideoFrame, stream, name: str, is_image: bool) -> Orientation:
        """Orientation from the frame's display matrix, the stream's legacy ``rotate``
        tag, or (PyAV cannot read this frame's side data) a fallback.

        Frames of the PNG decoders take the fallback without listing their side data
        (listing it crashes PyAV 18.1 when the PNG holds an ICC profile): EXIF for a still
        image, else ``VideoFrame.rotation``, which cannot see a mirror."""
        if stream.codec_context.name in _NO_SIDE_DATA_LIST_CODECS:
            return cls._fallback(frame, name, is_image)
        try:
            matrix = _display_matrix(frame)
        except ValueError:  # side data of a type this PyAV build does not know
            return cls._fallback(frame, name, is_image)
        if matrix is not None:
            return cls.from_matrix(matrix)
        rotate = metadata_text(stream.metadata.get("rotate", ""))
        if rotate:
            try:
                return cls(rotation_cw=_nearest_quarter(float(rotate)))
            except ValueError:
                _LOG.debug("decode: %s: ignoring rotate tag %r", name, rotate)
        return cls()

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> Orientation:
        """From FFmpeg's 3x3 display matrix (9 int32, 16.16 fixed point for a, b, c, d),
        which maps a stored pixel (x, y) to display (a*x + c*y, b*x + d*y)."""
        a, b, _, c, d = (float(v) / 65536.0 for v in matrix[:5])
        mirror = a * d - b * c < 0
        if mirror:  # undo the mirror on x first: x -> -x negates a and b
            a, b = -a, -b
        return cls(rotation_cw=_nearest_quarter(math.degrees(math.atan2(b, a))), mirror=mirror)

    @classmethod
    def _fallback(cls, frame: av.VideoFrame, name: str, is_image: bool) -> Orientation:
        """EXIF for a still image (Pillow), else ``VideoFrame.rotation``: PyAV reads the
        display matrix in C without listing side data (safe), but gives no mirror."""
        if is_image:
            exif = _exif_orientation(name)
            if exif is not None:
                return exif
        return cls(rotation_cw=_nearest_quarter(-float(frame.rotation)))


def _nearest_quarter(degrees_cw: float) -> int:
    """Round an angle to 0, 90, 180 or 270 (clockwise), logging non-right angles."""
    quarter = round(degrees_cw / 90.0) % 4 * 90
    if abs(((degrees_cw - quarter) + 180.0) % 360.0 - 180.0) > 1.0:
        _LOG.warning("decode: display rotation %.1f deg rounded to %d deg", degrees_cw, quarter)
    return quarter


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's DISPLAYMATRIX side data as 9 int32, or None.

    Raises ValueError when PyAV cannot enumerate the side data (unknown type). Lists all
    of the frame's side data (PyAV has no lookup that does not): never call it on frames
    of the codecs in ``_NO_SIDE_DATA_LIST_CODECS``.
    """
    raw = side_data_bytes(frame, "DISPLAYMATRIX")
    if raw is not None and len(raw) >= 36:
        return np.frombuffer(raw[:36], dtype=np.int32)
    return None


# EXIF orientation tag (1..8) -> (clockwise rotation, mirror first)
_EXIF_ORIENTATIONS = {
    1: (0, False), 2: (0, True), 3: (180, False), 4: (180, True),
    5: (270, True), 6: (90, False), 7: (90, True), 8: (270, False),
}


def _exif_orientation(name: str) -> Orientation | None:
    """Orientation from a still image's EXIF tag (Pillow), or None if unreadable."""
    try:
        from PIL import Image

        with Image.open(name) as image:
            tag = image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - any failure means "no usable EXIF"
        return None
    if tag not in _EXIF_ORIENTATIONS:
        return None
    rotation, mirror = _EXIF_ORIENTATIONS[tag]
    return Orientation(rotation_cw=rotation, mirror=mirror)
