"""Frame accounting: the decoded count is FFmpeg's own count, and rows follow it.

For every input of a generated set (complete and cut-off files with and without the
index first, variable frame rate, odd sizes, 10-bit and alpha pixel formats, rotation,
several video streams) ``count_frames`` and ``iter_frames`` must give exactly
``ffprobe -v error -count_frames -select_streams v:N -show_entries stream=nb_read_frames``
for the stream they read (``VideoInfo.stream_index``). ffprobe is the system's (the
FFmpeg command-line tools); the tests are skipped, saying so, when it is not installed.
The last test checks the rows of the annotation pipeline: decoded frames x tracks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import media
import pytest

from affstream.errors import SourceError
from affstream.io import count_frames, iter_frames, probe
from affstream.records import DecodeStats

FFPROBE = shutil.which("ffprobe")
needs_ffprobe = pytest.mark.skipif(FFPROBE is None, reason="ffprobe is not installed (apt-get install ffmpeg); "
                                                           "the counts are compared with FFmpeg's own")


def ffprobe_count(path: Path, video_stream: int = 0) -> int | None:
    """``nb_read_frames`` of video stream ``video_stream``; None when ffprobe cannot read
    the file (it exits non-zero or reports no count)."""
    done = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-select_streams", f"v:{video_stream}",
         "-show_entries", "stream=nb_read_frames", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None
    streams = json.loads(done.stdout or "{}").get("streams", [])
    count = streams[0].get("nb_read_frames") if streams else None
    return int(count) if count is not None and str(count).isdigit() else None


def _faststart(**kwargs) -> dict:
    return {"container_options": {"movflags": "faststart"}, **kwargs}


def _cut(maker, fraction: float):
    def make(path: Path) -> Path:
        whole = maker(path.with_name("whole_" + path.name))
        return media.write_cut(whole, path, fraction)
    return make


def _h264(path: Path, **kwargs) -> Path:
    return media.write_cfr_clip(path, frames=60, noise=True, **kwargs)


# name -> writer of the file (given its path, whose suffix picks the container)
COMPLETE = {
    "cfr.mp4": lambda p: media.write_cfr_clip(p, frames=30),
    "cfr_faststart.mp4": lambda p: media.write_cfr_clip(p, frames=30, **_faststart()),
    "cfr.mkv": lambda p: media.write_cfr_clip(p, frames=30),
    "mpeg4.avi": lambda p: media.write_cfr_clip(p, frames=30, codec="mpeg4"),
    "vfr.mp4": media.write_vfr_clip,
    "vfr.mkv": media.write_vfr_clip,
    "odd_161x121.mp4": lambda p: media.write_pixfmt_clip(p, codec="libx264", pix_fmt="yuv444p", width=161, height=121),
    "odd_161x121.mkv": lambda p: media.write_pixfmt_clip(p, codec="ffv1", pix_fmt="yuv420p", width=161, height=121),
    "tiny_2x2.mp4": lambda p: media.write_tiny_clip(p, width=2, height=2, pix_fmt="yuv420p"),
    "10bit_h264.mp4": lambda p: media.write_pixfmt_clip(p, codec="libx264", pix_fmt="yuv420p10le", frames=20),
    "10bit_hevc.mkv": lambda p: media.write_pixfmt_clip(p, codec="libx265", pix_fmt="yuv420p10le", frames=20),
    "alpha_ffv1.mkv": lambda p: media.write_pixfmt_clip(p, codec="ffv1", pix_fmt="yuva420p"),
    "alpha_prores.mov": lambda p: media.write_pixfmt_clip(p, codec="prores_ks", pix_fmt="yuva444p10le"),
    "alpha_vp9.webm": lambda p: media.write_pixfmt_clip(p, codec="libvpx-vp9", pix_fmt="yuva420p"),
    "rotated_90.mp4": lambda p: media.write_rotated_clip(p, rotation_cw=90, frames=10),
    "rotated_270_mirror.mp4": lambda p: media.write_rotated_clip(p, rotation_cw=270, mirror=True, frames=10),
    "raw.h264": lambda p: media.write_raw_h264(p, frames=20),
}
CUT = {
    # the index first: frames up to the cut (a frame-threaded decoder alone loses the
    # frames in flight here)
    **{f"cut_faststart_{int(f * 100)}.mp4": _cut(lambda p: _h264(p, **_faststart()), f)
       for f in (0.1, 0.25, 0.5, 0.75, 0.95)},
    "cut_faststart_no_bframes_50.mp4": _cut(lambda p: _h264(p, bframes=0, **_faststart()), 0.5),
    "cut_faststart_hevc_50.mp4": _cut(lambda p: media.write_pixfmt_clip(
        p, codec="libx265", pix_fmt="yuv420p", frames=40, noise=True, **_faststart()), 0.5),
    "cut_faststart_mpeg4_60.mp4": _cut(lambda p: media.write_cfr_clip(p, frames=60, codec="mpeg4",
                                                                      **_faststart()), 0.6),
    "cut_50.mkv": _cut(_h264, 0.5),
    "cut_90.mkv": _cut(_h264, 0.9),
    "cut_60.h264": _cut(lambda p: media.write_raw_h264(p, frames=40), 0.6),
    "corrupt_middle.mp4": lambda p: media.write_corrupt_middle(_h264(p.with_name("whole_" + p.name)), p),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("accounting")


def _check_count(path: Path, video_stream: int = -1) -> int:
    choice = {} if video_stream == -1 else {"video_stream": video_stream}
    info = probe(path, **choice)
    expected = ffprobe_count(path, info.stream_index)
    assert expected is not None and expected > 0, f"ffprobe cannot count {path.name}"
    stats = DecodeStats()
    assert count_frames(path, stats=stats, **choice) == expected, path.name
    assert stats.frames == expected
    return expected


@needs_ffprobe
@pytest.mark.parametrize("name", list(COMPLETE))
def test_complete_files_count_as_ffprobe(folder, name):
    path = COMPLETE[name](folder / name)
    expected = _check_count(path)
    stats = DecodeStats()
    frames = list(iter_frames(path, stats=stats))
    assert len(frames) == expected == stats.frames and stats.errors == 0
    assert [f.frame_index for f in frames] == list(range(1, expected + 1))
    declared = probe(path).frame_count
    assert declared in (None, expected)


@needs_ffprobe
@pytest.mark.parametrize("name", list(CUT))
def test_cut_and_damaged_files_count_as_ffprobe(folder, name):
    path = CUT[name](folder / name)
    expected = _check_count(path)
    stats = DecodeStats()
    frames = list(iter_frames(path, stats=stats))
    assert len(frames) == expected
    assert [f.frame_index for f in frames] == list(range(1, expected + 1))
    times = [f.time_s for f in frames]
    assert times == sorted(times)


@needs_ffprobe
@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_cut_files_with_the_index_last_are_unreadable_for_both(folder, fraction):
    path = _cut(_h264, fraction)(folder / f"cut_index_last_{int(fraction * 100)}.mp4")
    assert ffprobe_count(path) is None
    with pytest.raises(SourceError, match="not a readable video"):
        count_frames(path)


@needs_ffprobe
@pytest.mark.parametrize("name", ["single_face.mp4", "no_face.mp4", "WolfgangLanger_Pexels.mp4",
                                  "single_face.jpg"])
def test_real_media_count_as_ffprobe(data_dir, name):
    _check_count(data_dir / name)


@needs_ffprobe
def test_each_video_stream_counts_as_ffprobe(folder):
    path = media.write_multi_stream_clip(folder / "three.mkv", sizes=((160, 120), (320, 240), (96, 64)),
                                         frames=8)
    assert [_check_count(path, k) for k in range(3)] == [8, 7, 6]
    assert probe(path).stream_index == 1  # the best: the largest
    assert _check_count(path) == 7
    covered = media.write_multi_stream_clip(folder / "covered.mkv", sizes=((160, 120),), default=-1,
                                            cover=(640, 480))
    assert probe(covered).stream_index == 0 and _check_count(covered) == 6


@pytest.fixture(scope="module")
def smoke_stages():
    from affstream.api import resolve_config
    from affstream.pipeline import load_stages

    return load_stages(resolve_config("smoke", device="cpu"))


@needs_ffprobe
@pytest.mark.usefixtures("one_torch_thread")
def test_rows_are_decoded_frames_times_tracks(folder, smoke_stages):
    """One row per decoded frame per tracked face (one face_id -1 row for a frame
    without a face), on a cut-off file, on a file of several streams and with two faces."""
    from two_faces import make_two_face_clip

    import affstream

    cut = _cut(lambda p: _h264(p, **_faststart()), 0.5)(folder / "rows_cut.mp4")
    streams = media.write_multi_stream_clip(folder / "rows_two.mkv", frames=8)
    faces = make_two_face_clip(folder / "rows_faces.mp4", frames=12)
    for path, tracks in ((cut, 0), (streams, 0), (faces, 2)):
        run = affstream.annotate(path, stages=smoke_stages)
        rows = list(run)
        frames = ffprobe_count(path, run.info.stream_index)
        assert frames == count_frames(path)
        assert len(rows) == frames * max(1, tracks), path.name
        assert sorted({r.frame_index for r in rows}) == list(range(1, frames + 1))
        assert len({r.track_id for r in rows}) == max(1, tracks)
        if tracks:
            assert all(r.success for r in rows)
        else:
            assert all(r.track_id == -1 and not r.success for r in rows)
    assert run.info.stream_index == 0
