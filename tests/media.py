"""Synthetic media for tests, written with PyAV only (no ffmpeg command-line tool).

Every clip is small (160x120 by default, yuv420p) and quick to write. Frames carry:

* a coloured rectangle that moves one step per frame, so consecutive frames differ;
* the 0-based frame number in binary, as a band of black/white 16x16 blocks along the
  bottom edge (:func:`read_frame_number` reads it back, also after lossy coding);
* optionally a red square marker in the stored top-left corner (rotation tests).

Nothing here touches the network or ``../shared``.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WIDTH = 160
HEIGHT = 120
BIT_BLOCK = 16  # side of one frame-number block, pixels
MARKER_PX = 24  # side of the red corner marker, pixels
MARKER_RGB = (255, 0, 0)

#: Presentation times (milliseconds) of the variable-frame-rate clip: irregular gaps,
#: including 1 ms steps and long pauses.
VFR_PTS_MS: tuple[int, ...] = (0, 33, 50, 120, 121, 300, 301, 450, 700, 701, 1000)


def video_codec() -> str:
    """H.264 (libx264) when this PyAV build has it, else FFmpeg's native MPEG-4 part 2."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def pattern_frame(number: int, width: int = WIDTH, height: int = HEIGHT,
                  marker: bool = False) -> np.ndarray:
    """One synthetic picture: (height, width, 3) uint8 RGB.

    number: 0-based frame number, written in binary along the bottom edge (LSB left),
            ``width // 16`` bits.
    marker: paint a red MARKER_PX square in the top-left corner.
    """
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    band_top = height - BIT_BLOCK
    # moving rectangle above the bit band
    rect_w, rect_h = width // 4, max(8, (band_top - 8) // 2)
    x0 = (number * 7) % max(1, width - rect_w)
    y0 = min(band_top - rect_h, MARKER_PX + 4) if marker else 4
    image[y0:y0 + rect_h, x0:x0 + rect_w] = (30, 200, 60)
    for bit in range(width // BIT_BLOCK):
        value = 255 if (number >> bit) & 1 else 0
        image[band_top:, bit * BIT_BLOCK:(bit + 1) * BIT_BLOCK] = value
    if marker:
        image[:MARKER_PX, :MARKER_PX] = MARKER_RGB
    return image


def read_frame_number(image: np.ndarray) -> int:
    """Read back the number painted by :func:`pattern_frame` from an upright, unrotated
    (H, W, 3) uint8 image."""
    height, width = image.shape[:2]
    band = image[height - BIT_BLOCK + 4:height - 4].astype(np.float32).mean(axis=(0, 2))
    number = 0
    for bit in range(width // BIT_BLOCK):
        if band[bit * BIT_BLOCK + 4:(bit + 1) * BIT_BLOCK - 4].mean() > 128:
            number |= 1 << bit
    return number


def _add_video_stream(container: av.container.OutputContainer, *, fps: int, width: int,
                      height: int, codec: str | None = None):
    stream = container.add_stream(codec or video_codec(), rate=fps)
    stream.width = width
    stream.height = height
    stream.pix_fmt = "yuv420p"
    if stream.codec_context.name == "libx264":
        # no B-frames: decode order == presentation order, one packet per frame
        stream.codec_context.options = {"bframes": "0", "preset": "veryfast"}
    return stream


def _encode(container, stream, frame: av.VideoFrame | None) -> None:
    for packet in stream.encode(frame):
        container.mux(packet)


def write_cfr_clip(path: str | os.PathLike, *, frames: int = 30, fps: int = 30,
                   width: int = WIDTH, height: int = HEIGHT, codec: str | None = None,
                   container_options: dict[str, str] | None = None,
                   noise: bool = False) -> Path:
    """Constant-frame-rate clip of ``frames`` pattern frames at ``fps``.

    noise: add seeded noise above the bit band (bigger packets, e.g. for truncation).
    """
    path = Path(path)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = _add_video_stream(container, fps=fps, width=width, height=height, codec=codec)
        for number in range(frames):
            image = pattern_frame(number, width, height)
            if noise:
                top = image[:height - BIT_BLOCK].astype(np.int16)
                top += rng.integers(-40, 41, size=top.shape, dtype=np.int16)
                image[:height - BIT_BLOCK] = np.clip(top, 0, 255).astype(np.uint8)
            _encode(container, stream, av.VideoFrame.from_ndarray(image, format="rgb24"))
        _encode(container, stream, None)
    return path


def write_vfr_clip(path: str | os.PathLike, pts_ms: tuple[int, ...] = VFR_PTS_MS, *,
                   width: int = WIDTH, height: int = HEIGHT) -> Path:
    """Variable-frame-rate clip: frame ``i`` has presentation time ``pts_ms[i]``
    milliseconds exactly (time base 1/1000; the MP4 muxer may rescale it exactly)."""
    path = Path(path)
    time_base = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = _add_video_stream(container, fps=30, width=width, height=height)
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        for number, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(pattern_frame(number, width, height), format="rgb24")
            frame.pts = pts
            frame.time_base = time_base
            _encode(container, stream, frame)
        _encode(container, stream, None)
    return path


def write_rotated_clip(path: str | os.PathLike, *, rotation_cw: int = 90, mirror: bool = False,
                       frames: int = 4, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """Clip stored ``width`` x ``height`` with a display matrix saying "rotate
    ``rotation_cw`` degrees clockwise to show upright" (like a phone held upright), and
    after that rotation mirror left-right when ``mirror``. Frames carry the red marker in
    the *stored* top-left corner."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = _add_video_stream(container, fps=30, width=width, height=height)
        # PyAV's degrees are counter-clockwise; its flips act after the rotation.
        stream.set_display_rotation(-rotation_cw, hflip=mirror)
        for number in range(frames):
            image = pattern_frame(number, width, height, marker=True)
            _encode(container, stream, av.VideoFrame.from_ndarray(image, format="rgb24"))
        _encode(container, stream, None)
    return path


def write_truncated_clip(path: str | os.PathLike, *, frames: int = 60,
                         keep_fraction: float = 0.5) -> Path:
    """An MP4 (index at the front, 'faststart') cut off after ``keep_fraction`` of its
    bytes, i.e. in the middle of the coded frames. The index still declares ``frames``."""
    path = Path(path)
    whole = path.with_name(path.stem + "_whole" + path.suffix)
    write_cfr_clip(whole, frames=frames, container_options={"movflags": "faststart"}, noise=True)
    data = whole.read_bytes()
    path.write_bytes(data[:int(len(data) * keep_fraction)])
    whole.unlink()
    return path


def write_raw_h264(path: str | os.PathLike, *, frames: int = 8, fps: int = 25) -> Path:
    """An H.264 elementary stream (no container): its frames carry no PTS at all.
    Needs libx264 (see :func:`video_codec`); callers skip when it is missing."""
    path = Path(path)
    with av.open(str(path), "w", format="h264") as container:
        stream = _add_video_stream(container, fps=fps, width=WIDTH, height=HEIGHT,
                                   codec="libx264")
        for number in range(frames):
            image = pattern_frame(number)
            _encode(container, stream, av.VideoFrame.from_ndarray(image, format="rgb24"))
        _encode(container, stream, None)
    return path


def write_audio_only(path: str | os.PathLike, *, seconds: float = 0.5,
                     sample_rate: int = 16000) -> Path:
    """A mono 440 Hz sine, 16-bit PCM; the container follows the suffix (.wav, .m4a...)."""
    path = Path(path)
    codec = "pcm_s16le" if path.suffix.lower() == ".wav" else "aac"
    chunk = 1024
    samples = int(seconds * sample_rate)
    t = np.arange(samples) / sample_rate
    wave = (0.3 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        for start in range(0, samples, chunk):
            block = wave[start:start + chunk][None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="s16",
                                               layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_zero_byte(path: str | os.PathLike) -> Path:
    """An empty file (0 bytes)."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_text_file(path: str | os.PathLike) -> Path:
    """Plain text under whatever name is given (e.g. ``notes.mp4``)."""
    path = Path(path)
    path.write_text("this is not a video\njust two lines of text\n", encoding="utf-8")
    return path
