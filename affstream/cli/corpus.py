"""``affstream corpus``: the CLI side of :func:`affstream.corpus.run_corpus` (options,
a line per finished input, the summary, the exit code)."""

from __future__ import annotations

from pathlib import Path

import click

from . import _ui


@click.command("corpus")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: mirrors the input's relative paths, plus manifest.csv.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes on this machine; ray: Ray Data actors (pip install 'affstream[ray]').")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes or Ray actors (default: one per GPU, else max(1, CPUs // 4)).")
@click.option("--gpus", type=click.IntRange(min=0), default=None,
              help="Use at most N GPUs, one worker each (0: CPU only; default: all visible).")
@click.option("--ray-address", default=None,
              help="With --engine ray: join this Ray cluster ('auto' or HOST:PORT) instead of starting a local Ray.")
@click.option("--resume", is_flag=True, help="Skip the videos already done with the same input and configuration.")
@click.option("--glob", "pattern", default=None, help="Only files whose relative path (or name) matches PATTERN.")
@click.option("--pipeline", default="default", show_default=True, help="Preset name (default, smoke) or a pipeline .toml file.")
@click.option("--backbone", default=None, help="CLIP backbone ARCH:TAG, ARCH:/path/to/weights or ARCH:random.")
@click.option("--head", default=None, help="'zeroshot' or the path of a trained head checkpoint.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the preset's).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "both"]), default="csv", show_default=True,
              help="parquet/both: also one Parquet dataset at OUT/parquet/ (the CSVs stay: they are the resume state).")
def corpus_command(source, out_dir, engine, workers, gpus, ray_address, resume, pattern, pipeline, backbone, head,
                   device, fmt) -> None:
    """Annotate every video under SOURCE (a folder, or a text/CSV list of paths) into OUT;
    resumable with --resume after any crash."""
    from ..api import resolve_config
    from ..corpus import STATUS_DONE, STATUS_SKIPPED, run_corpus
    from ..errors import AffstreamError
    from ..pipeline import check_config

    console = _ui.stderr_console()
    try:
        config = resolve_config(pipeline, backbone=backbone, head=head, device=device)
        check_config(config)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    if ray_address and engine != "ray":
        _ui.fail("--ray-address needs --engine ray")
    progress = _ui.CorpusProgress(console)

    def on_event(kind, item, data) -> None:
        progress.event(kind, item, data)

    if fmt != "csv":
        from ..corpus.parquet import parquet_on_event

        try:
            on_event = parquet_on_event(out_dir, on_event)
        except AffstreamError as exc:
            _ui.fail(str(exc))
    try:
        with progress:
            result = run_corpus(source, out_dir, config, workers=workers, resume=resume, pattern=pattern,
                                on_event=on_event, engine=engine, gpus=gpus, ray_address=ray_address)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "finished videos are kept; run again with --resume to go on")
    rows = [(str(item.rel), item.status or "", item.error or "") for item in result.failed]
    done = sum(item.status == STATUS_DONE for item in result.items)
    skipped = sum(item.status == STATUS_SKIPPED for item in result.items)
    if rows:
        _ui.summary_table(console, rows)
    _ui.info(console, f"{len(result.items)} input(s): {done} done, {skipped} skipped, {len(result.failed)} failed, "
                      f"{len(result.items) - done - skipped - len(result.failed)} not a video; "
                      f"manifest: {result.manifest}")
    if result.failed:
        raise SystemExit(_ui.EXIT_INPUT_FAILED)
