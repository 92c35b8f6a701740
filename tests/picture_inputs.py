"""Inputs for the pictures tests: per-frame CSVs of real clips, and media with audio.

:func:`annotated` runs ``affstream annotate --pipeline smoke`` (random weights, real
decoding, detection and tracking) once per session and input; :func:`varied_csv` keeps a
CSV's frames, timestamps and boxes but replaces the affect values by smooth made-up
signals whose top expression, AUs and valence/arousal change over time, so drawings of
every element can be checked (random weights give near-constant values).
"""

from __future__ import annotations

import math
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from click.testing import CliRunner

from affstream.cli import main
from affstream.labels import AU_LABELS, EXPR_LABELS
from affstream.pictures.rows import iter_frame_rows
from affstream.records import FrameAnnotation
from affstream.writers.csv import CsvWriter

_CACHE: dict[str, Path] = {}


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def annotated(video: Path, root: Path) -> Path:
    """The CSV of ``video`` from a smoke annotate run into ``root/<stem>/`` (cached per
    session: the first call annotates, later calls return the same CSV)."""
    key = str(video)
    if key not in _CACHE:
        out = root / video.stem
        result = run_cli("annotate", video, "-o", out, "--pipeline", "smoke", "--device", "cpu")
        assert result.exit_code == 0, result.output
        _CACHE[key] = out / f"{video.stem}.csv"
    return _CACHE[key]


def copy_outputs(csv: Path, folder: Path) -> Path:
    """Copy a CSV and its JSON report into ``folder`` (created); the copied CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in (csv, csv.with_suffix(".json")):
        if path.exists():
            shutil.copy2(path, folder / path.name)
    return folder / csv.name


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def varied_row(row: FrameAnnotation, time_s: float) -> FrameAnnotation:
    """``row`` with made-up smooth affect values at ``time_s`` (seconds), per face id."""
    phase = 1.7 * row.track_id
    valence = 0.75 * math.sin(2 * math.pi * time_s / 6.0 + phase)
    arousal = 0.6 * math.cos(2 * math.pi * time_s / 4.0 + phase)
    centre = (time_s / 1.2 + row.track_id * 2) % len(EXPR_LABELS)  # the top class moves through all 8
    distance = np.minimum(
        np.abs(np.arange(len(EXPR_LABELS)) - centre), len(EXPR_LABELS) - np.abs(np.arange(len(EXPR_LABELS)) - centre)
    )
    expr = _softmax(-1.6 * distance).astype(np.float32)
    k = np.arange(len(AU_LABELS))
    au = (0.5 + 0.45 * np.sin(2 * math.pi * time_s / 3.0 + k * 0.9 + phase)).astype(np.float32)
    return FrameAnnotation(
        frame_index=row.frame_index,
        time_s=row.time_s,
        track_id=row.track_id,
        confidence=row.confidence,
        success=True,
        box_xyxy=row.box_xyxy,
        valence=valence,
        arousal=arousal,
        expression=int(np.argmax(expr)),
        expr_probs=expr,
        au_probs=au,
        au_present=au >= 0.5,
    )


def varied_csv(source: Path, out: Path) -> Path:
    """Write ``out``: ``source``'s frames, timestamps and boxes with :func:`varied_row`
    values (frames without a face stay as they are). Copies the JSON report beside it."""
    with CsvWriter(out) as writer:
        for frame in iter_frame_rows(source):
            if not frame.faces:
                writer.write(
                    FrameAnnotation(
                        frame_index=frame.frame_index, time_s=frame.time_s, track_id=-1, confidence=0.0, success=False
                    )
                )
            for row in frame.faces:
                writer.write(varied_row(row, frame.time_s))
    if source.with_suffix(".json").exists():
        shutil.copy2(source.with_suffix(".json"), out.with_suffix(".json"))
    return out


def write_clip_with_audio(path: Path, source: Path, *, audio_codec: str = "aac", seconds: float | None = None) -> Path:
    """``source``'s video frames (decoded and re-encoded with their PTS) plus a 440 Hz
    tone in ``audio_codec`` (aac, or pcm_s16le in .mov / .mkv) spanning the video."""
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        video_in = src.streams.video[0]
        video_out = dst.add_stream("libx264", rate=video_in.average_rate)
        video_out.width, video_out.height, video_out.pix_fmt = video_in.width, video_in.height, "yuv420p"
        video_out.time_base = video_in.time_base
        video_out.codec_context.time_base = video_in.time_base
        video_out.options = {"crf": "20", "preset": "veryfast"}
        rate = 48000
        audio_out = dst.add_stream(audio_codec, rate=rate)
        audio_out.layout = "mono"
        last = 0.0
        for frame in src.decode(video_in):
            frame.pict_type = av.video.frame.PictureType.NONE
            last = float(frame.pts * video_in.time_base)
            dst.mux(video_out.encode(frame))
        dst.mux(video_out.encode(None))
        total = int((seconds if seconds is not None else last + 0.2) * rate)
        chunk = 1024
        t = np.arange(total) / rate
        wave = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        fmt = "fltp" if audio_codec == "aac" else "s16"
        for start in range(0, total, chunk):
            block = wave[start : start + chunk]
            samples = block[None, :] if fmt == "fltp" else (block * 32767).astype(np.int16)[None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            dst.mux(audio_out.encode(frame))
        dst.mux(audio_out.encode(None))
    return path


def synthetic_csv(video: Path, out: Path, boxes) -> Path:
    """A CSV for ``video`` (its frames and timestamps as affstream decodes them) whose faces
    come from ``boxes(frame_index, width, height)`` -> [(track_id, (x1, y1, x2, y2)), ...]
    in upright pixels, with :func:`varied_row` values. No model runs: quick."""
    from affstream.io.sources import open_source

    with open_source(video) as source, CsvWriter(out) as writer:
        width, height = source.info.width, source.info.height
        for frame in source.frames():
            faces = boxes(frame.frame_index, width, height)
            if not faces:
                writer.write(
                    FrameAnnotation(
                        frame_index=frame.frame_index, time_s=frame.time_s, track_id=-1, confidence=0.0, success=False
                    )
                )
            for track, box in faces:
                row = FrameAnnotation(
                    frame_index=frame.frame_index,
                    time_s=frame.time_s,
                    track_id=track,
                    confidence=0.99,
                    success=True,
                    box_xyxy=np.asarray(box, dtype=np.float32),
                )
                writer.write(varied_row(row, frame.time_s))
    return out
