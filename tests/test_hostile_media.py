"""A hostile corpus: damaged, odd and special inputs, generated here (nothing committed).

Every case has one asserted outcome through the library (``probe`` / ``iter_frames`` /
``count_frames``): either a one-line SourceError naming the path with a hint (the text
after ";"), or frames with exact counts, sizes and times. The count of a damaged file is
FFmpeg's own: the frames a decoder without frame threading gives
(``media.reference_decode``, what ``ffprobe -count_frames`` counts).

Every decode runs in a child process (one worker, restarted after a failure), so that a
native crash or a hang (a FIFO read) fails its case instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import media
import pytest

import affstream

TESTS_DIR = Path(__file__).resolve().parent
PACKAGE_ROOT = Path(affstream.__file__).resolve().parent.parent  # the child imports this affstream
REPLY_TIMEOUT_S = 60.0

# The child: one JSON request per line on stdin, one JSON reply per line on stdout.
WORKER = r"""
import json, sys, traceback
sys.path[:0] = [sys.argv[2], sys.argv[1]]
import media
from affstream.errors import SourceError
from affstream.io import count_frames, iter_frames, probe
from affstream.records import DecodeStats

def red_corner(image):
    h, w = image.shape[:2]
    m = min(16, h // 4, w // 4)
    if m < 2:
        return None
    blocks = {"top_left": image[:m, :m], "top_right": image[:m, -m:],
              "bottom_left": image[-m:, :m], "bottom_right": image[-m:, -m:]}
    red = [k for k, b in blocks.items() if b[..., 0].mean() > 180 and b[..., 1].mean() < 80]
    return red[0] if len(red) == 1 else None

def numbers(images):
    ok = all(im.shape[0] >= 32 and im.shape[1] >= 32 for im in images)
    return [media.read_frame_number(im) for im in images] if ok else None

def handle(request):
    path, stream = request["path"], request.get("video_stream", -1)
    choice = {} if stream == -1 else {"video_stream": stream}
    try:
        info = probe(path, **choice).to_dict()
        stats = DecodeStats()
        frames = list(iter_frames(path, stats=stats, **choice))
        counted = count_frames(path, **choice)
    except SourceError as error:
        return {"ok": False, "error": str(error)}
    except Exception:
        return {"ok": False, "exception": traceback.format_exc(limit=4)}
    reply = {
        "ok": True, "info": info, "frames": len(frames), "count": counted,
        "indices": [f.frame_index for f in frames],
        "times": [f.time_s for f in frames],
        "shapes": sorted({f.image.shape for f in frames}),
        "contiguous_uint8": all(f.image.flags["C_CONTIGUOUS"] and f.image.dtype.name == "uint8"
                                for f in frames),
        "numbers": numbers([f.image for f in frames]),
        "red_corner": red_corner(frames[0].image),
        "errors": stats.errors, "messages": stats.error_messages,
    }
    if request.get("reference"):
        ref = media.reference_decode(path, max(stream, 0) if stream >= 0 else info["stream_index"])
        reply["reference"] = {"count": len(ref), "times": [t for t, _ in ref],
                              "numbers": numbers([im for _, im in ref])}
    return reply

for line in sys.stdin:
    print(json.dumps(handle(json.loads(line))), flush=True)
"""


class Worker:
    """The decoding child; :meth:`ask` restarts it when the last one died or hung.

    A native crash may strike after the case that caused it (a double free is found
    later), so the cases in ``ISOLATED`` get a child of their own that must then exit
    cleanly, and the shared child must exit cleanly at the end (checked by the fixture).
    """

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()

    def _start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(TESTS_DIR), str(PACKAGE_ROOT)], cwd=self.cwd, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, bufsize=1)
        return self.process

    def ask_alone(self, path: str | Path, **request) -> dict:
        """:meth:`ask` in a child of its own, which must then exit with status 0."""
        self.close_child()
        reply = self.ask(path, **request)
        code = self.close_child()
        assert code == 0, f"decoding {path}: the child exited with {code} after replying"
        return reply

    def ask(self, path: str | Path, **request) -> dict:
        process = self._start()
        process.stdin.write(json.dumps({"path": str(path), **request}) + "\n")
        process.stdin.flush()
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            ready = selector.select(REPLY_TIMEOUT_S)
        if not ready:
            process.kill()
            process.wait()
            pytest.fail(f"decoding {path} hung for {REPLY_TIMEOUT_S:.0f} s (killed)")
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            self.stderr.seek(0)
            tail = self.stderr.read()[-600:]
            pytest.fail(f"decoding {path} killed the process (exit {code}): {tail}")
        return json.loads(line)

    def close_child(self) -> int | None:
        """End the child (EOF on its stdin); its exit status (None if none ran)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.stdin.close()
            try:
                return process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                return process.wait()
        return process.returncode


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def worker(corpus):
    child = Worker(corpus)
    yield child
    code = child.close_child()
    child.stderr.close()
    assert code in (None, 0), f"the shared decoding child exited with {code}"


# ---------------------------------------------------------------------------- expectations


@dataclass
class Fails:
    """A one-line SourceError naming the path and holding ``words``."""

    words: str


@dataclass
class Frames:
    """Decoded frames. count: an int, or "reference" (FFmpeg's own count, which must also
    be below ``below``); shape: (H, W, 3) of every frame; fps: times are k / fps, or
    ``times`` exactly (neither: the reference's times); numbers: frame numbers read back
    (None: not checked; "range": 0..count-1; "reference": the reference's); errors: the
    decode errors counted (None with ``below``: at least one, the file says it is cut
    off); info: fields of the VideoInfo; red_corner: where the marker of the stored
    top-left corner is after turning the picture upright."""

    count: int | str
    shape: tuple[int, int, int]
    fps: float | None = None
    numbers: str | None = "range"
    below: int | None = None
    errors: int | None = 0
    info: dict = field(default_factory=dict)
    red_corner: str | None = None
    video_stream: int = -1
    times: list[float] | None = None
    time_tol: float = 1e-6  # Matroska stores milliseconds: 5e-4


H, W = media.HEIGHT, media.WIDTH


def _cut_faststart(corpus: Path, name: str, fraction: float) -> Path:
    return media.write_truncated_clip(corpus / name, frames=60, keep_fraction=fraction)


def _cut_plain(corpus: Path, name: str, fraction: float) -> Path:
    return media.write_truncated_clip(corpus / name, frames=60, keep_fraction=fraction, faststart=False)


def _cut_of(maker, corpus: Path, name: str, fraction: float) -> Path:
    whole = maker(corpus / f"whole_{name}")
    return media.write_cut(whole, corpus / name, fraction)


def _special(corpus: Path, kind: str) -> Path:
    if kind == "fifo":
        path = corpus / "live feed.mp4"
        if not path.exists():
            os.mkfifo(path)
    elif kind == "dev_zero":
        path = corpus / "zero.mp4"
        if not path.is_symlink():
            path.symlink_to("/dev/zero")
    elif kind == "loop":
        path, other = corpus / "loop_a.mp4", corpus / "loop_b.mp4"
        if not path.is_symlink():
            path.symlink_to(other.name)
            other.symlink_to(path.name)
    else:
        path = corpus / "dangling.mp4"
        if not path.is_symlink():
            path.symlink_to(corpus / "deleted.mp4")
    return path


def _odd_name(corpus: Path, name: str) -> str:
    """A 30-frame clip under ``name`` in the corpus folder; returned relative (the
    worker runs there), so FFmpeg must not read a protocol out of the name."""
    media.write_cfr_clip(corpus / name, frames=30)
    return name


CASES: dict[str, tuple] = {
    # --- not media at all
    "zero_byte": (lambda c: media.write_zero_byte(c / "empty.mp4"), Fails("file is empty (0 bytes)")),
    "random_bytes": (lambda c: media.write_random_bytes(c / "random.mp4"), Fails("not a readable video")),
    "random_bytes_big": (lambda c: media.write_random_bytes(c / "noise.bin", size=65536, seed=1),
                         Fails("not a readable video")),
    "text": (lambda c: media.write_text_file(c / "notes.mp4"), Fails("not a readable video")),
    "audio_only": (lambda c: media.write_audio_only(c / "tone.wav"), Fails("no video stream (audio-only file)")),
    "audio_with_cover": (lambda c: media.write_audio_with_cover(c / "song.m4a"),
                         Fails("no video stream (holds only a cover picture)")),
    # --- stills, with and without ICC profiles and EXIF rotation
    "png": (lambda c: media.write_image(c / "plain.png"), Frames(1, (H, W, 3), numbers=None, red_corner="top_left", times=[0.0])),
    "png_icc": (lambda c: media.write_image(c / "icc.png", icc=True),
                Frames(1, (H, W, 3), numbers=None, red_corner="top_left", times=[0.0], info={"codec": "png"})),
    "png_icc_exif6": (lambda c: media.write_image(c / "icc_exif6.png", icc=True, exif_orientation=6),
                      Frames(1, (W, H, 3), numbers=None, red_corner="top_right", times=[0.0],
                             info={"rotation_deg": 90})),
    "jpeg_icc_exif3": (lambda c: media.write_image(c / "icc_exif3.jpg", icc=True, exif_orientation=3),
                       Frames(1, (H, W, 3), numbers=None, red_corner="bottom_right", times=[0.0],
                              info={"rotation_deg": 180})),
    "jpeg_exif8": (lambda c: media.write_image(c / "exif8.jpg", exif_orientation=8),
                   Frames(1, (W, H, 3), numbers=None, red_corner="bottom_left", times=[0.0],
                          info={"rotation_deg": 270})),
    "png_video_icc": (lambda c: media.write_png_video(c / "png_icc.mov", frames=5),
                      Frames(5, (H, W, 3), fps=10, info={"codec": "png"})),
    # --- cut off: with the index first the frames before the cut (FFmpeg's count);
    #     with the index last nothing can be read
    "cut_faststart_10": (lambda c: _cut_faststart(c, "cut10.mp4", 0.1),
                         Frames("reference", (H, W, 3), numbers="reference", below=60, errors=None)),
    "cut_faststart_50": (lambda c: _cut_faststart(c, "cut50.mp4", 0.5),
                         Frames("reference", (H, W, 3), numbers="reference", below=60, errors=None)),
    "cut_faststart_95": (lambda c: _cut_faststart(c, "cut95.mp4", 0.95),
                         Frames("reference", (H, W, 3), numbers="reference", below=60, errors=None)),
    "cut_index_last_50": (lambda c: _cut_plain(c, "cut_plain50.mp4", 0.5), Fails("not a readable video")),
    "cut_index_last_95": (lambda c: _cut_plain(c, "cut_plain95.mp4", 0.95), Fails("not a readable video")),
    "cut_mkv_60": (lambda c: _cut_of(lambda p: media.write_cfr_clip(p.with_suffix(".mkv"), frames=60, noise=True),
                                     c, "cut60.mkv", 0.6),
                   # a cut Matroska or raw stream declares no length: nothing says it is cut
                   Frames("reference", (H, W, 3), numbers="reference", below=60, errors=0)),
    "cut_raw_h264": (lambda c: _cut_of(lambda p: media.write_raw_h264(p.with_suffix(".h264"), frames=40),
                                       c, "cut.h264", 0.6),
                     Frames("reference", (H, W, 3), fps=25, numbers="reference", below=40, errors=0)),
    "header_only": (lambda c: media.write_header_only(
        media.write_cfr_clip(c / "whole_fs.mp4", frames=30, container_options={"movflags": "faststart"}),
        c / "header_only.mp4"), Fails("no video frame could be decoded")),
    # --- damaged packets in the middle: FFmpeg's count, the damage counted as errors
    "corrupt_middle_mp4": (lambda c: media.write_corrupt_middle(
        media.write_cfr_clip(c / "whole_c.mp4", frames=60, noise=True), c / "corrupt.mp4"),
        Frames("reference", (H, W, 3), numbers=None, below=60, errors=None)),
    "corrupt_middle_mkv": (lambda c: media.write_corrupt_middle(
        media.write_cfr_clip(c / "whole_c.mkv", frames=60, noise=True), c / "corrupt.mkv", length=400),
        Frames("reference", (H, W, 3), numbers=None, errors=None)),
    # --- sizes and pixel formats
    "tiny_1x1": (lambda c: media.write_tiny_clip(c / "tiny1.mp4", width=1, height=1),
                 Frames(4, (1, 1, 3), fps=25, numbers=None)),
    "tiny_2x2": (lambda c: media.write_tiny_clip(c / "tiny2.mp4", width=2, height=2, pix_fmt="yuv420p"),
                 Frames(4, (2, 2, 3), fps=25, numbers=None)),
    "odd_161x121_h264": (lambda c: media.write_pixfmt_clip(c / "odd.mp4", codec="libx264", pix_fmt="yuv444p",
                                                           width=161, height=121),
                         Frames(6, (121, 161, 3), fps=25)),
    "odd_161x121_ffv1": (lambda c: media.write_pixfmt_clip(c / "odd.mkv", codec="ffv1", pix_fmt="yuv420p",
                                                           width=161, height=121),
                         Frames(6, (121, 161, 3), fps=25)),
    "10bit_h264": (lambda c: media.write_pixfmt_clip(c / "ten.mp4", codec="libx264", pix_fmt="yuv420p10le"),
                   Frames(6, (H, W, 3), fps=25, info={"codec": "h264"})),
    "10bit_hevc": (lambda c: media.write_pixfmt_clip(c / "ten_hevc.mkv", codec="libx265", pix_fmt="yuv420p10le"),
                   Frames(6, (H, W, 3), fps=25, info={"codec": "hevc"})),
    "alpha_ffv1": (lambda c: media.write_pixfmt_clip(c / "alpha.mkv", codec="ffv1", pix_fmt="yuva420p"),
                   Frames(6, (H, W, 3), fps=25)),
    "alpha_png": (lambda c: media.write_pixfmt_clip(c / "alpha_png.mov", codec="png", pix_fmt="rgba"),
                  Frames(6, (H, W, 3), fps=25)),
    "alpha_prores_10bit": (lambda c: media.write_pixfmt_clip(c / "alpha.mov", codec="prores_ks",
                                                             pix_fmt="yuva444p10le"),
                           Frames(6, (H, W, 3), fps=25, info={"codec": "prores"})),
    # --- timing and geometry
    "variable_frame_rate": (lambda c: media.write_vfr_clip(c / "vfr.mp4"),
                            Frames(len(media.VFR_PTS_MS), (H, W, 3),
                                   times=[ms / 1000 for ms in media.VFR_PTS_MS])),
    "rotation_90": (lambda c: media.write_rotated_clip(c / "rot90.mp4", rotation_cw=90),
                    Frames(4, (W, H, 3), fps=30, numbers=None, red_corner="top_right",
                           info={"rotation_deg": 90, "width": H, "height": W})),
    "rotation_270_mirror": (lambda c: media.write_rotated_clip(c / "rot270m.mp4", rotation_cw=270, mirror=True),
                            # "rotate 270, then mirror" is applied as "mirror, then rotate 90"
                            Frames(4, (W, H, 3), fps=30, numbers=None, red_corner="bottom_right",
                                   info={"rotation_deg": 90})),
    "huge_claimed_duration": (lambda c: media.write_huge_duration(c / "huge.mkv", frames=30),
                              Frames(30, (H, W, 3), fps=30, time_tol=5e-4, info={"duration_s": 1e6})),
    # --- several video streams
    "two_streams_best": (lambda c: media.write_multi_stream_clip(c / "two.mkv"),
                         Frames(5, (240, 320, 3), fps=30, time_tol=5e-4, info={"stream_index": 1, "video_streams": 2})),
    "two_streams_first": (lambda c: media.write_multi_stream_clip(c / "two.mkv"),
                          Frames(6, (H, W, 3), fps=30, time_tol=5e-4, video_stream=0, info={"stream_index": 0})),
    "two_streams_missing": (lambda c: media.write_multi_stream_clip(c / "two.mkv"),
                            Fails("has no video stream 7: it has 2 video stream(s)")),
    "big_cover_beside_video": (lambda c: media.write_multi_stream_clip(c / "cover.mkv", sizes=((W, H),),
                                                                      default=-1, cover=(640, 480)),
                               Frames(6, (H, W, 3), fps=30, time_tol=5e-4, info={"codec": "h264", "video_streams": 2})),
    # --- names
    "name_spaces_brackets_unicode": (lambda c: _odd_name(c, "clip [1] (copy) — é ü 日本 😀.mp4"),
                                     Frames(30, (H, W, 3), fps=30)),
    "name_like_pipe_protocol": (lambda c: _odd_name(c, "pipe:0.mp4"), Frames(30, (H, W, 3), fps=30)),
    "name_like_file_protocol": (lambda c: _odd_name(c, "file:other.mp4"), Frames(30, (H, W, 3), fps=30)),
    "name_like_concat": (lambda c: _odd_name(c, "concat:a.mp4|b.mp4"), Frames(30, (H, W, 3), fps=30)),
    "name_with_percent": (lambda c: _odd_name(c, "frame%03d.mp4"), Frames(30, (H, W, 3), fps=30)),
    "name_leading_dash": (lambda c: _odd_name(c, "-i clip.mp4"), Frames(30, (H, W, 3), fps=30)),
    # --- special files: never opened for reading
    "fifo": (lambda c: _special(c, "fifo"), Fails("is a named pipe (FIFO), not a regular file")),
    "dev_zero_as_mp4": (lambda c: _special(c, "dev_zero"),
                        Fails("is a character device (symbolic link to /dev/zero), not a regular file")),
    "symlink_loop": (lambda c: _special(c, "loop"), Fails("symbolic link loop")),
    "dangling_symlink": (lambda c: _special(c, "dangling"), Fails("broken symbolic link")),
}
_STREAM_REQUESTS = {"two_streams_missing": 7}
# decoders whose frames carry side data with metadata (PNG's ICC profile), or stills
ISOLATED = {"png", "png_icc", "png_icc_exif6", "jpeg_icc_exif3", "jpeg_exif8", "png_video_icc", "alpha_png"}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input(case, corpus, worker):
    maker, expected = CASES[case]
    path = maker(corpus)
    stream = _STREAM_REQUESTS.get(case, getattr(expected, "video_stream", -1))
    reference = isinstance(expected, Frames) and (expected.count == "reference" or expected.numbers == "reference")
    ask = worker.ask_alone if case in ISOLATED else worker.ask
    reply = ask(path, video_stream=stream, reference=reference)
    assert "exception" not in reply, f"{case}: {reply.get('exception')}"
    if isinstance(expected, Fails):
        assert not reply["ok"], f"{case}: decoded {reply.get('frames')} frames, expected a SourceError"
        message = reply["error"]
        assert message.startswith(f"{path}: "), message
        assert expected.words in message, message
        assert "\n" not in message and "; " in message, message  # one line, with a hint
        return
    assert reply["ok"], f"{case}: {reply.get('error')}"
    _check_frames(case, expected, reply, str(path))


def _check_frames(case: str, expected: Frames, reply: dict, path: str) -> None:
    count = reply["frames"]
    if expected.count == "reference":
        assert count == reply["reference"]["count"], (case, count, reply["reference"]["count"])
        assert count > 0
        if expected.below is not None:
            assert count < expected.below
    else:
        assert count == expected.count, (case, count)
    assert reply["count"] == count  # count_frames == what iter_frames yields
    assert reply["indices"] == list(range(1, count + 1))
    assert reply["shapes"] == [list(expected.shape)] and reply["contiguous_uint8"]
    times = reply["times"]
    if expected.times is not None:
        assert times == pytest.approx(expected.times, abs=expected.time_tol)
    elif expected.fps is not None:
        assert times == pytest.approx([k / expected.fps for k in range(count)], abs=expected.time_tol)
    else:
        reference_times = reply["reference"]["times"]
        assert times == pytest.approx(reference_times, abs=1e-9)
    if expected.numbers == "range":
        assert reply["numbers"] == list(range(count)), case
    elif expected.numbers == "reference":
        assert reply["numbers"] == reply["reference"]["numbers"], case
    if expected.errors is not None:
        assert reply["errors"] == expected.errors, reply["messages"]
    elif expected.count == "reference" and expected.below is not None:
        assert reply["errors"] >= 1 and reply["messages"], case  # a cut-off file says so
    if expected.red_corner is not None:
        assert reply["red_corner"] == expected.red_corner, case
    info = reply["info"]
    assert info["path"] == path
    for key, value in expected.info.items():
        assert info[key] == (pytest.approx(value) if isinstance(value, float) else value), (case, key, info[key])
