"""``affstream annotate``: the CLI side of the offline pipeline (options, progress,
messages, exit code); the work and the failure policy are in
:func:`affstream.pipeline.offline.annotate_inputs`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from . import _ui


class _Progress:
    """An :class:`~affstream.pipeline.offline.InputObserver` drawing one bar per video.

    A context manager: leaving it (also by Ctrl-C or an error) stops a bar still shown.
    """

    def __init__(self, console) -> None:
        self.console = console
        self.bar = None
        self.task = None
        self.start = 0.0

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def loaded(self, meaningful: bool) -> None:
        if not meaningful:
            from ..pipeline.run import MEANINGLESS_WARNING

            _ui.warning(self.console, MEANINGLESS_WARNING)

    def started(self, path: Path, info) -> None:
        self.bar = _ui.frame_progress(self.console)
        self.bar.start()
        self.task = self.bar.add_task("annotate", total=info.frame_count, fps=0.0, name=path.name)
        self.start = time.perf_counter()

    def frame(self, path: Path, done: int) -> None:
        if self.bar is not None and done % 8 == 0:
            fps = done / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(self.task, completed=done, fps=fps)

    def finished(self, result) -> None:
        if self.bar is not None:
            if result.ok:
                counts = result.report.counts
                self.bar.update(self.task, completed=counts.frames_written, total=counts.frames_written,
                                fps=result.report.frames_per_s)
            self.bar.stop()
            self.bar = None
        if not result.ok:
            _ui.error(self.console, result.error)
            return
        counts = result.report.counts
        if counts.decode_errors:
            _ui.warning(self.console, f"{result.path}: {counts.decode_errors} undecodable packet(s) skipped; "
                                      f"see {result.json_path.name}")
        _ui.info(self.console, f"{result.path} -> {result.csv_path} ({counts.rows} rows, "
                               f"{counts.frames_written} frames, {counts.tracks} face track(s))")


@click.command("annotate")
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for <stem>.csv and <stem>.json.")
@click.option("--pipeline", default="default", show_default=True, help="Preset name (default, smoke) or a pipeline .toml file.")
@click.option("--backbone", default=None,
              help="CLIP backbone ARCH:TAG, ARCH:/path/to/weights or ARCH:random (overrides the preset).")
@click.option("--head", default=None, help="'zeroshot' or the path of a trained head checkpoint (overrides the preset).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the preset's, normally auto).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Faces per backbone batch.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing files under the output names that affstream did not write (never an input).")
@click.option("--overlay", is_flag=True,
              help="Also render <stem>.overlay.mp4: the video with its annotations drawn on (see affstream render).")
def annotate_command(videos, out_dir, pipeline, backbone, head, device, batch_size, overwrite, overlay) -> None:
    """Annotate VIDEOS: one CSV row per face per frame, plus a JSON report per video."""
    from ..api import resolve_config
    from ..errors import AffstreamError
    from ..pipeline import check_config
    from ..pipeline.offline import annotate_inputs
    from ..pipeline.outputs import check_outputs

    console = _ui.stderr_console()
    try:
        check_outputs(list(videos), out_dir, overwrite=overwrite)
        if overlay:
            _check_overlays(videos, out_dir, overwrite)
        config = resolve_config(pipeline, backbone=backbone, head=head, device=device, batch_size=batch_size)
        check_config(config)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    try:
        with _Progress(console) as progress:
            results = annotate_inputs(list(videos), out_dir, config=config, observer=progress, overwrite=overwrite)
    except AffstreamError as exc:  # models not loadable: nothing ran
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "no partial output was left under a final name")
    failed = [r for r in results if not r.ok]
    if overlay:
        failed += _render_overlays(console, [r for r in results if r.ok], out_dir, overwrite)
    if len(results) > 1:
        _ui.summary_table(console, [(r.path, r.status, r.error or str(r.csv_path)) for r in results])
    if failed:
        _ui.info(console, f"{len(failed)} of {len(results)} input(s) failed")
        raise SystemExit(_ui.EXIT_INPUT_FAILED)


def _check_overlays(videos, out_dir: Path, overwrite: bool) -> None:
    """Fail before any work if an overlay video could not be written (see pictures.outputs)."""
    from ..pictures.outputs import check_output, overlay_path

    for video in videos:
        check_output(overlay_path(out_dir, video), inputs=list(videos), overwrite=overwrite)


def _render_overlays(console, results, out_dir: Path, overwrite: bool) -> list:
    """Render ``OUT/<stem>.overlay.mp4`` from each written CSV; the results whose
    overlay failed (one error line each)."""
    from ..errors import AffstreamError
    from ..pictures.frames import is_still_picture
    from ..pictures.outputs import overlay_path
    from .pictures import run_render

    failed = []
    for result in results:
        if is_still_picture(result.path):
            _ui.warning(console, f"{result.path}: a still picture has no overlay video (affstream report shows it annotated)")
            continue
        out = overlay_path(out_dir, result.path)
        try:
            rendered = run_render(console, Path(result.path), result.csv_path, out, crf=18, overwrite=overwrite)
        except AffstreamError as exc:
            _ui.error(console, f"{result.path}: overlay not written: {exc}")
            failed.append(result)
            continue
        except KeyboardInterrupt:
            _ui.interrupted(console, "the CSVs are written; no partial overlay was left under a final name")
        _ui.info(console, f"{result.path} -> {rendered.path} ({rendered.frames} frames)")
    return failed
