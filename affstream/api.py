"""The Python API, a thin facade over :mod:`affstream.pipeline` (the CLI uses it too).

    import affstream
    run = affstream.annotate("clip.mp4", pipeline="smoke")
    print(run.info.frame_count)
    for row in run:                 # FrameAnnotation, one per face per frame, in order
        print(row.frame_index, row.time_s, row.track_id, row.valence)
    print(run.report().counts)

``annotate_to_files`` writes ``OUT/<stem>.csv`` and ``OUT/<stem>.json`` atomically;
``annotate_inputs`` does that for many inputs with the CLI's failure policy. Pass
``stages=load_stages(config)`` to reuse loaded models across many videos.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import PipelineConfig, load_pipeline
from .errors import ConfigError
from .records import DecodeStats, FrameFaces, InputResult

if TYPE_CHECKING:
    import numpy as np

    from .embed.backbone import Backbone
    from .pipeline import Stages
    from .pipeline.live import StreamSession
    from .pipeline.offline import AnnotationRun, InputObserver


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


def _stages_for(config_options: dict[str, Any], stages: Stages | None) -> Stages:
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
    stages: Stages | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> AnnotationRun:
    """Annotate one video lazily: returns an :class:`~affstream.pipeline.offline.AnnotationRun`.

    ``stages`` (from :func:`affstream.pipeline.load_stages`) lets many videos share
    loaded models; it cannot be combined with the model options.
    """
    from .pipeline.offline import AnnotationRun

    options = dict(pipeline=pipeline, backbone=backbone, head=head, device=device, batch_size=batch_size)
    return AnnotationRun(source, _stages_for(options, stages), on_frame=on_frame)


def stream(
    source: str | Path | int = "0",
    *,
    pipeline: str | Path | PipelineConfig = "default",
    backbone: str | None = None,
    head: str | None = None,
    device: str | None = None,
    stages: Stages | None = None,
    realtime: bool = False,
    size: str | None = None,
    fps: float | None = None,
    pixel_format: str | None = None,
    duration_s: float | None = None,
    max_frames: int | None = None,
    detect_every: int | None = None,
    reconnect_s: float = 5.0,
    allow_lag: bool = False,
) -> StreamSession:
    """A live session (:class:`~affstream.pipeline.live.StreamSession`): iterate it for
    :class:`~affstream.records.LiveRow` records (the same the CLI writes); its
    ``stats`` and ``rates()`` are live while it runs; ``stop()`` ends it; ``report()``
    gives the JSON report.

    source: a camera index or device path, a URL (rtsp://, udp://, tcp://, ...), or a
    file (paced at its own speed with ``realtime``). The source is opened here
    (SourceError with one line if it cannot be).
    """
    from .io.live import parse_source
    from .pipeline.live import StreamSession

    spec = parse_source(str(source), realtime=realtime, size=size, fps=fps, pixel_format=pixel_format)
    options = dict(pipeline=pipeline, backbone=backbone, head=head, device=device)
    return StreamSession(spec, _stages_for(options, stages), reconnect_s=reconnect_s, duration_s=duration_s,
                         max_frames=max_frames, detect_every=detect_every, allow_lag=allow_lag)


def annotate_to_files(source: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                      **options: Any) -> InputResult:
    """Annotate ``source`` into ``OUT/<stem>.csv`` and ``OUT/<stem>.json``.

    Both files appear under their final names only when complete; an existing file
    affstream did not write is replaced only with ``overwrite``. Options are those of
    :func:`annotate`. Raises the run's error (it is one input, not a batch).
    """
    from .pipeline.offline import write_run

    return write_run(annotate(source, **options), out_dir, overwrite=overwrite)


def annotate_inputs(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    pipeline: str | Path | PipelineConfig = "default",
    backbone: str | None = None,
    head: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    stages: Stages | None = None,
    observer: InputObserver | None = None,
    overwrite: bool = False,
) -> list[InputResult]:
    """Annotate many inputs into ``out_dir``: one failing input does not stop the others.

    Returns one :class:`~affstream.records.InputResult` per input, in order (see
    :func:`affstream.pipeline.offline.annotate_inputs` for the failure policy).
    """
    from .pipeline.offline import annotate_inputs as run_inputs

    if stages is not None:
        _stages_for(dict(pipeline=pipeline, backbone=backbone, head=head, device=device, batch_size=batch_size), stages)
        return run_inputs(inputs, out_dir, stages=stages, observer=observer, overwrite=overwrite)
    config = resolve_config(pipeline, backbone=backbone, head=head, device=device, batch_size=batch_size)
    return run_inputs(inputs, out_dir, config=config, observer=observer, overwrite=overwrite)


def iter_face_features(
    video: str | Path,
    *,
    pipeline: str | Path | PipelineConfig = "default",
    backbone: str | Backbone | None = None,
    device: str | None = None,
    stages: Stages | None = None,
    stats: DecodeStats | None = None,
) -> Iterator[tuple[FrameFaces, np.ndarray]]:
    """Per decoded frame (in order): its tracked faces and their (n_faces, D) features.

    ``backbone`` may be a spec string or an already loaded Backbone (shared across
    videos). Lazy: the models load at the first ``next``.
    """
    from .pipeline import load_stages
    from .pipeline.offline import iter_face_features as iterate

    if stages is None:
        spec = backbone if isinstance(backbone, str) else None
        config = resolve_config(pipeline, backbone=spec, device=device)
        loaded = None if isinstance(backbone, str) else backbone
        stages = load_stages(config, backbone=loaded, with_head=False)
    yield from iterate(video, stages, stats=stats)
