"""The offline schedule: one file at a time, batched for throughput; many files with a
failure policy.

One file (:class:`AnnotationRun`):

    source (opened once) -> prefetch thread (bounded queue, blocks when full)
      -> batches of ``schedule.detect_batch(device)`` frames: upload, detect, track, align
      -> crops pooled until ``embed.batch_size`` faces or ``schedule.embed_pool_frames``
         frames wait, then one backbone call -> FaceChunk
      -> predictor (per-frame head, or windows per track) -> rows in frame order

Decoded images are dropped as soon as their crops are taken, so memory does not grow
with video length. Without a head, :func:`iter_face_features` (per-frame features) and
:func:`iter_face_crops` (per-frame aligned crops as uint8 images, no backbone call)
share the same batching, detection, tracking and alignment.

Many files (:func:`annotate_inputs`): outputs are checked before any model loads,
missing inputs fail on their own, a failing input is reported and the others go on;
the result is one :class:`~affstream.records.InputResult` per input.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import PipelineConfig, ScheduleConfig
from ..errors import AffstreamError, SourceError, internal_error
from ..io.prefetch import prefetch
from ..io.sources import VideoSource, describe_unusable_input, open_source
from ..records import (
    INPUT_DONE,
    INPUT_FAILED,
    DecodeStats,
    FaceChunk,
    Frame,
    FrameAnnotation,
    FrameFaces,
    InputResult,
    RunCounts,
    RunReport,
    VideoInfo,
)
from ..runtime import StageTimes, release_free_memory
from . import Stages
from .faces import DetectSchedule, FaceSteps
from .outputs import check_outputs, output_paths
from .predict import make_predictor
from .run import RowCounter, build_report

log = logging.getLogger("affstream")

# ------------------------------------------------------------------------- face chunks


class _CropPool:
    """Aligned crops and their frames, waiting for a full backbone batch."""

    def __init__(self) -> None:
        self.frames: list[FrameFaces] = []
        self.crops: list[torch.Tensor] = []
        self.n_faces = 0

    def add(self, frames: list[FrameFaces], crops: torch.Tensor) -> None:
        self.frames.extend(frames)
        if crops.shape[0]:
            self.crops.append(crops)
        self.n_faces += int(crops.shape[0])

    def take(self) -> tuple[list[FrameFaces], list[torch.Tensor]]:
        frames, crops = self.frames, self.crops
        self.frames, self.crops, self.n_faces = [], [], 0
        return frames, crops


def _batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Batches of up to ``size`` consecutive frames of one image size (a stream whose
    resolution changes mid-way starts a new batch at the change)."""
    batch: list[Frame] = []
    for frame in frames:
        if batch and frame.image.shape != batch[0].image.shape:
            yield batch
            batch = []
        batch.append(frame)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _aligned_batches(steps: FaceSteps, frames: Iterable[Frame],
                     schedule: ScheduleConfig) -> Iterator[tuple[list[FrameFaces], torch.Tensor]]:
    """Per batch of the offline schedule: its frames' tracked faces and their aligned
    crops (the output of :meth:`FaceSteps.align`). A fresh tracker is used: track ids
    start at 0. The decoded images are dropped before each batch is handed on."""
    tracker = steps.new_tracker()
    detect_schedule = DetectSchedule(schedule.detect_every) if schedule.detect_every > 1 else None
    for batch in _batches(frames, schedule.detect_batch(steps.device.type)):
        pixels = steps.upload(batch)  # one upload serves detection and alignment
        tracked = steps.find_faces(batch, pixels, tracker, detect_schedule)
        crops = steps.align(pixels, tracked)
        del batch, pixels  # the decoded images are no longer needed
        release_free_memory()
        yield tracked, crops


def iter_face_chunks(steps: FaceSteps, frames: Iterable[Frame], schedule: ScheduleConfig) -> Iterator[FaceChunk]:
    """FaceChunks covering every frame of ``frames`` exactly once, in order, batched as
    the offline schedule says. A fresh tracker is used: track ids start at 0."""
    pool = _CropPool()
    batch_faces = max(1, steps.stages.config.embed.batch_size)
    for tracked, crops in _aligned_batches(steps, frames, schedule):
        pool.add(tracked, crops)
        # faceless stretches must not wait for a full backbone batch: rows flow and
        # memory stays bounded whatever the video holds
        if pool.n_faces >= batch_faces or len(pool.frames) >= schedule.embed_pool_frames:
            yield steps.embed(*pool.take())
    if pool.frames:
        yield steps.embed(*pool.take())


def _timed(frames: Iterable[Frame], times: StageTimes) -> Iterator[Frame]:
    """Charge the time spent producing each frame to the 'decode' stage."""
    iterator = iter(frames)
    while True:
        start = time.perf_counter()
        try:
            frame = next(iterator)
        except StopIteration:
            return
        times.add("decode", time.perf_counter() - start)
        yield frame


def _prefetched(source: VideoSource, config: PipelineConfig, times: StageTimes | None = None) -> Iterator[Frame]:
    frames: Iterable[Frame] = source.frames()
    if times is not None:
        frames = _timed(frames, times)
    return prefetch(frames, maxsize=config.schedule.queue_frames)


# ---------------------------------------------------------------------------- one file


class AnnotationRun:
    """One video being annotated. Iterate it (once) for its rows.

    The source is opened once, when the run is created, so an unreadable file fails
    here with a SourceError and ``info`` is known before the first row. ``stats``,
    ``times`` and ``counts`` fill in while iterating; :meth:`report` gives the JSON report.
    """

    def __init__(self, source: str | Path, stages: Stages, *, on_frame: Callable[[int], None] | None = None) -> None:
        self.path = Path(source)
        self.stages = stages
        self.stats = DecodeStats()
        self._source = open_source(self.path, threads=stages.config.decode.threads,
                                   video_stream=stages.config.decode.video_stream, stats=self.stats)
        self.info: VideoInfo = self._source.info
        self.times = StageTimes(stages.device)
        self._counter = RowCounter(on_frame)
        self.wall_s = 0.0
        self._started = False

    @property
    def counts(self) -> RunCounts:
        """Rows, frames and faces so far (live; :meth:`report` holds a snapshot)."""
        return self._counter.counts

    @property
    def on_frame(self) -> Callable[[int], None] | None:
        return self._counter.on_frame

    @on_frame.setter
    def on_frame(self, callback: Callable[[int], None] | None) -> None:
        self._counter.on_frame = callback

    def __iter__(self) -> Iterator[FrameAnnotation]:
        if self._started:
            raise RuntimeError("an AnnotationRun can be iterated only once")
        self._started = True
        start = time.perf_counter()
        try:
            yield from self._rows()
        finally:
            self.wall_s = time.perf_counter() - start
            self._source.close()
        if self._counter.counts.frames_written == 0:
            detail = f" ({self.stats.error_messages[0]})" if self.stats.error_messages else ""
            raise SourceError(f"{self.path}: no decodable video frames{detail}; check the file is a complete video")

    def close(self) -> None:
        """Release the source without iterating (idempotent)."""
        self._source.close()

    def _rows(self) -> Iterator[FrameAnnotation]:
        config = self.stages.config
        steps = FaceSteps(self.stages, self.times)
        predictor = make_predictor(self.stages.head, self.times, config.track.max_missed_frames,
                                   config.schedule.window_batch)
        frames = _prefetched(self._source, config, self.times)
        try:
            for chunk in iter_face_chunks(steps, frames, config.schedule):
                yield from self._counter.count(predictor.feed(chunk))
            yield from self._counter.count(predictor.close())
        finally:
            frames.close()  # stops and joins the decode thread before the source closes

    def report(self, outputs: dict[str, str] | None = None) -> RunReport:
        """The run's report (a snapshot): source, configuration, models, counts, timings."""
        counts = self._counter.snapshot(self.stats)
        return build_report(self.stages, self.info, counts, self.times, self.wall_s, outputs)


def write_run(run: AnnotationRun, out_dir: str | Path, *, overwrite: bool = False,
              fingerprints: dict | None = None) -> InputResult:
    """Iterate ``run`` into its CSV (streamed) and JSON report, both atomically.

    Outputs are checked first (:func:`~affstream.pipeline.outputs.check_outputs`; an
    existing file affstream did not write is replaced only with ``overwrite``). The
    report is published before the CSV; a previous CSV is removed just before, so a new
    report never stands beside an old CSV (a report without its CSV is an unfinished
    run). The run's source is closed whatever happens.
    """
    from ..writers import get_writer
    from ..writers.json import write_json_report

    csv_path, json_path = output_paths(run.path, out_dir)
    start = time.perf_counter()
    rows = iter(run)
    try:
        check_outputs([run.path], out_dir, overwrite=overwrite)
        # The CSV is committed last, after the report: an interruption anywhere before
        # leaves neither file (or only a previous run's) under the final names.
        with get_writer("csv", csv_path) as writer:
            for row in rows:
                writer.write(row)
            report = run.report({"csv": csv_path.name, "json": json_path.name})
            if fingerprints is not None:
                report = dataclasses.replace(report, fingerprints=fingerprints)
            csv_path.unlink(missing_ok=True)  # checked above: affstream's own (or overwrite)
            write_json_report(json_path, report)
    finally:
        rows.close()  # stops the decode thread (if a failure left the rows unfinished) ...
        run.close()  # ... before the source is released
    outputs = {"csv": str(csv_path), "json": str(json_path)}
    return InputResult(str(run.path), INPUT_DONE, outputs=outputs, report=report,
                       seconds=time.perf_counter() - start)


# -------------------------------------------------------------------------- many files


class InputObserver:
    """Hooks a caller (the CLI's progress display) gets from :func:`annotate_inputs`.
    Every method does nothing by default; they are called on the caller's thread."""

    def loaded(self, meaningful: bool) -> None:
        """The models are loaded (once, before the first readable input); ``meaningful``
        is False when any of them has random weights."""

    def started(self, path: Path, info: VideoInfo) -> None:
        """An input was opened; ``info.frame_count`` is its declared length (or None)."""

    def frame(self, path: Path, done: int) -> None:
        """``done`` frames of the current input have their rows."""

    def finished(self, result: InputResult) -> None:
        """An input is done or failed (also called for inputs refused before loading)."""


def preflight(inputs: Sequence[str | Path]) -> list[InputResult | None]:
    """Cheap checks before any model is loaded, from the file system alone: a missing
    input, a folder, a FIFO or device, a broken link or an empty file fails on its own
    (:func:`~affstream.io.sources.describe_unusable_input`). Returns, per input, a
    failed InputResult or None (looks readable)."""
    checked: list[InputResult | None] = []
    for item in inputs:
        problem = describe_unusable_input(item)
        checked.append(None if problem is None else InputResult(str(item), INPUT_FAILED, error=problem))
    return checked


def annotate_one(path: str | Path, out_dir: str | Path, stages: Stages,
                 observer: InputObserver | None = None, *, overwrite: bool = False,
                 fingerprints: dict | None = None) -> InputResult:
    """Annotate one input into ``out_dir``; a user-facing failure (AffstreamError)
    becomes a failed result with its one-line message, and so does any other exception
    (an internal error: its type and message, how to report it; the traceback is logged
    at debug level). KeyboardInterrupt propagates (nothing partial is left under a final
    name)."""
    observer = observer or InputObserver()
    path = Path(path)
    start = time.perf_counter()
    try:
        run = AnnotationRun(path, stages, on_frame=lambda done: observer.frame(path, done))
        observer.started(path, run.info)
        result = write_run(run, out_dir, overwrite=overwrite, fingerprints=fingerprints)
    except AffstreamError as exc:
        result = InputResult(str(path), INPUT_FAILED, error=str(exc), seconds=time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a defect fails this input with one line; the others go on
        log.debug("%s: internal error\n%s", path, "".join(traceback.format_exception(exc)))
        result = InputResult(str(path), INPUT_FAILED, error=internal_error(str(path), exc),
                             seconds=time.perf_counter() - start)
    observer.finished(result)
    return result


def annotate_inputs(inputs: Sequence[str | Path], out_dir: str | Path, *, config: PipelineConfig | None = None,
                    stages: Stages | None = None, observer: InputObserver | None = None,
                    isolate: bool | None = None, overwrite: bool = False) -> list[InputResult]:
    """Annotate every input into ``out_dir`` (``<stem>.csv`` + ``<stem>.json`` each).

    The failure policy: output names are checked first (ConfigError: two inputs with
    one stem, an output folder that cannot be made); missing inputs fail on their own
    before any model loads; models are loaded once (from ``config``, unless ``stages``
    are given; a model that cannot be loaded raises); then each input runs, and one
    that fails is reported and the others go on. Returns one result per input, in
    input order. Ctrl-C (KeyboardInterrupt, SIGTERM/SIGHUP as ``Interrupted``) propagates.

    isolate: run the inputs in a worker process (:mod:`affstream.pipeline.workers`), so
    that a native crash fails only the input it happened on. Default: when ``config``
    is given and more than one input is readable. Loaded ``stages`` run in-process.
    overwrite: replace existing files under the output names that affstream did not
    write (never an input itself).
    """
    if (config is None) == (stages is None):
        raise ValueError("annotate_inputs(): give exactly one of config= or stages=")
    observer = observer or InputObserver()
    inputs = list(inputs)
    check_outputs(inputs, out_dir, overwrite=overwrite)
    results = preflight(inputs)
    for result in results:
        if result is not None:
            observer.finished(result)
    readable = [item for item, result in zip(inputs, results, strict=True) if result is None]
    if not readable:
        return [r for r in results if r is not None]
    if isolate is None:
        isolate = stages is None and len(readable) > 1
    if isolate and stages is None:
        from .workers import run_isolated

        done = iter(run_isolated(readable, out_dir, config, observer, overwrite=overwrite))
        return [r if r is not None else next(done) for r in results]
    if stages is None:
        from . import load_stages  # looked up at call time (tests may replace it)

        stages = load_stages(config)
    observer.loaded(stages.meaningful)
    return [r if r is not None else annotate_one(item, out_dir, stages, observer, overwrite=overwrite)
            for item, r in zip(inputs, results, strict=True)]


# ---------------------------------------------------------------------- features only


def iter_face_features(video: str | Path, stages: Stages, *,
                       stats: DecodeStats | None = None) -> Iterator[tuple[FrameFaces, np.ndarray]]:
    """Per decoded frame (in order): its tracked faces and their (n_faces, D) float32
    features. ``stages`` may have been loaded without a head."""
    config = stages.config
    source = open_source(video, threads=config.decode.threads,
                         video_stream=config.decode.video_stream, stats=stats)
    frames = _prefetched(source, config)
    try:
        for chunk in iter_face_chunks(FaceSteps(stages), frames, config.schedule):
            yield from zip(chunk.frames, chunk.per_frame_features(), strict=True)
    finally:
        frames.close()  # stops and joins the decode thread first
        source.close()


def _to_uint8(crops: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(N, 3, S, S) crops normalised with ``mean``/``std`` -> (N, S, S, 3) uint8 RGB on the CPU."""
    shape = (1, 3, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=crops.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=crops.device).view(shape)
    pixels = (crops.float() * std_t + mean_t).mul_(255.0).round_().clamp_(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def iter_face_crops(video: str | Path, stages: Stages, *,
                    stats: DecodeStats | None = None) -> Iterator[tuple[FrameFaces, np.ndarray]]:
    """Per decoded frame (in order): its tracked faces and their aligned crops,
    (n_faces, S, S, 3) uint8 RGB with S = ``stages.backbone.image_size`` (the crops the
    backbone would embed, de-normalised; faces in the order of ``FrameFaces.faces``).
    Detection, tracking and alignment are those of :func:`iter_face_features`; the
    backbone is not run. ``stages`` may have been loaded without a head."""
    config = stages.config
    backbone = stages.backbone
    source = open_source(video, threads=config.decode.threads,
                         video_stream=config.decode.video_stream, stats=stats)
    frames = _prefetched(source, config)
    try:
        for tracked, crops in _aligned_batches(FaceSteps(stages), frames, config.schedule):
            images = _to_uint8(crops, backbone.mean, backbone.std)
            del crops
            start = 0
            for frame_faces in tracked:
                end = start + len(frame_faces.faces)
                yield frame_faces, images[start:end]
                start = end
    finally:
        frames.close()  # stops and joins the decode thread first
        source.close()
