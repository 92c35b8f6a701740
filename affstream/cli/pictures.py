"""``affstream render``, ``affstream plot`` and ``affstream report``: the CLI side of
:mod:`affstream.pictures` (options, progress, messages, exit codes).

Exit codes: 0 done; 1 an input is unusable (a CSV that is not affstream's or not from
this video, an unreadable video) or, for a folder, some page failed; 2 a usage or output
problem (nothing written).
"""

from __future__ import annotations

from pathlib import Path

import click

from . import _ui


def _fail(exc) -> None:
    _ui.fail(str(exc), _ui.code_for(exc))


def _stream_index(csv_path: Path) -> int:
    """The video stream the CSV was annotated from (its run report), default -1."""
    from ..pictures.report import read_run_report

    source = (read_run_report(csv_path) or {}).get("source") or {}
    index = source.get("stream_index")
    return int(index) if isinstance(index, int) else -1


def run_render(console, video: Path, csv_path: Path, out: Path, *, crf: int, overwrite: bool):
    """Render with a progress bar, shown from the first frame on (so a refused input
    prints its error line alone); returns the RenderResult (AffstreamError propagates)."""
    from ..pictures.video import render_overlay

    shown: dict = {}

    def progress(done: int, total: int | None) -> None:
        if not shown:
            shown["bar"] = bar = _ui.frame_progress(console)
            shown["task"] = bar.add_task("render", total=total, fps=0.0, name=f"{Path(video).name} overlay")
            bar.start()
        if done % 8 == 0 or done == total:
            bar, task = shown["bar"], shown["task"]
            bar.update(task, completed=done, total=total, fps=done / max(bar.tasks[0].elapsed or 0.0, 1e-9))

    try:
        result = render_overlay(
            video, csv_path, out, crf=crf, video_stream=_stream_index(csv_path), overwrite=overwrite, progress=progress
        )
        if shown:
            shown["bar"].update(shown["task"], completed=result.frames, total=result.frames)
    finally:
        if shown:
            shown["bar"].stop()
    return result


@click.command("render")
@click.argument("video", type=click.Path(path_type=Path))
@click.option(
    "--annotations",
    "csv_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The per-frame CSV that affstream annotate wrote for VIDEO.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output video (.mp4, .mov or .mkv); default: <CSV folder>/<video stem>.overlay.mp4.",
)
@click.option(
    "--crf",
    type=click.IntRange(0, 51),
    default=18,
    show_default=True,
    help="H.264 quality: 18 looks like the input, 0 is lossless (large).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output that affstream did not write (never an input).")
def render_command(video, csv_path, out, crf, overwrite) -> None:
    """Re-encode VIDEO with its annotations drawn on: face boxes and ids, top expression,
    a valence/arousal circumplex with a trail, bars for the AUs present. Same frames,
    timestamps and audio as VIDEO."""
    from ..errors import AffstreamError
    from ..pictures.outputs import overlay_path

    console = _ui.stderr_console()
    out = out or overlay_path(csv_path.parent, video)
    try:
        result = run_render(console, video, csv_path, out, crf=crf, overwrite=overwrite)
    except AffstreamError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _ui.interrupted(console, "no partial video was left under the output name")
    audio = ", ".join(result.audio) or "no audio"
    _ui.info(
        console,
        f"{video} -> {result.path} ({result.frames} frames, {result.frames_with_faces} with faces, "
        f"{audio}, {result.seconds:.1f} s)",
    )


@click.command("plot")
@click.argument("csv_path", metavar="CSV", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output picture, .png or .svg; default: <CSV folder>/<stem>.timeline.png.",
)
@click.option(
    "--max-faces",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Faces drawn (those seen longest), one panel each.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output that affstream did not write (never an input).")
def plot_command(csv_path, out, max_faces, overwrite) -> None:
    """Draw the timeline of CSV: per face valence and arousal, the expression ribbon and
    the AU heatmap over time (needs the extra: pip install 'affstream[pictures]')."""
    from ..errors import AffstreamError
    from ..pictures.plots import plot_timeline
    from ..pictures.report import read_run_report

    console = _ui.stderr_console()
    out = out or csv_path.with_name(csv_path.stem + ".timeline.png")
    run = read_run_report(csv_path) or {}
    note = run.get("warning") if run.get("meaningful") is False else None
    try:
        path = plot_timeline(csv_path, out, max_faces=max_faces, note=note, overwrite=overwrite)
    except AffstreamError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _ui.interrupted(console, "no partial picture was left under the output name")
    _ui.info(console, f"{csv_path} -> {path}")


def _kind(path: Path) -> str:
    """One of "folder", "csv" (a file named .csv, or with affstream's header) or "video"."""
    from ..pictures.index import is_affstream_csv

    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".csv" or (path.is_file() and is_affstream_csv(path)):
        return "csv"  # the CSV reader says what is wrong with a foreign one
    return "video"


@click.command("report")
@click.argument("path", metavar="VIDEO_CSV_OR_OUTDIR", type=click.Path(path_type=Path))
@click.option(
    "--annotations",
    "csv_path",
    type=click.Path(path_type=Path),
    default=None,
    help="With a VIDEO: its per-frame CSV (its JSON report is read from beside it).",
)
@click.option(
    "--video",
    type=click.Path(path_type=Path),
    default=None,
    help="With a CSV: the annotated video, for key frames (default: found from the JSON report).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output page for one video; default: <CSV folder>/<stem>.report.html.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing pages that affstream did not write (never an input).")
def report_command(path, csv_path, video, out, overwrite) -> None:
    """Write a self-contained HTML report: for one video (give the VIDEO with --annotations,
    or its CSV), or for an output folder of annotate or corpus (a page per video and
    index.html)."""
    from ..errors import AffstreamError

    console = _ui.stderr_console()
    kind = _kind(path)
    try:
        if kind == "folder":
            if out is not None or csv_path is not None or video is not None:
                _ui.fail(f"{path}: is a folder; -o, --annotations and --video apply to one video only")
            _report_folder(console, path, overwrite)
            return
        if kind == "csv":
            csv_path, video = path, video
        elif csv_path is None:
            _ui.fail(
                f"{path}: is not an affstream CSV; for a video give its CSV with --annotations, "
                "or give the CSV or the output folder",
                _ui.EXIT_INPUT_FAILED,
            )
        else:
            video = path
        from ..pictures.report import write_report

        result = write_report(csv_path, out, video=video, overwrite=overwrite)
    except AffstreamError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _ui.interrupted(console, "no partial page was left under the output name")
    if result.note:
        _ui.warning(console, result.note)
    _ui.info(console, f"{csv_path} -> {result.path} ({result.key_frames} key frame(s))")


def _report_folder(console, folder: Path, overwrite: bool) -> None:
    from ..pictures.index import write_reports

    def on_entry(entry) -> None:
        if entry.result is not None:
            extra = f"; {entry.result.note}" if entry.result.note else ""
            _ui.info(console, f"{entry.name} -> {entry.result.path} ({entry.result.key_frames} key frame(s){extra})")
        elif entry.error:
            _ui.error(console, f"{entry.name}: {entry.error}")

    result = write_reports(folder, overwrite=overwrite, on_entry=on_entry)
    pages = sum(e.result is not None for e in result.entries)
    _ui.info(console, f"{pages} page(s), index: {result.path}")
    if result.failed:
        _ui.info(console, f"{len(result.failed)} page(s) failed")
        raise SystemExit(_ui.EXIT_INPUT_FAILED)
