"""Tests of affstream.io.decode (probe, iter_frames) on real and synthetic media."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import media
import numpy as np
import pytest
from PIL import Image, ImageOps

from affstream.errors import ConfigError, SourceError
from affstream.io import count_frames, decode, iter_frames, probe
from affstream.io.sources import SourceSettings, VideoSource
from affstream.records import DecodeStats, Frame


def decode_all(path, **kwargs) -> tuple[list[Frame], DecodeStats]:
    stats = DecodeStats()
    return list(iter_frames(path, stats=stats, **kwargs)), stats


def times_of(frames: list[Frame]) -> np.ndarray:
    return np.array([frame.time_s for frame in frames], dtype=np.float64)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ------------------------------------------------------------------------- real clips


def test_single_face_counts_times_and_images(single_face_mp4):
    frames, stats = decode_all(single_face_mp4)
    assert len(frames) == 72
    assert stats.frames == 72 and stats.errors == 0 and stats.error_messages == []
    assert [frame.frame_index for frame in frames] == list(range(1, 73))
    times = times_of(frames)
    assert times[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(times) > 0)
    # constant 30 fps: PTS times land on k / 30 (time base 1/15360 is exact for 512 ticks)
    np.testing.assert_allclose(times, np.arange(72) / 30.0, atol=1e-9)
    image = frames[0].image
    assert image.shape == (360, 640, 3) and image.dtype == np.uint8
    assert image.flags["C_CONTIGUOUS"]
    # frames differ (a real video, not a repeated buffer)
    assert mean_abs_diff(frames[0].image, frames[-1].image) > 1.0


def test_probe_single_face(single_face_mp4):
    info = probe(single_face_mp4)
    assert (info.codec, info.width, info.height, info.rotation_deg) == ("h264", 640, 360, 0)
    assert info.average_fps == pytest.approx(30.0)
    assert info.frame_count == 72
    assert info.duration_s == pytest.approx(2.4, abs=0.05)
    assert info.time_base == "1/15360"
    assert info.path == str(single_face_mp4)
    assert info.to_dict()["width"] == 640


def test_wolfgang_counts_and_times(wolfgang_mp4):
    frames, stats = decode_all(wolfgang_mp4, threads=2)
    assert len(frames) == 472 and stats.frames == 472 and stats.errors == 0
    times = times_of(frames)
    assert times[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(times) > 0)
    # 23.976 fps = 24000/1001: frame k at k * 1001/24000 s, from the PTS
    np.testing.assert_allclose(times, np.arange(472) * 1001 / 24000, atol=1e-6)
    assert probe(wolfgang_mp4).frame_count == 472


def test_no_face_edit_list_frames_are_not_errors(no_face_mp4):
    frames, stats = decode_all(no_face_mp4)
    # the container declares 98 samples; its edit list discards 3 (FFmpeg outputs 95)
    assert probe(no_face_mp4).frame_count == 98
    assert len(frames) == 95 and stats.errors == 0
    assert frames[0].image.shape == (540, 960, 3)


@pytest.mark.parametrize("fixture, shape", [("single_face_jpg", (562, 572, 3)),
                                            ("multi_face_jpg", (667, 1000, 3))])
def test_still_image_is_one_frame_at_zero(request, fixture, shape):
    path = request.getfixturevalue(fixture)
    frames, stats = decode_all(path)
    assert len(frames) == 1 and stats.frames == 1 and stats.errors == 0
    assert frames[0].frame_index == 1 and frames[0].time_s == 0.0
    assert frames[0].image.shape == shape
    # RGB channel order, same picture as Pillow decodes (decoders differ by rounding only)
    with Image.open(path) as reference:
        assert mean_abs_diff(frames[0].image, np.asarray(reference.convert("RGB"))) < 3.0
    info = probe(path)
    assert (info.width, info.height, info.frame_count) == (shape[1], shape[0], 1)
    assert info.average_fps is None and info.codec == "mjpeg"


# -------------------------------------------------------------------- synthetic clips


def test_cfr_clip_delivers_every_frame_in_order(cfr_clip):
    frames, stats = decode_all(cfr_clip)
    assert len(frames) == 30 and stats.errors == 0
    assert [media.read_frame_number(frame.image) for frame in frames] == list(range(30))
    np.testing.assert_allclose(times_of(frames), np.arange(30) / 30.0, atol=1e-9)


def test_threads_setting_gives_identical_frames(cfr_clip):
    single, _ = decode_all(cfr_clip, threads=1)
    multi, _ = decode_all(cfr_clip, threads=3)
    assert len(single) == len(multi) == 30
    assert all(np.array_equal(a.image, b.image) and a.time_s == b.time_s
               for a, b in zip(single, multi, strict=True))


def test_negative_threads_is_a_config_error(cfr_clip):
    with pytest.raises(ConfigError, match="threads"):
        next(iter_frames(cfr_clip, stats=DecodeStats(), threads=-1))


def test_vfr_times_are_the_written_pts(vfr_clip):
    frames, stats = decode_all(vfr_clip)
    assert len(frames) == len(media.VFR_PTS_MS) and stats.frames == len(frames)
    expected = np.array(media.VFR_PTS_MS, dtype=np.float64) / 1000.0
    np.testing.assert_allclose(times_of(frames), expected, rtol=0, atol=1e-9)
    assert [media.read_frame_number(frame.image) for frame in frames] == \
        list(range(len(media.VFR_PTS_MS)))


def test_times_count_from_the_stream_start(tmp_path):
    path = media.write_vfr_clip(tmp_path / "late_start.mkv", (500, 533, 600, 1000))
    frames, _ = decode_all(path)
    np.testing.assert_allclose(times_of(frames), [0.0, 0.033, 0.1, 0.5], atol=1e-9)


def test_missing_pts_are_extrapolated_from_the_rate(no_pts_clip):
    frames, stats = decode_all(no_pts_clip)
    assert len(frames) == 8 and stats.errors == 0
    np.testing.assert_allclose(times_of(frames), np.arange(8) / 25.0, atol=1e-9)
    assert any("no PTS" in message for message in stats.error_messages)
    assert stats.missing_pts == 8


def test_rotated_clip_fixture_is_upright(rotated_clip):
    info = probe(rotated_clip)
    assert (info.width, info.height, info.rotation_deg) == (120, 160, 90)
    frames, stats = decode_all(rotated_clip)
    assert stats.errors == 0
    image = frames[0].image
    assert image.shape == (160, 120, 3) and image.flags["C_CONTIGUOUS"]
    m = media.MARKER_PX - 4
    corners = {"top_left": image[:m, :m], "top_right": image[:m, -m:],
               "bottom_left": image[-m:, :m], "bottom_right": image[-m:, -m:]}
    red = {name: bool(block[..., 0].mean() > 180 and block[..., 1].mean() < 80)
           for name, block in corners.items()}
    # stored top-left, turned 90 degrees clockwise, is the top-right corner
    assert red == {"top_left": False, "top_right": True,
                   "bottom_left": False, "bottom_right": False}


def _displayed(stored: np.ndarray, rotation_cw: int, mirror: bool) -> np.ndarray:
    """What a player shows: rotate clockwise, then mirror left-right (PyAV's writer order)."""
    shown = np.rot90(stored, k=-(rotation_cw // 90))
    return shown[:, ::-1] if mirror else shown


@pytest.mark.parametrize("rotation_cw", [0, 90, 180, 270])
@pytest.mark.parametrize("mirror", [False, True])
def test_display_matrix_rotations_and_mirrors(tmp_path, rotation_cw, mirror):
    path = media.write_rotated_clip(tmp_path / "r.mp4", rotation_cw=rotation_cw,
                                    mirror=mirror, frames=2)
    frames, _ = decode_all(path)
    expected = _displayed(media.pattern_frame(0, marker=True), rotation_cw, mirror)
    assert frames[0].image.shape == expected.shape
    assert mean_abs_diff(frames[0].image, expected) < 6.0
    info = probe(path)
    assert (info.height, info.width) == expected.shape[:2]


@pytest.mark.parametrize("orientation, rotation_cw",
                         [(1, 0), (2, 0), (3, 180), (4, 180), (5, 270), (6, 90), (7, 90),
                          (8, 270)])
def test_jpeg_exif_orientation(tmp_path, orientation, rotation_cw):
    path = tmp_path / f"exif{orientation}.jpg"
    picture = Image.fromarray(media.pattern_frame(3, marker=True))
    exif = picture.getexif()
    exif[0x0112] = orientation
    picture.save(path, exif=exif, quality=95)
    frames, _ = decode_all(path)
    with Image.open(path) as reference:
        expected = np.asarray(ImageOps.exif_transpose(reference).convert("RGB"))
    assert frames[0].image.shape == expected.shape
    assert mean_abs_diff(frames[0].image, expected) < 3.0
    assert probe(path).rotation_deg == rotation_cw


def test_truncated_clip_yields_the_frames_before_the_cut(truncated_clip):
    frames, stats = decode_all(truncated_clip)
    assert 0 < len(frames) < 60
    assert stats.frames == len(frames)
    # exactly FFmpeg's own frames (no frame threading), in order, at the same times: the
    # frames before the cut, then the B-frames FFmpeg still decodes around the cut packet
    reference = media.reference_decode(truncated_clip)
    assert len(frames) == len(reference)
    numbers = [media.read_frame_number(frame.image) for frame in frames]
    assert numbers == [media.read_frame_number(image) for _, image in reference]
    assert numbers == sorted(set(numbers)) and numbers[:20] == list(range(20))
    np.testing.assert_allclose(times_of(frames), [t for t, _ in reference], atol=1e-9)
    assert stats.errors >= 1
    assert any("cut off" in message for message in stats.error_messages)
    assert probe(truncated_clip).frame_count == 60


@pytest.mark.parametrize("keep_fraction", [0.5, 0.95])
def test_cut_faststart_clip_keeps_the_frames_in_flight(tmp_path, keep_fraction):
    """A faststart MP4 cut inside a packet: FFmpeg's frame threads drop the frames still
    in flight (the B-frame reorder delay); the tail is re-decoded without them, so the
    count is FFmpeg's own (``ffprobe -count_frames``: 35 and 68 for these cuts)."""
    path = media.write_truncated_clip(tmp_path / "cut.mp4", frames=72, keep_fraction=keep_fraction)
    reference = media.reference_decode(path)
    assert len(reference) == {0.5: 35, 0.95: 68}[keep_fraction]
    frames, stats = decode_all(path)
    assert len(frames) == len(reference) == count_frames(path)
    assert [media.read_frame_number(f.image) for f in frames] == \
        [media.read_frame_number(image) for _, image in reference]
    np.testing.assert_allclose(times_of(frames), [t for t, _ in reference], atol=1e-9)
    assert [f.frame_index for f in frames] == list(range(1, len(frames) + 1))
    # the packet cut in the middle is the one error besides the cut itself
    assert stats.errors == 2 and any("cut off" in m for m in stats.error_messages)
    # frame threading alone loses the frames in flight (what the re-decoded tail restores)
    lossy = VideoSource(path, SourceSettings(redecode_tail=False)).count()
    assert lossy < len(reference)


def test_complete_files_are_decoded_once(cfr_clip, wolfgang_mp4, monkeypatch):
    """The tail is re-decoded only when frames are missing: never for a complete file."""
    opened: list[str] = []
    real_open = decode.av.open
    monkeypatch.setattr(decode.av, "open", lambda name, *a, **k: opened.append(name) or real_open(name, *a, **k))
    assert count_frames(cfr_clip) == 30 and count_frames(wolfgang_mp4) == 472
    assert opened == [str(cfr_clip), str(wolfgang_mp4)]


def _decode_in_subprocess(path: Path, timeout: float = 60) -> dict:
    """Probe and decode ``path`` in a fresh interpreter (a native crash must fail the
    test, not kill pytest); the child's summary as a dict."""
    code = (
        "import json, sys\n"
        "from affstream.io import iter_frames, probe\n"
        "from affstream.records import DecodeStats\n"
        "stats = DecodeStats()\n"
        "frames = list(iter_frames(sys.argv[1], stats=stats))\n"
        "info = probe(sys.argv[1])\n"
        "print(json.dumps({'frames': len(frames), 'shape': list(frames[0].image.shape),\n"
        "                  'times': [f.time_s for f in frames], 'rotation': info.rotation_deg,\n"
        "                  'codec': info.codec, 'errors': stats.errors}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"decoding {path.name} exited with {done.returncode}: {done.stderr[-800:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["png", "png_exif6", "jpg_exif6", "png_mov", "png_avi"])
def test_icc_profile_does_not_crash(tmp_path, kind):
    """PyAV 18.1 crashes (SIGSEGV) once the side data of a PNG frame holding an ICC
    profile has been listed; the orientation is read without listing it."""
    makers = {
        "png": lambda p: media.write_image(p.with_suffix(".png"), icc=True),
        "png_exif6": lambda p: media.write_image(p.with_suffix(".png"), icc=True, exif_orientation=6),
        "jpg_exif6": lambda p: media.write_image(p.with_suffix(".jpg"), icc=True, exif_orientation=6),
        "png_mov": lambda p: media.write_png_video(p.with_suffix(".mov"), frames=5),
        "png_avi": lambda p: media.write_png_video(p.with_suffix(".avi"), frames=5),
    }
    path = makers[kind](tmp_path / f"icc_{kind}")
    summary = _decode_in_subprocess(path)
    video = kind.endswith(("mov", "avi"))
    assert summary["frames"] == (5 if video else 1) and summary["errors"] == 0
    assert summary["codec"] == ("mjpeg" if kind.startswith("jpg") else "png")
    upright = (media.WIDTH, media.HEIGHT) if "exif6" in kind else (media.HEIGHT, media.WIDTH)
    assert tuple(summary["shape"]) == (*upright, 3)
    assert summary["rotation"] == (90 if "exif6" in kind else 0)
    np.testing.assert_allclose(summary["times"], np.arange(summary["frames"]) / 10.0, atol=1e-9)


def test_png_exif_mirror_is_applied(tmp_path):
    """A PNG's orientation (no side data listed) still mirrors: EXIF 2 = mirror only."""
    path = media.write_image(tmp_path / "mirror.png", icc=False, exif_orientation=2)
    frames, _ = decode_all(path)
    expected = media.pattern_frame(3, marker=True)[:, ::-1]
    assert mean_abs_diff(frames[0].image, expected) < 1.0


# ------------------------------------------------------------------- video streams


def test_best_video_stream_is_chosen_by_the_documented_rule(tmp_path):
    # Matroska without default flags: the largest (320x240, stream 1; 5 frames)
    plain = media.write_multi_stream_clip(tmp_path / "two.mkv", default=None)
    with av.open(str(plain)) as container:
        for stream in container.streams.video:
            assert not stream.disposition & av.stream.Disposition.default
    info = probe(plain)
    assert (info.width, info.height, info.stream_index, info.video_streams) == (320, 240, 1, 2)
    assert count_frames(plain) == 5
    # the default disposition wins over size
    marked = media.write_multi_stream_clip(tmp_path / "two_default.mkv", default=0)
    info = probe(marked)
    assert (info.width, info.stream_index, info.video_streams) == (160, 0, 2)
    assert count_frames(marked) == 6
    # ties (same size, no default): the lowest index
    same = media.write_multi_stream_clip(tmp_path / "same.mkv", sizes=((160, 120), (160, 120)))
    assert probe(same).stream_index == 0 and count_frames(same) == 6


def test_cover_art_is_never_the_best_stream(tmp_path):
    # a 640x480 cover beside a 160x120 video, neither marked default: size alone would
    # pick the cover
    path = media.write_multi_stream_clip(tmp_path / "cover.mkv", sizes=((160, 120),), default=-1,
                                         cover=(640, 480))
    with av.open(str(path)) as container:
        video, picture = container.streams.video
        assert not video.disposition & av.stream.Disposition.default
        assert picture.disposition & av.stream.Disposition.attached_pic
    info = probe(path)
    assert (info.stream_index, info.video_streams, info.codec, info.width) == (0, 2, "h264", 160)
    assert count_frames(path) == 6
    chosen = probe(path, video_stream=1)  # asked for explicitly: the picture
    assert (chosen.codec, chosen.width, chosen.height, chosen.stream_index) == ("png", 640, 480, 1)
    song = media.write_audio_with_cover(tmp_path / "song.m4a")
    with pytest.raises(SourceError, match=r"song\.m4a: no video stream \(holds only a cover picture\)"):
        probe(song)


def test_explicit_video_stream(tmp_path):
    path = media.write_multi_stream_clip(tmp_path / "two.mkv")
    for index, (width, frames) in enumerate(((160, 6), (320, 5))):
        stats = DecodeStats()
        decoded = list(iter_frames(path, stats=stats, video_stream=index))
        assert len(decoded) == frames == count_frames(path, video_stream=index)
        assert decoded[0].image.shape[1] == width
        assert [media.read_frame_number(f.image) for f in decoded] == list(range(frames))
        assert probe(path, video_stream=index).to_dict()["stream_index"] == index
    with pytest.raises(SourceError) as caught:
        probe(path, video_stream=2)
    message = str(caught.value)
    assert message.startswith(f"{path}: has no video stream 2") and "2 video stream(s)" in message
    assert "\n" not in message


def test_single_stream_info_records_the_stream(cfr_clip):
    info = probe(cfr_clip).to_dict()
    assert (info["stream_index"], info["video_streams"]) == (0, 1)


def test_error_messages_are_bounded():
    stats = DecodeStats()
    for k in range(decode.MAX_ERROR_MESSAGES + 15):
        decode._record_error(stats, f"problem {k}")
    assert stats.errors == decode.MAX_ERROR_MESSAGES + 15
    assert len(stats.error_messages) == decode.MAX_ERROR_MESSAGES


# ------------------------------------------------------------------------- bad inputs


def _bad_inputs(tmp_path: Path, request) -> dict[str, tuple[Path, str]]:
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {
        "missing": (tmp_path / "missing_clip.mp4", "no such file"),
        "directory": (folder, "directory"),
        "zero_byte": (request.getfixturevalue("zero_byte_file"), "empty"),
        "text": (request.getfixturevalue("text_file"), "not a readable video"),
        "audio_only": (request.getfixturevalue("audio_only_file"), "audio-only"),
    }


@pytest.mark.parametrize("kind", ["missing", "directory", "zero_byte", "text", "audio_only"])
def test_bad_inputs_raise_source_error_naming_the_file(tmp_path, request, kind):
    path, phrase = _bad_inputs(tmp_path, request)[kind]
    for attempt in (lambda: probe(path),
                    lambda: next(iter_frames(path, stats=DecodeStats()))):
        with pytest.raises(SourceError) as caught:
            attempt()
        message = str(caught.value)
        assert path.name in message and phrase in message
        assert "\n" not in message


def test_ansi_text_file_is_rejected(tmp_path):
    path = tmp_path / "banner.ans"  # FFmpeg's tty demuxer would render it as video
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"banner\.ans: is a text file"):
        probe(path)


def test_paths_may_be_str_or_pathlike(cfr_clip):
    assert probe(os.fspath(cfr_clip)) == probe(cfr_clip)
