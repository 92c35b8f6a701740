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
                      height: int, codec: str | None = None, bframes: int | None = None):
    """A yuv420p video stream. With libx264, ``bframes`` sets the B-frames (FFmpeg's
    option ``bf``); None keeps x264's default (3, with B-frame reordering: "bframes" below
    is not an option of FFmpeg's libx264 wrapper, so it never disabled them)."""
    stream = container.add_stream(codec or video_codec(), rate=fps)
    stream.width = width
    stream.height = height
    stream.pix_fmt = "yuv420p"
    if stream.codec_context.name == "libx264":
        options = {"bframes": "0", "preset": "veryfast"}
        if bframes is not None:
            options["bf"] = str(bframes)
        stream.codec_context.options = options
    return stream


def _encode(container, stream, frame: av.VideoFrame | None) -> None:
    for packet in stream.encode(frame):
        container.mux(packet)


def write_cfr_clip(path: str | os.PathLike, *, frames: int = 30, fps: int = 30,
                   width: int = WIDTH, height: int = HEIGHT, codec: str | None = None,
                   container_options: dict[str, str] | None = None,
                   noise: bool = False, bframes: int | None = None) -> Path:
    """Constant-frame-rate clip of ``frames`` pattern frames at ``fps``.

    noise:   add seeded noise above the bit band (bigger packets, e.g. for truncation).
    bframes: libx264 B-frames (None: x264's default, 3; see :func:`_add_video_stream`).
    """
    path = Path(path)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = _add_video_stream(container, fps=fps, width=width, height=height, codec=codec,
                                   bframes=bframes)
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
                         keep_fraction: float = 0.5, faststart: bool = True,
                         bframes: int | None = 3) -> Path:
    """An MP4 (index at the front, 'faststart') cut off after ``keep_fraction`` of its
    bytes, i.e. in the middle of the coded frames. The index still declares ``frames``.
    Its H.264 has B-frames (x264's 3), so a frame-threaded decoder holds frames in flight
    when the data ends. Without ``faststart`` the index is at the end and is cut off."""
    path = Path(path)
    whole = path.with_name(path.stem + "_whole" + path.suffix)
    write_cfr_clip(whole, frames=frames, container_options={"movflags": "faststart"} if faststart else None,
                   noise=True, bframes=bframes)
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


# ----------------------------------------------------------- odd, damaged and hostile media


def srgb_icc_profile() -> bytes:
    """An sRGB ICC profile (Pillow's littleCMS), a few hundred bytes."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _still(number: int, width: int, height: int, marker: bool = True):
    from PIL import Image

    return Image.fromarray(pattern_frame(number, width, height, marker=marker))


def write_image(path: str | os.PathLike, *, width: int = WIDTH, height: int = HEIGHT,
                icc: bool = False, exif_orientation: int | None = None,
                number: int = 3) -> Path:
    """A still picture (format from the suffix: .png, .jpg) of :func:`pattern_frame`
    ``number`` with the red marker, optionally with an sRGB ICC profile and an EXIF
    orientation tag (1..8)."""
    path = Path(path)
    picture = _still(number, width, height)
    options: dict = {}
    if icc:
        options["icc_profile"] = srgb_icc_profile()
    if exif_orientation is not None:
        exif = picture.getexif()
        exif[0x0112] = exif_orientation
        options["exif"] = exif
    if path.suffix.lower() in (".jpg", ".jpeg"):
        options["quality"] = 95
    picture.save(path, **options)
    return path


def write_png_video(path: str | os.PathLike, *, frames: int = 5, fps: int = 10,
                    width: int = WIDTH, height: int = HEIGHT, icc: bool = True) -> Path:
    """A PNG-coded video (.mov, .avi or .nut; Matroska refuses PNG here): every packet is a
    PNG written by Pillow, so each carries an iCCP chunk (the sRGB profile) when ``icc``.
    Frame ``i`` is :func:`pattern_frame` ``i`` at ``i / fps`` seconds."""
    import io

    path = Path(path)
    profile = srgb_icc_profile() if icc else None
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        time_base = Fraction(1, fps)
        stream.time_base = time_base  # the muxer may change it: packets say theirs
        for number in range(frames):
            buffer = io.BytesIO()
            options = {"icc_profile": profile} if profile else {}
            _still(number, width, height, marker=False).save(buffer, format="PNG", **options)
            packet = av.Packet(buffer.getvalue())
            packet.stream = stream
            packet.pts = packet.dts = number
            packet.time_base = time_base
            packet.duration = 1
            packet.is_keyframe = True
            container.mux(packet)
    return path


def _png_bytes(size: tuple[int, int], rgb: tuple[int, int, int] = MARKER_RGB) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def write_multi_stream_clip(path: str | os.PathLike, sizes: tuple[tuple[int, int], ...] = ((160, 120), (320, 240)),
                            *, frames: int = 6, fps: int = 30, default: int | None = None,
                            cover: tuple[int, int] | None = None) -> Path:
    """One file, several video streams: stream ``k`` is ``sizes[k]`` (width, height) with
    ``frames - k`` pattern frames (so the streams can be told apart by their count).

    default: the stream marked "default", the others unmarked; -1 = none marked; None
             leaves the muxer's choice (MP4 marks the first when none is, Matroska none).
    cover:   (width, height) of a red PNG cover picture to add, which FFmpeg shows as a
             video stream with the attached-picture disposition, after the tracks: a
             Matroska attachment (.mkv), else an attached-picture stream (MP4/MOV).
    """
    path = Path(path)
    with av.open(str(path), "w") as container:
        picture = None
        if cover is not None and path.suffix.lower() == ".mkv":
            container.add_attachment("cover.png", "image/png", _png_bytes(cover))
        elif cover is not None:
            picture = container.add_stream("png")
            picture.width, picture.height, picture.pix_fmt = cover[0], cover[1], "rgb24"
            picture.disposition = av.stream.Disposition.attached_pic
        streams = [_add_video_stream(container, fps=fps, width=w, height=h) for w, h in sizes]
        if default is not None:
            for k, stream in enumerate(streams):
                stream.disposition = (av.stream.Disposition.default if k == default
                                      else av.stream.Disposition(0))
        for number in range(frames):
            for k, stream in enumerate(streams):
                if number < frames - k:
                    image = pattern_frame(number, stream.width, stream.height)
                    _encode(container, stream, av.VideoFrame.from_ndarray(image, format="rgb24"))
        for stream in streams:
            _encode(container, stream, None)
        if picture is not None:
            packet = av.Packet(_png_bytes(cover))
            packet.stream = picture
            packet.pts = packet.dts = 0
            packet.is_keyframe = True
            container.mux(packet)
    return path


def write_audio_with_cover(path: str | os.PathLike, *, seconds: float = 0.5) -> Path:
    """An .m4a: AAC audio plus a PNG cover picture (an attached-picture video stream)."""
    path = Path(path)
    tone = write_audio_only(path.with_name(path.stem + "_tone.wav"), seconds=seconds)
    with av.open(str(tone)) as source, av.open(str(path), "w", format="mp4") as container:
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        cover = container.add_stream("png")
        cover.width, cover.height, cover.pix_fmt = 32, 32, "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        for frame in source.decode(audio=0):
            frame.pts = None
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
        packet = av.Packet(_png_bytes((32, 32)))
        packet.stream = cover
        packet.pts = packet.dts = 0
        packet.is_keyframe = True
        container.mux(packet)
    tone.unlink()
    return path


def write_pixfmt_clip(path: str | os.PathLike, *, codec: str, pix_fmt: str, frames: int = 6,
                      fps: int = 25, width: int = WIDTH, height: int = HEIGHT,
                      options: dict[str, str] | None = None,
                      container_options: dict[str, str] | None = None,
                      noise: bool = False) -> Path:
    """Pattern frames encoded with ``codec`` in ``pix_fmt`` (e.g. libx264 yuv420p10le,
    ffv1 yuva420p, png rgba, prores_ks yuva444p10le); alpha formats get an RGBA source
    with a gradient in the alpha plane. Odd sizes need a codec/format that allows them
    (yuv444p, ffv1). Frame ``i`` at ``i / fps`` s. ``noise`` as in :func:`write_cfr_clip`."""
    path = Path(path)
    rng = np.random.default_rng(0)
    alpha = "a" in pix_fmt.replace("yuv", "").replace("gbrp", "") or pix_fmt in ("rgba", "bgra", "argb")
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        quiet = {"x265-params": "log-level=none"} if codec == "libx265" else {}
        stream.codec_context.options = {**quiet, **(options or {})}
        for number in range(frames):
            image = pattern_frame(number, width, height)
            if noise:
                top = image[:height - BIT_BLOCK].astype(np.int16)
                top += rng.integers(-40, 41, size=top.shape, dtype=np.int16)
                image[:height - BIT_BLOCK] = np.clip(top, 0, 255).astype(np.uint8)
            if alpha:
                ramp = np.linspace(64, 255, width, dtype=np.float32).astype(np.uint8)
                image = np.dstack([image, np.broadcast_to(ramp, (height, width))])
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image),
                                               format="rgba" if alpha else "rgb24")
            _encode(container, stream, frame)
        _encode(container, stream, None)
    return path


def write_tiny_clip(path: str | os.PathLike, *, width: int, height: int, frames: int = 4,
                    fps: int = 25, codec: str = "libx264", pix_fmt: str = "yuv444p") -> Path:
    """A clip too small for the frame-number band: frame ``i`` is a flat grey of level
    ``40 + 50 * i`` (1x1 and 2x2 work with libx264 yuv444p and ffv1)."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for number in range(frames):
            image = np.full((height, width, 3), 40 + 50 * number, dtype=np.uint8)
            _encode(container, stream, av.VideoFrame.from_ndarray(image, format="rgb24"))
        _encode(container, stream, None)
    return path


def write_cut(source: str | os.PathLike, path: str | os.PathLike, keep_fraction: float) -> Path:
    """The first ``keep_fraction`` of ``source``'s bytes (a file cut off mid-way)."""
    path = Path(path)
    data = Path(source).read_bytes()
    path.write_bytes(data[:int(len(data) * keep_fraction)])
    return path


def _mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """Top-level (type, offset, size) of the ISO-BMFF boxes in data[start:end]."""
    boxes, offset, end = [], start, len(data) if end is None else end
    while offset + 8 <= end:
        size = int.from_bytes(data[offset:offset + 4], "big")
        kind = data[offset + 4:offset + 8]
        if size == 1:
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        elif size == 0:
            size = end - offset
        if size < 8:
            break
        boxes.append((kind, offset, size))
        offset += size
    return boxes


def write_header_only(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A faststart MP4 ``source`` cut right after the header of its ``mdat`` box: the index
    describes every frame and no coded frame is there."""
    data = Path(source).read_bytes()
    mdat = [offset for kind, offset, _ in _mp4_boxes(data) if kind == b"mdat"]
    if not mdat:
        raise ValueError(f"{source}: no mdat box")
    path = Path(path)
    path.write_bytes(data[:mdat[0] + 8])
    return path


def write_corrupt_middle(source: str | os.PathLike, path: str | os.PathLike, *,
                         at_fraction: float = 0.5, length: int = 2000, seed: int = 0) -> Path:
    """``source`` with ``length`` bytes at ``at_fraction`` of the file replaced by seeded
    random bytes (damaged coded data in the middle; the header is left alone)."""
    data = bytearray(Path(source).read_bytes())
    at = int(len(data) * at_fraction)
    rng = np.random.default_rng(seed)
    data[at:at + length] = rng.integers(0, 256, size=len(data[at:at + length]), dtype=np.uint8).tobytes()
    path = Path(path)
    path.write_bytes(bytes(data))
    return path


def write_huge_duration(path: str | os.PathLike, *, frames: int = 30, fps: int = 30,
                        claimed_s: float = 1e6) -> Path:
    """A Matroska clip of ``frames`` pattern frames whose segment header claims a duration
    of ``claimed_s`` seconds (the 8-byte float Duration element, in the default 1 ms
    timestamp scale, is patched; FFmpeg reports it as the container's duration)."""
    import struct

    path = Path(path)
    write_cfr_clip(path, frames=frames, fps=fps)
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Duration element ID, size 8
    if at < 0:
        raise ValueError(f"{path}: no 8-byte Duration element")
    data[at + 3:at + 11] = struct.pack(">d", claimed_s * 1000.0)
    path.write_bytes(bytes(data))
    return path


def write_random_bytes(path: str | os.PathLike, *, size: int = 4096, seed: int = 0) -> Path:
    """``size`` seeded random bytes under whatever name is given."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8).tobytes())
    return path


def reference_decode(path: str | os.PathLike, video_stream: int = 0) -> list[tuple[float | None, np.ndarray]]:
    """FFmpeg's own decode of video stream ``video_stream`` (index among the video
    streams) with PyAV and no frame threading (what ``ffprobe -count_frames`` counts):
    (PTS in seconds from the stream start, or None; RGB picture as stored, not rotated)
    per frame. Packets that fail are skipped, as FFmpeg does. The oracle of the counts."""
    frames: list[tuple[float | None, np.ndarray]] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[video_stream]
        stream.codec_context.thread_type = "SLICE"
        stream.codec_context.thread_count = 1
        origin = stream.start_time or 0
        demuxer = container.demux(stream)
        while True:
            try:
                packet = next(demuxer)
            except (StopIteration, av.FFmpegError):
                break
            try:
                decoded = stream.codec_context.decode(packet)
            except av.FFmpegError:
                continue
            for frame in decoded:
                time_s = None if frame.pts is None else float((frame.pts - origin) * stream.time_base)
                frames.append((time_s, frame.to_ndarray(format="rgb24")))
    return frames
