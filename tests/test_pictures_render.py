"""``affstream render`` and ``annotate --overlay``: timing, pixels and audio of the overlay
video, checked against the input with an independent PyAV demux."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import media
import numpy as np
import pytest
from picture_inputs import annotated, run_cli, synthetic_csv, varied_csv, write_clip_with_audio
from two_faces import make_two_face_clip

from affstream.errors import DataError, OutputError
from affstream.pictures.overlay import TrailKeeper, draw_overlay
from affstream.pictures.rows import iter_frame_rows
from affstream.pictures.video import render_overlay


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("render")


@pytest.fixture(scope="module")
def real_csv(single_face_mp4, tmp_path_factory) -> Path:
    """The smoke-pipeline CSV of the real clip single_face.mp4 (72 frames, mp3 audio)."""
    return annotated(single_face_mp4, tmp_path_factory.getbasetemp() / "pictures-annotated")


def demux(path: Path, kind: str = "video") -> list[av.Packet]:
    """Every packet of the first stream of ``kind``, as stored (no decoding)."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [p for p in container.demux(stream) if p.size]


def timing(path: Path) -> tuple[tuple[int, int], list[Fraction]]:
    """(stored width, height) and every frame's PTS in seconds from the stream start,
    sorted (presentation order), from packets: no decoder involved."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        size = (stream.codec_context.width, stream.codec_context.height)
        origin = stream.start_time or 0
        times = sorted(Fraction(p.pts - origin) * stream.time_base for p in container.demux(stream) if p.size)
    return size, times


def planes(path: Path) -> list[np.ndarray]:
    """Every decoded frame as its stored yuv420p planes stacked (H * 3/2, W)."""
    with av.open(str(path)) as container:
        return [frame.reformat(format="yuv420p").to_ndarray() for frame in container.decode(video=0)]


@pytest.mark.slow
def test_same_frames_size_timestamps_and_audio_as_the_real_clip(single_face_mp4, real_csv, work):
    out = work / "single_face.overlay.mp4"
    result = render_overlay(single_face_mp4, real_csv, out)
    assert result.frames == 72 and result.frames_with_faces == 72
    assert timing(out) == timing(single_face_mp4)
    assert len(media.reference_decode(out)) == len(media.reference_decode(single_face_mp4)) == 72
    # the mp3 audio is copied packet for packet
    assert result.audio == ["copied mp3"]
    source, copied = demux(single_face_mp4, "audio"), demux(out, "audio")
    assert [bytes(p) for p in copied] == [bytes(p) for p in source]
    with av.open(str(out)) as container:
        assert str(container.metadata.get("comment", "")).startswith("affstream")
        assert container.streams.audio[0].time_base == Fraction(1, 44100)


def test_pixels_change_only_inside_the_drawn_regions(tmp_path):
    """Lossless coding (crf 0): outside the overlay's regions the output equals the input
    exactly, frames without a face are equal everywhere; inside the regions it differs."""
    clip = make_two_face_clip(tmp_path / "two.mp4", frames=16)
    no_face = set(range(6, 10))

    def boxes(index: int, width: int, height: int):
        if index in no_face:
            return []
        xa, xb = 40 + 2 * (index - 1), 450 - 2 * (index - 1)
        return [(0, (xa + 20, 120, xa + 130, 260)), (1, (xb + 20, 110, xb + 130, 250))]

    csv = synthetic_csv(clip, tmp_path / "two.csv", boxes)
    out = tmp_path / "two.overlay.mp4"
    render_overlay(clip, csv, out, crf=0)
    before, after = planes(clip), planes(out)
    assert len(before) == len(after) == 16
    keeper = TrailKeeper()
    with av.open(str(clip)) as container:
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for picture, frame, old, new in zip(pictures, iter_frame_rows(csv), before, after, strict=True):
        _, regions = draw_overlay(picture, keeper.update(frame.time_s, frame.faces))
        if frame.frame_index in no_face:
            assert not regions and np.array_equal(old, new), frame.frame_index
            continue
        mask = np.zeros(picture.shape[:2], dtype=bool)
        for x0, y0, x1, y1 in regions:
            mask[y0:y1, x0:x1] = True
        height = picture.shape[0]
        luma_old, luma_new = old[:height], new[:height]
        assert np.array_equal(luma_old[~mask], luma_new[~mask]), frame.frame_index
        chroma = mask[::2, ::2]  # yuv420p: U then V, each (H/2, W/2), packed as (H/4, W) rows
        for k in range(2):
            u_old = old[height:].reshape(2, height // 2, -1)[k]
            u_new = new[height:].reshape(2, height // 2, -1)[k]
            assert np.array_equal(u_old[~chroma], u_new[~chroma]), frame.frame_index
        assert (np.abs(luma_old.astype(int) - luma_new)[mask] > 40).mean() > 0.05  # something was drawn


def test_audio_kept_copied_or_re_encoded(tmp_path):
    """AAC is copied into the MP4; mu-law (which MP4 cannot hold) is re-encoded to AAC
    spanning the same time."""
    video = make_two_face_clip(tmp_path / "silent.mp4", frames=12)

    def boxes(index, width, height):
        return [(0, (60, 110, 170, 250))]

    for codec, container in (("aac", ".mp4"), ("pcm_mulaw", ".mov")):
        clip = write_clip_with_audio(tmp_path / f"tone_{codec}{container}", video, audio_codec=codec)
        csv = synthetic_csv(clip, tmp_path / f"tone_{codec}.csv", boxes)
        out = tmp_path / f"tone_{codec}.overlay.mp4"
        result = render_overlay(clip, csv, out)
        assert timing(out) == timing(clip)
        with av.open(str(out)) as rendered, av.open(str(clip)) as source:
            audio, original = rendered.streams.audio[0], source.streams.audio[0]
            assert audio.codec_context.name == "aac"
            seconds = sum(p.duration or 0 for p in rendered.demux(audio)) * audio.time_base
            wanted = sum(p.duration or 0 for p in source.demux(original)) * original.time_base
            assert abs(float(seconds - wanted)) < 0.05
        assert result.audio == (["copied aac"] if codec == "aac" else ["re-encoded pcm_mulaw to aac"])


def test_variable_frame_rate_and_rotation_are_kept(vfr_clip, rotated_clip, tmp_path):
    for clip in (vfr_clip, rotated_clip):
        csv = synthetic_csv(clip, tmp_path / f"{clip.stem}.csv", lambda i, w, h: [(0, (10, 10, w - 10, h - 30))])
        out = tmp_path / f"{clip.stem}.overlay.mp4"
        render_overlay(clip, csv, out)
        assert timing(out) == timing(clip)
        from affstream.io.sources import probe

        assert (probe(out).rotation_deg, probe(out).width, probe(out).height) == (
            probe(clip).rotation_deg,
            probe(clip).width,
            probe(clip).height,
        )


def test_csv_of_another_video_is_refused_and_nothing_is_written(vfr_clip, cfr_clip, tmp_path):
    csv = synthetic_csv(cfr_clip, tmp_path / "cfr.csv", lambda i, w, h: [])
    out = tmp_path / "wrong.mp4"
    with pytest.raises(DataError, match="was it written from this video"):
        render_overlay(vfr_clip, csv, out)
    assert not out.exists() and not list(tmp_path.glob(".wrong.mp4.partial-*"))


def test_foreign_csv_one_line_error_and_non_zero_exit(single_face_mp4, tmp_path):
    foreign = tmp_path / "openface.csv"
    foreign.write_text("frame, face_id, timestamp, confidence, success, AU01_r\n1, 0, 0.0, 0.98, 1, 0.5\n")
    result = run_cli("render", single_face_mp4, "--annotations", foreign, "-o", tmp_path / "x.mp4")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "not an affstream per-frame CSV" in lines[0] and "foreign columns" in lines[0]
    assert not (tmp_path / "x.mp4").exists()


def test_never_overwrites_an_input_or_a_foreign_file(single_face_mp4, real_csv, tmp_path):
    with pytest.raises(OutputError, match="is the input"):
        render_overlay(single_face_mp4, real_csv, real_csv, overwrite=True)
    foreign = tmp_path / "mine.mp4"
    foreign.write_bytes(b"someone's file")
    with pytest.raises(OutputError, match="not written by affstream"):
        render_overlay(single_face_mp4, real_csv, foreign)
    assert foreign.read_bytes() == b"someone's file"


def test_cli_render_again_over_its_own_output(single_face_mp4, real_csv, tmp_path):
    out = tmp_path / "again.mp4"
    for _ in range(2):  # the second run replaces its own earlier output without --overwrite
        result = run_cli("render", single_face_mp4, "--annotations", real_csv, "-o", out, "--crf", "30")
        assert result.exit_code == 0, result.output
    assert "72 frames, 72 with faces, copied mp3" in result.output


@pytest.mark.parametrize("name", ["out.json", "out", "out.csv", "out.MP4.txt"])
def test_render_to_a_name_that_is_not_a_video_is_one_line(single_face_mp4, real_csv, tmp_path, name):
    out = tmp_path / name
    result = run_cli("render", single_face_mp4, "--annotations", real_csv, "-o", out)
    assert result.exit_code == 2, result.output
    assert "not a video file name" in result.output and ".mp4" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_annotate_overlay_writes_the_overlay_video(tmp_path):
    clip = make_two_face_clip(tmp_path / "pair.mp4", frames=8)
    out = tmp_path / "out"
    result = run_cli("annotate", clip, "-o", out, "--pipeline", "smoke", "--device", "cpu", "--overlay")
    assert result.exit_code == 0, result.output
    overlay = out / "pair.overlay.mp4"
    assert (out / "pair.csv").is_file() and overlay.is_file()
    assert timing(overlay) == timing(clip)
    varied = varied_csv(out / "pair.csv", tmp_path / "pair_varied.csv")  # the CSV reader takes what annotate wrote
    assert sum(len(f.faces) for f in iter_frame_rows(varied)) == 16


@pytest.mark.slow
def test_memory_stays_flat_in_the_video_length(tmp_path):
    """Ten times the frames, about the same peak of traced memory (numpy reports its
    buffers to tracemalloc): nothing per frame is kept (180 more 160x120 RGB pictures
    alone would add 10 MB)."""
    import tracemalloc

    peaks = []
    for frames in (20, 200):
        clip = media.write_cfr_clip(tmp_path / f"long{frames}.mp4", frames=frames)  # 160x120
        csv = synthetic_csv(clip, tmp_path / f"long{frames}.csv", lambda i, w, h: [(0, (20, 15, 100, 100))])
        tracemalloc.start()
        render_overlay(clip, csv, tmp_path / f"long{frames}.overlay.mp4")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0] + (1 << 20), peaks


def test_without_libx264_mpeg4_keeps_the_timing(cfr_clip, tmp_path, monkeypatch):
    csv = synthetic_csv(cfr_clip, tmp_path / "cfr.csv", lambda i, w, h: [(0, (20, 15, 100, 90))] if i % 2 else [])
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    out = tmp_path / "mpeg4.mp4"
    render_overlay(cfr_clip, csv, out)
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert timing(out) == timing(cfr_clip)
