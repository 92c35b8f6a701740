"""The Python API that the CLI uses: annotate one video, lazily or to files.

    import affstream
    run = affstream.annotate("clip.mp4", pipeline="smoke")
    print(run.info.frame_count)
    for row in run:                 # FrameAnnotation, one per face per frame, in order
        print(row.frame, row.time_s, row.face_id, row.valence)
    print(run.report()["counts"])

``annotate_to_files`` writes ``OUT/<stem>.csv`` and ``OUT/<stem>.json`` atomically.
Pass ``stages=load_stages(config)`` to reuse loaded models across many videos.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .version import __version__
from .config import PipelineConfig, load_pipeline
from .errors import ConfigError, SourceError
from .runtime import StageTimes
from .records import DecodeStats, Frame, FrameAnnotation, FrameFaces, VideoInfo

MEANINGLESS_WARNING = (
    "SMOKE/TEST RUN: random model weights; the affect outputs are meaningless. "
    "Use a pretrained backbone (e.g. the default pipeline) for real annotations."
)


def resolve_config(
    pipeline: str | Path | PipelineConfig = "default",
    *,
    backbone: str | None = None,
    head: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
) -> PipelineConfig:
    """A preset (name, TOML path or config) with the given options overriding it."""
    config = pipeline if isinstance(pipeline, PipelineConfig) else load_pipeline(pipeline)
    return config.with_overrides(
        device=device,
        embed={"backbone": backbone, "batch_size": batch_size},
        head={"head": head},
    )


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


class AnnotationRun:
    """One video being annotated. Iterate it (once) for its rows.

    ``info`` is read when the run is created, so an unreadable file fails here with a
    SourceError. ``stats``, ``times`` and the counters fill in while iterating.
    """

    def __init__(self, source: str | Path, stages, *, on_frame: Callable[[int], None] | None = None) -> None:
        from .io.decode import probe

        self.path = Path(source)
        self.stages = stages
        self.info: VideoInfo = probe(self.path)
        self.stats = DecodeStats()
        self.times = StageTimes(stages.device)
        self.on_frame = on_frame
        self.rows = 0
        self.frames_done = 0
        self.frames_with_faces = 0
        self.track_ids: set[int] = set()
        self.wall_s = 0.0
        self._started = False

    def __iter__(self) -> Iterator[FrameAnnotation]:
        if self._started:
            raise RuntimeError("an AnnotationRun can be iterated only once")
        self._started = True
        start = time.perf_counter()
        try:
            yield from self._rows()
        finally:
            self.wall_s = time.perf_counter() - start
        if self.frames_done == 0:
            detail = f" ({self.stats.error_messages[0]})" if self.stats.error_messages else ""
            raise SourceError(f"{self.path}: no decodable video frames{detail}; check the file is a complete video")

    def _rows(self) -> Iterator[FrameAnnotation]:
        from .faces import FaceExtractor
        from .io.decode import iter_frames
        from .io.prefetch import prefetch
        from .predict import make_predictor

        config = self.stages.config
        frames = prefetch(
            _timed(iter_frames(self.path, stats=self.stats, threads=config.decode.threads), self.times),
            maxsize=config.decode.queue_frames,
        )
        extractor = FaceExtractor(self.stages, self.times)
        predictor = make_predictor(self.stages.head, self.times, config.track.max_missed_frames)
        for chunk in extractor.iter_chunks(frames):
            yield from self._count(predictor.feed(chunk))
        yield from self._count(predictor.close())

    def _count(self, rows: Iterable[FrameAnnotation]) -> Iterator[FrameAnnotation]:
        last_frame = None
        for row in rows:
            self.rows += 1
            if row.success:
                self.track_ids.add(row.face_id)
            if row.frame != last_frame:
                last_frame = row.frame
                self.frames_done += 1
                self.frames_with_faces += int(row.success)
                if self.on_frame is not None:
                    self.on_frame(self.frames_done)
            yield row

    def report(self, outputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON report: source, configuration, models, counts, timings."""
        stages = self.stages
        card = stages.head.card
        meaningful = stages.meaningful
        wall = max(self.wall_s, 1e-9)
        return {
            "affstream_version": __version__,
            "meaningful": meaningful,
            "warning": None if meaningful else MEANINGLESS_WARNING,
            "source": self.info.to_dict(),
            "outputs": outputs or {},
            "config": stages.config.to_dict(),
            "device": str(stages.device),
            "backbone": stages.backbone.identity(),
            "head": {
                **stages.head_identity,
                "tasks": list(card.tasks),
                "window_length": card.window_length,
                "window_stride": card.window_stride,
                "causal": card.causal,
                "meaningful": card.meaningful,
                "au_thresholds": list(card.au_thresholds),
            },
            "counts": {
                "frames_decoded": self.stats.frames,
                "frames_written": self.frames_done,
                "rows": self.rows,
                "frames_with_faces": self.frames_with_faces,
                "tracks": len(self.track_ids),
                "decode_errors": self.stats.errors,
                "frames_without_pts": self.stats.missing_pts,
                "decode_error_messages": list(self.stats.error_messages),
            },
            "timings": {
                "wall_s": round(self.wall_s, 6),
                "frames_per_s": round(self.frames_done / wall, 3),
                "stages": self.times.to_dict(),
            },
        }


def _stages_for(config_options: dict[str, Any], stages):
    """``stages`` as given (checked), or new stages from the options."""
    if stages is None:
        from .pipeline import load_stages

        return load_stages(resolve_config(**config_options))
    given = [k for k, v in config_options.items() if v is not None and k != "pipeline"]
    if given:
        raise ConfigError(f"annotate(): give either stages= or model options ({', '.join(given)}), not both")
    if stages.head is None:
        raise ConfigError("annotate(): these stages were loaded without a head (with_head=False)")
    return stages


def annotate(
    source: str | Path,
    *,
    pipeline: str | Path | PipelineConfig = "default",
    backbone: str | None = None,
    head: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    stages=None,
    on_frame: Callable[[int], None] | None = None,
) -> AnnotationRun:
    """Annotate one video lazily: returns an :class:`AnnotationRun` to iterate.

    ``stages`` (from :func:`affstream.pipeline.load_stages`) lets many videos share
    loaded models; it cannot be combined with the model options.
    """
    options = dict(pipeline=pipeline, backbone=backbone, head=head, device=device, batch_size=batch_size)
    return AnnotationRun(source, _stages_for(options, stages), on_frame=on_frame)


@dataclass(frozen=True)
class AnnotationFiles:
    csv_path: Path
    json_path: Path
    report: dict[str, Any]


def output_paths(source: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """``OUT/<stem>.csv`` and ``OUT/<stem>.json`` for ``source``."""
    stem = Path(source).stem
    out = Path(out_dir)
    return out / f"{stem}.csv", out / f"{stem}.json"


def check_outputs(sources: list[str | Path], out_dir: str | Path) -> None:
    """Fail early (ConfigError) if ``out_dir`` cannot be created or two sources would
    write the same output files."""
    seen: dict[Path, str] = {}
    for source in sources:
        csv_path, _ = output_paths(source, out_dir)
        if csv_path in seen:
            raise ConfigError(
                f"{source} and {seen[csv_path]} would both write {csv_path.name}; "
                "annotate them into different output directories or rename one"
            )
        seen[csv_path] = str(source)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out_dir}: cannot create the output directory ({exc.strerror or exc})") from None


def annotate_to_files(source: str | Path, out_dir: str | Path, **options: Any) -> AnnotationFiles:
    """Annotate ``source`` into ``OUT/<stem>.csv`` and ``OUT/<stem>.json``.

    Both files appear under their final names only when complete. Options are those
    of :func:`annotate`.
    """
    return write_run(annotate(source, **options), out_dir)


def write_run(run: AnnotationRun, out_dir: str | Path) -> AnnotationFiles:
    """Iterate ``run`` into its CSV (streamed) and JSON report, both atomically."""
    from .writers.csv import CsvWriter
    from .writers.report import write_report

    csv_path, json_path = output_paths(run.path, out_dir)
    check_outputs([run.path], out_dir)
    # The CSV is committed last, after the report: an interruption anywhere before
    # leaves neither file (or only a previous run's) under the final names.
    with CsvWriter(csv_path) as writer:
        for row in run:
            writer.write(row)
        report = run.report({"csv": csv_path.name, "json": json_path.name})
        write_report(json_path, report)
    return AnnotationFiles(csv_path, json_path, report)


def iter_face_features(
    video: str | Path,
    *,
    pipeline: str | Path | PipelineConfig = "default",
    backbone=None,
    device: str | None = None,
    stages=None,
    stats: DecodeStats | None = None,
) -> Iterator[tuple[FrameFaces, np.ndarray]]:
    """Per decoded frame (in order): its tracked faces and their (n_faces, D) features.

    ``backbone`` may be a spec string or an already loaded Backbone (shared across
    videos). Used by ``affstream features --source videos``.
    """
    from .faces import FaceExtractor
    from .io.decode import iter_frames, probe
    from .io.prefetch import prefetch
    from .pipeline import load_stages

    if stages is None:
        spec = backbone if isinstance(backbone, str) else None
        config = resolve_config(pipeline, backbone=spec, device=device)
        loaded = None if isinstance(backbone, str) else backbone
        stages = load_stages(config, backbone=loaded, with_head=False)
    config = stages.config
    probe(video)
    stats = stats if stats is not None else DecodeStats()
    frames = prefetch(iter_frames(video, stats=stats, threads=config.decode.threads), maxsize=config.decode.queue_frames)
    for chunk in FaceExtractor(stages).iter_chunks(frames):
        for frame, feats in zip(chunk.frames, chunk.per_frame_features()):
            yield frame, feats
