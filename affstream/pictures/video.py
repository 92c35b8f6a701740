"""``affstream render``: the video re-encoded with the annotations drawn on it.

A second pass over the video and its CSV, both streamed (memory stays flat in the
video's length):

* Timing: every decoded frame is encoded once, with its own PTS in the input's time
  base, so the overlay has the same frame count and timestamps as the input (and as the
  CSV); the display rotation is carried over, so the stored size is the input's too.
* Pixels: a frame without a face goes to the encoder as decoded. On a frame with faces,
  the overlay (:func:`~.overlay.draw_overlay`) is drawn on the upright RGB picture and
  only its regions are taken from it: outside them the decoded samples are kept, so with
  a lossless setting (``crf=0``) the output equals the input there.
* Audio: every audio stream is copied packet for packet when the output container takes
  its codec, else re-encoded to AAC; packets are interleaved with the video by time.
  Subtitle and data streams are not kept.
* Output: H.264 (libx264; ``crf`` 18 by default, visually lossless) in 4:2:0, or 4:4:4
  for odd frame sizes, which 4:2:0 cannot hold; MPEG-4 part 2 where this FFmpeg has no
  libx264. Published atomically with the mark of :mod:`.outputs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from ..errors import OutputError, SourceError
from ..files import atomic_path, output_error
from ..io.avcompat import open_input
from .frames import RawFrame, VideoFrames, paired_frames
from .outputs import GENERATOR, check_output, check_video_name
from .overlay import Region, TrailKeeper, draw_overlay
from .rows import iter_frame_rows

_LOG = logging.getLogger("affstream")

DEFAULT_CRF = 18
_QP2LAMBDA = 118  # FFmpeg's FF_QP2LAMBDA: quantiser -> global_quality
_AUDIO_LEAD_S = 0.5  # audio is muxed up to this far ahead of the last video frame
_DROPPED_TAGS = frozenset({"encoder", "major_brand", "minor_version", "compatible_brands", "comment"})

ProgressCallback = Callable[[int, int | None], None]
"""Called after each frame with (frames done, frames the container declares or None)."""


@dataclass
class RenderResult:
    """What :func:`render_overlay` wrote: ``frames`` encoded, of which ``frames_with_faces``
    got an overlay; ``audio`` one line per audio stream kept ("copied aac", "re-encoded
    pcm_s24le to aac"); ``seconds`` of wall-clock time."""

    path: Path
    frames: int = 0
    frames_with_faces: int = 0
    audio: list[str] = field(default_factory=list)
    seconds: float = 0.0


def render_overlay(
    video: str | Path,
    csv: str | Path,
    out: str | Path,
    *,
    crf: int = DEFAULT_CRF,
    video_stream: int = -1,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> RenderResult:
    """Render ``video`` with the annotations of ``csv`` (written from it) drawn on, to ``out``.

    crf: libx264 quality, 0 (lossless) to 51; video_stream: as for annotate (-1 = the best).
    Raises SourceError / DataError / OutputError with one line: an unreadable video or a
    still picture, a CSV that is not affstream's or not from this video (checked frame by
    frame: nothing is published then), an output that would replace an input or another
    tool's file (unless ``overwrite``; never an input).
    """
    if not 0 <= int(crf) <= 51:
        raise OutputError(f"crf must be 0..51 (got {crf}); 18 is visually lossless, 0 lossless")
    out = check_video_name(check_output(out, inputs=[video, csv], overwrite=overwrite))
    started = time.perf_counter()
    result = RenderResult(path=out)
    rows = iter_frame_rows(csv)
    with VideoFrames(video, video_stream) as frames:
        if frames.is_image:
            raise SourceError(
                f"{frames.name}: is a still picture; render needs a video (affstream report shows annotated pictures)"
            )
        declared = frames.stream.frames or None
        first = next(rows)  # a foreign or empty CSV fails here, before any output exists
        pairs = paired_frames(frames.frames(), _chain(first, rows), frames.name, str(csv))
        with atomic_path(out) as tmp:
            try:
                _encode_all(frames, pairs, tmp, int(crf), csv, result, declared, progress)
            except av.FFmpegError as exc:
                raise output_error(out, exc, "cannot encode the video") from None
    result.seconds = time.perf_counter() - started
    return result


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _encode_all(
    frames: VideoFrames,
    pairs,
    tmp: Path,
    crf: int,
    csv,
    result: RenderResult,
    declared: int | None,
    progress: ProgressCallback | None,
) -> None:
    with av.open(str(tmp), "w") as output, open_input(frames.name) as audio_input:
        encoder = _VideoEncoder(output, frames, crf)
        audio = _AudioCopier(output, audio_input)
        result.audio = audio.describe()
        output.metadata.update({k: v for k, v in audio_input.metadata.items() if k.lower() not in _DROPPED_TAGS})
        output.metadata["comment"] = f"{GENERATOR} overlay of {Path(csv).name}"
        trails = TrailKeeper()
        for raw, group in pairs:
            faces = trails.update(group.time_s if np.isfinite(group.time_s) else raw.time_s, group.faces)
            if faces:
                drawn, regions = draw_overlay(frames.upright(raw.frame), faces)
                encoder.encode(raw, _composite(raw, drawn, regions, frames, encoder.pix_fmt))
                result.frames_with_faces += 1
            else:
                encoder.encode(raw, raw.frame)
            audio.until(float(raw.pts * frames.time_base) + _AUDIO_LEAD_S)
            result.frames += 1
            if progress is not None:
                progress(result.frames, declared)
        encoder.flush()
        audio.finish()


class _VideoEncoder:
    """The output video stream: codec, size, time base and rotation from the input."""

    def __init__(self, output, frames: VideoFrames, crf: int) -> None:
        width, height = frames.stored_size
        self.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        codec = _video_codec(output, self.pix_fmt)
        rate = frames.stream.average_rate or frames.stream.guessed_rate or 25
        self.stream = output.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = self.pix_fmt if codec == "libx264" else "yuv420p"
        self.stream.time_base = frames.time_base
        self.stream.codec_context.time_base = frames.time_base
        if codec == "libx264":
            self.stream.codec_context.options = {"crf": str(crf), "preset": "veryfast"}
        else:  # MPEG-4 part 2: a fixed quantiser, 2 (fine) to 31, from the crf scale
            if frames.time_base.denominator > 65535:
                raise OutputError(
                    f"{frames.name}: its time base {frames.time_base} is finer than MPEG-4 part 2 "
                    "allows, and this FFmpeg has no libx264; install PyAV with libx264"
                )
            self.stream.codec_context.qscale = True
            self.stream.codec_context.global_quality = _QP2LAMBDA * max(2, min(31, round(2 + crf / 4)))
        orientation = frames.orientation
        if orientation.rotation_cw or orientation.mirror:
            angle = orientation.rotation_cw if orientation.mirror else -orientation.rotation_cw
            self.stream.set_display_rotation(angle % 360, hflip=orientation.mirror)
        self.output = output
        self.time_base = frames.time_base
        self.last_pts: int | None = None

    def encode(self, raw: RawFrame, frame: av.VideoFrame) -> None:
        pts = raw.pts
        if self.last_pts is not None and pts <= self.last_pts:
            _LOG.debug("render: frame %d repeats PTS %d; moved to %d", raw.index, pts, self.last_pts + 1)
            pts = self.last_pts + 1  # an encoder needs strictly increasing PTS
        self.last_pts = pts
        frame.pts = pts
        frame.time_base = self.time_base
        frame.pict_type = av.video.frame.PictureType.NONE  # let the encoder choose frame types
        self.output.mux(self.stream.encode(frame))

    def flush(self) -> None:
        self.output.mux(self.stream.encode(None))


def _video_codec(output, pix_fmt: str) -> str:
    supported = output.supported_codecs
    if "h264" in supported and "libx264" in av.codecs_available:
        return "libx264"
    if "mpeg4" in supported and pix_fmt == "yuv420p":
        return "mpeg4"
    raise OutputError(
        f"{output.name}: this FFmpeg cannot write video into a {output.format.name} file; choose an .mp4 or .mkv output"
    )


def _colourspace(frame: av.VideoFrame) -> int:
    """The frame's matrix as swscale numbers it (FFmpeg's AVColorSpace values index the
    same table); unspecified means BT.601, as in the conversion to RGB."""
    value = int(frame.colorspace)
    return value if value in (1, 4, 5, 6, 7, 9) else 5


def _composite(raw: RawFrame, drawn: np.ndarray, regions: list[Region], frames: VideoFrames, pix_fmt: str) -> av.VideoFrame:
    """A new frame in ``pix_fmt``: the drawn picture inside ``regions``, the decoded
    samples outside them (regions are even-aligned, so 2x2 chroma blocks do not straddle)."""
    stored = frames.to_stored(drawn)
    picture = av.VideoFrame.from_ndarray(stored, format="rgb24").reformat(format=pix_fmt, dst_colorspace=_colourspace(raw.frame))
    original = raw.frame.reformat(format=pix_fmt)
    mask = np.zeros(drawn.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in regions:
        mask[y0:y1, x0:x1] = True
    mask = frames.to_stored(mask)
    for index, (new, old) in enumerate(zip(picture.planes, original.planes, strict=True)):
        step = 2 if index and pix_fmt == "yuv420p" else 1
        keep = ~mask[::step, ::step]
        target = _plane_view(new)
        target[keep] = _plane_view(old)[keep]
    picture.colorspace = raw.frame.colorspace
    picture.color_range = raw.frame.color_range
    return picture


def _plane_view(plane) -> np.ndarray:
    """A (height, width) uint8 view of one plane's samples (its padding cut off)."""
    return np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


class _AudioCopier:
    """Copies (or re-encodes to AAC) every audio stream, interleaved by time."""

    def __init__(self, output, source) -> None:
        self.output = output
        self.source = source
        self.routes: dict[int, tuple[object, bool]] = {}  # input index -> (output stream, copy?)
        self.notes: list[str] = []
        for stream in source.streams.audio:
            codec = stream.codec_context.codec.canonical_name
            if codec in output.supported_codecs:
                self.routes[stream.index] = (output.add_stream_from_template(stream), True)
                self.notes.append(f"copied {codec}")
            else:
                target = output.add_stream("aac", rate=stream.rate or 48000)
                if stream.layout is not None:
                    target.layout = stream.layout
                self.routes[stream.index] = (target, False)
                self.notes.append(f"re-encoded {codec} to aac")
        streams = [s for s in source.streams.audio]
        self.packets = source.demux(*streams) if streams else iter(())
        self.pending = None

    def describe(self) -> list[str]:
        return list(self.notes)

    def until(self, time_s: float) -> None:
        """Write the audio packets that start before ``time_s`` (absolute seconds)."""
        while True:
            if self.pending is None:
                self.pending = next(self.packets, None)
                if self.pending is None:
                    return
            packet = self.pending
            if packet.dts is not None and packet.pts is not None and float(packet.pts * packet.time_base) > time_s:
                return
            self.pending = None
            self._write(packet)

    def _write(self, packet) -> None:
        target, copy = self.routes[packet.stream.index]
        if copy:
            if packet.dts is None:
                return  # the demuxer's end-of-stream marker
            packet.stream = target
            self.output.mux(packet)
            return
        try:
            decoded = packet.decode()
        except av.FFmpegError as exc:
            _LOG.warning("render: an audio packet could not be decoded (%s); skipped", exc)
            return
        for frame in decoded:
            self.output.mux(target.encode(frame))

    def finish(self) -> None:
        self.until(float("inf"))
        for target, copy in self.routes.values():
            if not copy:
                self.output.mux(target.encode(None))
