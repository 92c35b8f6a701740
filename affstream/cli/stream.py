"""``affstream stream``: the CLI side of :class:`affstream.pipeline.live.StreamSession`
(options, the live dashboard, the log files, the live preview page, stopping, the
summary, the exit code)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import click

from . import _ui

DASHBOARD_HZ = 4


def log_stem(source: str) -> str:
    """A file stem for a source: ``camera0``, ``udp_127.0.0.1_5000``, ``talk`` (a file)."""
    if source.isdigit():
        return f"camera{source}"
    if source.startswith("/dev/"):
        return Path(source).name
    if "://" in source:
        scheme, rest = source.split("://", 1)
        rest = rest.split("?", 1)[0].split("@")[-1]
        return re.sub(r"[^A-Za-z0-9.]+", "_", f"{scheme}_{rest}").strip("_")[:80] or scheme
    return Path(source).stem or "stream"


def _dashboard(session):
    """The dashboard's renderable: rates, drops, latency; per face the expression, VA, AUs."""
    from rich.table import Table
    from rich.text import Text

    from ..labels import AU_LABELS, EXPR_LABELS

    stats = session.stats
    rate_in, rate_out = session.rates()
    latency = stats.latency()
    median = latency["median_ms"]
    p95 = latency["p95_ms"]
    head = Text.assemble(
        ("live ", "bold"), f"{session.spec.label}  ",
        f"in {rate_in:5.1f} fps  out {rate_out:5.1f} fps  ",
        f"received {session.feed_stats.received}  dropped {stats.dropped}  ",
        f"latency median {median:.0f} ms p95 {p95:.0f} ms" if median is not None else "latency -",
        f"  reconnects {session.feed_stats.reconnects}" if session.feed_stats.reconnects else "",
    )
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for column in ("face", "expression", "p", "valence", "arousal", "active AUs"):
        table.add_column(column)
    for track_id, row in sorted(stats.current.items())[-8:]:
        expression = "-" if row.expression is None else EXPR_LABELS[row.expression]
        prob = "-" if row.expr_probs is None or row.expression is None else f"{row.expr_probs[row.expression]:.2f}"
        aus = "-" if row.au_present is None else " ".join(a for a, on in zip(AU_LABELS, row.au_present, strict=True)
                                                        if on) or "none"
        table.add_row(str(track_id), expression, prob, "-" if row.valence is None else f"{row.valence:+.2f}",
                      "-" if row.arousal is None else f"{row.arousal:+.2f}", aus)
    if not stats.current:
        table.add_row("-", "no face yet", "", "", "", "")
    from rich.console import Group

    return Group(head, table)


def _set_threads(threads: int | None) -> None:
    """Torch's CPU threads for a live session: one core is left to the decoder thread.

    Measured on a 2-core machine with the decoder busy: with 2 torch threads a detector
    call took 470 ms and a tiny-backbone embedding 131 ms, with 1 thread 28 ms and
    1.4 ms (OpenMP threads wait on each other when a core is taken)."""
    import os

    import torch

    if threads is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        threads = max(1, cores - 1)
    torch.set_num_threads(threads)


def check_session_outputs(spec, outputs: dict[str, Path | None], overwrite: bool) -> None:
    """Before anything loads: the session's outputs (the logs and the report, keyed by how
    the user names them) are distinct files, none is the source itself (``--overwrite``
    included), and none exists unless ``--overwrite``. AffstreamError (one line) if not."""
    import os

    from ..errors import ConfigError, OutputError
    from ..files import same_file as same

    named = [(label, path) for label, path in outputs.items() if path is not None]
    for i, (label, path) in enumerate(named):
        for other_label, other in named[:i]:
            if same(path, other):
                why = " (the report takes the first log's name with .json)" if label == "the session report" else ""
                raise ConfigError(f"{path}: {other_label} and {label} would be the same file{why}; give each "
                                  "output its own name")
        if spec.kind == "file" and os.path.lexists(path) and same(path, Path(spec.target)):
            raise OutputError(f"{path}: is the source {spec.label} itself; choose another output name")
        if os.path.lexists(path) and not overwrite:
            raise OutputError(f"{path}: already exists; pass --overwrite or choose another output")


def _close_page(page, text: str) -> None:
    """Tell the preview page (if any) that the session ended, with ``text``, and stop serving it."""
    if page is not None:
        page.close({"text": text})


@click.command("stream")
@click.argument("source", required=False, default="0")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for STEM.csv, STEM.jsonl and STEM.json (STEM from the source: camera0, talk, ...).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The CSV log (instead of -o).")
@click.option("--jsonl", "jsonl_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The JSON Lines log (instead of -o).")
@click.option("--pipeline", default="default", show_default=True, help="Preset name (default, smoke) or a pipeline .toml file.")
@click.option("--backbone", default=None, help="CLIP backbone ARCH:TAG, ARCH:/path/to/weights or ARCH:random.")
@click.option("--head", default=None, help="'zeroshot', or a trained per-frame or causal temporal head checkpoint.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the preset's).")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after S seconds.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N frames received.")
@click.option("--realtime", is_flag=True, help="A file source is played at its own speed (a stand-in for a camera).")
@click.option("--detect-every", type=click.IntRange(min=1, max=1000), default=None,
              help="Full face detection every K-th analysed frame, tracks followed in between "
                   "(default: the preset's schedule.live_detect_every, 3).")
@click.option("--reconnect-s", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="A live source that stalls or disconnects is reopened for this long, then the session fails.")
@click.option("--allow-lag", is_flag=True, help="Run a non-causal temporal head; rows come once its window is complete.")
@click.option("--size", default=None, help="Camera frame size WIDTHxHEIGHT (e.g. 1280x720).")
@click.option("--fps", type=float, default=None, help="Camera frame rate.")
@click.option("--pixel-format", default=None, help="Camera pixel format as FFmpeg names it (e.g. mjpeg, yuyv422).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads (default: CPUs - 1, leaving one for decoding; see the README's Live section).")
@click.option("--overwrite", is_flag=True, help="Replace existing log files.")
@click.option("--quiet", is_flag=True, help="No live dashboard (rows are still written).")
@click.option("--preview", is_flag=True,
              help="Serve a live page on 127.0.0.1 (the video with the overlay, charts, rates); its URL is printed.")
@click.option("--preview-port", type=click.IntRange(min=1, max=65535), default=None,
              help="The preview page's port (implies --preview; default: a free port).")
def stream_command(source, out_dir, csv_path, jsonl_path, pipeline, backbone, head, device, duration_s, max_frames,
                   realtime, detect_every, reconnect_s, allow_lag, size, fps, pixel_format, threads, overwrite, quiet,
                   preview, preview_port) -> None:
    """Annotate a live SOURCE (a webcam index such as 0, a device path, an rtsp:// / udp:// /
    tcp:// / http(s):// URL, or a file) causally, logging every frame received."""
    from ..api import resolve_config
    from ..errors import AffstreamError
    from ..files import atomic_write_text
    from ..io.live import parse_source
    from ..pipeline import check_config, load_stages
    from ..pipeline.live import StreamSession
    from ..pipeline.run import MEANINGLESS_WARNING
    from ..writers.json import to_jsonable
    from ..writers.live import LiveCsvWriter, LiveJsonlWriter

    console = _ui.stderr_console()
    if out_dir is None and csv_path is None and jsonl_path is None:
        _ui.fail("give -o OUTDIR, or --csv FILE and/or --jsonl FILE, for the session log")
    if out_dir is not None and (csv_path or jsonl_path):
        _ui.fail("give either -o OUTDIR or --csv/--jsonl, not both")
    if out_dir is not None:
        stem = log_stem(source)
        csv_path, jsonl_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.jsonl"
    report_path = (csv_path or jsonl_path).with_suffix(".json")
    page = None
    try:
        spec = parse_source(source, realtime=realtime, size=size, fps=fps, pixel_format=pixel_format)
        config = resolve_config(pipeline, backbone=backbone, head=head, device=device)
        check_config(config)
        check_session_outputs(spec, {"--csv": csv_path, "--jsonl": jsonl_path, "the session report": report_path},
                              overwrite)
        if preview or preview_port is not None:  # listen before the models load: a taken port fails at once
            from ..pictures.preview import LivePreview

            try:
                page = LivePreview.start(preview_port or 0, source=spec.label)
            except AffstreamError as exc:
                _ui.fail(str(exc), _ui.EXIT_USAGE)
        _set_threads(threads)
        stages = load_stages(config)
        if not stages.meaningful:
            _ui.warning(console, MEANINGLESS_WARNING)
        session = StreamSession(spec, stages, reconnect_s=reconnect_s, duration_s=duration_s, max_frames=max_frames,
                                detect_every=detect_every, allow_lag=allow_lag)
        if out_dir is not None:  # only once the source opened: a failed start leaves no empty folder
            out_dir.mkdir(parents=True, exist_ok=True)
    except AffstreamError as exc:
        _close_page(page, "the session did not start")
        _ui.fail(str(exc), _ui.code_for(exc))
    except OSError as exc:
        _close_page(page, "the session did not start")
        _ui.fail(f"{out_dir or csv_path}: cannot create the output ({exc.strerror or exc})", _ui.EXIT_INPUT_FAILED)

    writers = []
    try:
        if csv_path is not None:
            writers.append(LiveCsvWriter(csv_path, mode="live", overwrite=overwrite))
        if jsonl_path is not None:
            writers.append(LiveJsonlWriter(jsonl_path, mode="live", overwrite=overwrite))
    except AffstreamError as exc:
        for writer in writers:
            writer.abort()
        _close_page(page, "the session did not start")
        _ui.fail(str(exc), _ui.EXIT_INPUT_FAILED)

    stopped = []

    def request_stop(signum, _frame) -> None:
        if stopped:  # a second signal: stop at once (rows written so far stay)
            raise KeyboardInterrupt
        stopped.append(signal.Signals(signum).name)
        session.stop()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    if page is not None:
        page.set_warning(None if stages.meaningful else MEANINGLESS_WARNING)
        page.attach(session)
        _ui.info(console, f"preview: {page.url}")
    live = None
    if not quiet and console.is_terminal:
        from rich.live import Live

        live = Live(console=console, refresh_per_second=DASHBOARD_HZ, get_renderable=lambda: _dashboard(session),
                    transient=True)
        live.start()
    failure = None
    try:
        for row in session:
            for writer in writers:
                writer.write(row)
    except AffstreamError as exc:
        failure = str(exc)
    except KeyboardInterrupt:
        failure = "stopped at once by a second signal; the rows written so far are kept"
    finally:
        if live is not None:
            live.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for writer in writers:
            try:
                writer.close()
            except AffstreamError as exc:
                failure = failure or str(exc)
    outputs = {kind: path.name for kind, path in (("csv", csv_path), ("jsonl", jsonl_path)) if path is not None}
    report = session.report(outputs)
    report["stopped_by"] = stopped[0] if stopped else None
    import json

    atomic_write_text(report_path, json.dumps(to_jsonable(report), indent=2) + "\n")
    counts, latency = report["counts"], report["latency"]
    median = "-" if latency["median_ms"] is None else f"{latency['median_ms']:.0f}"
    p95 = "-" if latency["p95_ms"] is None else f"{latency['p95_ms']:.0f}"
    summary = (f"{counts['frames_received']} frames received, {counts['frames_analysed']} analysed, "
               f"{counts['frames_dropped']} dropped; latency median {median} ms, p95 {p95} ms; "
               f"{report['frames_per_s']['out']:.1f} frames/s out")
    _ui.info(console, f"{spec.label}: {summary}; log: " + ", ".join(str(p) for p in (csv_path, jsonl_path) if p is not None)
                      + (f" (stopped by {stopped[0]})" if stopped else ""))
    error = failure or session.error
    _close_page(page, summary + (f" (stopped by {stopped[0]})" if stopped else "") + (f"; error: {error}" if error else ""))
    if error:
        _ui.fail(error, _ui.EXIT_INPUT_FAILED)
