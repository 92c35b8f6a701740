"""Command line: parsing, progress and error reporting only; the work is in the library.

Exit codes: 0 success; 1 at least one input failed (the others were still processed);
2 invalid usage or configuration (nothing processed); 130 interrupted.
Progress and messages go to stderr; stdout stays clean for machine-readable output.
Nothing heavy (torch, open_clip, av) is imported until a command runs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    _stderr_console().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="affstream")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """affstream: frame-exact facial affect analysis of video (valence/arousal,
    8 expressions, 12 action units) from CLIP features."""
    from rich.logging import RichHandler

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=_stderr_console(), show_path=False, show_time=False)
    logger = logging.getLogger("affstream")
    logger.handlers[:] = [handler]
    logger.setLevel(level)


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TextColumn("{task.fields[fps]:>7.1f} frames/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=_stderr_console(),
        transient=False,
    )


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory for <stem>.csv and <stem>.json.")
@click.option("--pipeline", default="default", show_default=True, help="Preset name (default, smoke) or a pipeline .toml file.")
@click.option("--backbone", default=None, help="CLIP backbone ARCH:TAG, ARCH:/path/to/weights or ARCH:random (overrides the preset).")
@click.option("--head", default=None, help="'zeroshot' or the path of a trained head checkpoint (overrides the preset).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the preset's, normally auto).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Faces per backbone batch.")
def annotate(videos, out_dir, pipeline, backbone, head, device, batch_size) -> None:
    """Annotate VIDEOS: one CSV row per face per frame, plus a JSON report per video."""
    from .errors import AffstreamError

    console = _stderr_console()
    try:
        from .api import check_outputs, resolve_config

        check_outputs(list(videos), out_dir)
        config = resolve_config(pipeline, backbone=backbone, head=head, device=device, batch_size=batch_size)
    except AffstreamError as exc:
        _fail(str(exc))
    readable = [v for v in videos if _exists_or_report(v, console)]
    failures = len(videos) - len(readable)
    if not readable:
        sys.exit(EXIT_INPUT_FAILED)
    try:
        from .pipeline import load_stages

        stages = load_stages(config)
    except AffstreamError as exc:
        _fail(str(exc))
    if not stages.meaningful:
        from .api import MEANINGLESS_WARNING

        console.print(f"[yellow]warning:[/] {MEANINGLESS_WARNING}")
    try:
        for video in readable:
            failures += not _annotate_one(video, out_dir, stages, console)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: no partial output was left under a final name")
        sys.exit(EXIT_INTERRUPTED)
    if failures:
        console.print(f"[red]{failures} of {len(videos)} input(s) failed[/]")
        sys.exit(EXIT_INPUT_FAILED)


def _exists_or_report(video: Path, console) -> bool:
    """Cheap check before any model is loaded: a missing input fails on its own."""
    if video.is_file():
        return True
    problem = "is a directory; give video files" if video.is_dir() else "no such file"
    console.print(f"[bold red]error:[/] {video}: {problem}", soft_wrap=True)
    return False


def _annotate_one(video: Path, out_dir: Path, stages, console) -> bool:
    """Annotate one video with a progress bar; False (and a one-line message) on failure."""
    import time

    from .api import AnnotationRun, write_run
    from .errors import AffstreamError

    try:
        run = AnnotationRun(video, stages)
        with _progress() as progress:
            task = progress.add_task(video.name, total=run.info.frame_count, fps=0.0)
            start = time.perf_counter()

            def on_frame(done: int) -> None:
                if done % 8 == 0:
                    fps = done / max(time.perf_counter() - start, 1e-9)
                    progress.update(task, completed=done, fps=fps)

            run.on_frame = on_frame
            files = write_run(run, out_dir)
            counts = files.report["counts"]
            progress.update(task, completed=counts["frames_written"], total=counts["frames_written"],
                            fps=files.report["timings"]["frames_per_s"])
    except AffstreamError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return False
    if counts["decode_errors"]:
        console.print(f"[yellow]warning:[/] {video}: {counts['decode_errors']} undecodable packet(s) skipped; see {files.json_path.name}")
    console.print(f"{video} -> {files.csv_path} ({counts['rows']} rows, {counts['frames_written']} frames, {counts['tracks']} face track(s))")
    return True


from .cli_train import register as _register_training  # noqa: E402  (click commands only)

_register_training(main)

if __name__ == "__main__":  # pragma: no cover
    main()
