"""What every command shares on the terminal: the console, exit codes, failing with one
line, progress bars and the end-of-run summary. Imports nothing else of the CLI.

Exit codes: 0 success; 1 at least one input failed (the others were still processed);
2 invalid usage or configuration (nothing processed); 128 + signal when stopped: 130
for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP. Messages go to
stderr; stdout stays clean for machine-readable output. Text that comes from the user
(file names, error messages quoting them) is printed without markup, so ``[brackets]``
in a name are shown as they are.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from ..records import INPUT_DONE

EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def stderr_console():
    """The rich console every command writes to (stderr, no syntax highlighting)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _styled(label: str, style: str, message: str):
    from rich.text import Text

    return Text.assemble((label, style), " ", message)


def error(console, message: str) -> None:
    """Print ``error: MESSAGE`` (the message verbatim)."""
    console.print(_styled("error:", "bold red", message), soft_wrap=True)


def warning(console, message: str) -> None:
    """Print ``warning: MESSAGE`` (the message verbatim)."""
    console.print(_styled("warning:", "yellow", message), soft_wrap=True)


def info(console, message: str) -> None:
    """Print a plain line (verbatim)."""
    console.print(message, soft_wrap=True, markup=False, highlight=False)


def code_for(exc: BaseException) -> int:
    """The exit code of a failure, the same in every command: an input that cannot be read
    or is malformed (SourceError, DataError) is 1; anything about the usage, the
    configuration, the models or where outputs go (ConfigError, WeightsError,
    OutputError) is 2."""
    from ..errors import DataError, SourceError

    return EXIT_INPUT_FAILED if isinstance(exc, (DataError, SourceError)) else EXIT_USAGE


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one error line and exit with ``code``."""
    error(stderr_console(), message)
    sys.exit(code)


def interrupted(console, hint: str) -> NoReturn:
    """Stopped (Ctrl-C, SIGTERM, SIGHUP): say what was kept and exit 128 + the signal.

    Call it while handling the KeyboardInterrupt: the signal is read from it.
    """
    from ..runtime import exit_code_for

    stop = sys.exc_info()[1]
    reason = str(stop) if stop is not None and getattr(stop, "signum", None) else "interrupted"
    console.print(_styled(f"{reason}:", "red", hint), soft_wrap=True)
    sys.exit(exit_code_for(stop) if stop is not None else EXIT_INTERRUPTED)


def frame_progress(console):
    """A progress display for frames of one video: bar, count, frames/s, elapsed, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.fields[name]}", markup=False, style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TextColumn("{task.fields[fps]:>7.1f} frames/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def summary_table(console, rows: list[tuple[str, str, str]]) -> None:
    """A table of (input, status, detail) rows, printed after a many-input run. When the
    output is not a terminal (a log file, a pipe), one whole line per row instead: a table
    would be folded at the console's 80 columns, cutting names and messages apart."""
    if not console.is_terminal:
        for name, status, detail in [("input", "status", "detail"), *rows]:
            info(console, f"{name}\t{status}\t{detail}")
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("input", "status", "detail"):
        table.add_column(column, overflow="fold")
    for name, status, detail in rows:
        style = "green" if status == INPUT_DONE else "red"
        table.add_row(Text(name), Text(status, style=style), Text(detail))
    console.print(table)


class CorpusProgress:
    """Progress of a corpus run, fed with :func:`affstream.corpus.run_corpus` events.

    One line per finished input is always printed. On a terminal, a live display shows
    the whole run (videos done / failed of all, frames/s, an ETA from the bytes still to
    go: videos run longest first, so a count of videos would mislead) and one bar per
    worker (its video, frames done of the declared count).
    """

    def __init__(self, console) -> None:
        import time

        self.console = console
        self.clock = time.monotonic
        self.start = self.clock()
        self.count = 0
        self.planned: int | None = None
        self.offset = 0
        self.bytes_total = 0
        self.bytes_done = 0.0
        self.frames = 0
        self.failed = 0
        self.running: dict[str, tuple[object, int, int | None]] = {}  # worker -> (item, done, total)
        self.progress = None
        self.overall = None
        self.bars: dict[str, int] = {}

    def __enter__(self) -> CorpusProgress:
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                     TextColumn("{task.fields[detail]}", markup=False),
                                     console=self.console, transient=True)
            self.overall = self.progress.add_task("corpus", total=None, detail="probing inputs")
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def event(self, kind: str, item, data: dict) -> None:
        if kind == "planned":
            self.offset = self.count  # inputs decided before any video ran (not a video, unreadable)
            self.planned = int(data["videos"])
            self.bytes_total = int(data["bytes"])
        elif kind == "started":
            self.running[data["worker"]] = (item, 0, None)
        elif kind == "progress":
            self.running[data["worker"]] = (item, int(data["done"]), data.get("total"))
        elif kind == "finished":
            self._finished(item, data)
        self._draw()

    def _finished(self, item, data: dict) -> None:
        self.count += 1
        for worker, (running, _, _) in list(self.running.items()):
            if running is item:
                del self.running[worker]
        report = data.get("report") or {}
        if item.status == "done":
            self.frames += int(report.get("counts", {}).get("frames_written", 0))
        if item.status in ("done", "failed", "skipped"):
            self.bytes_done += item.size
        self.failed += item.status == "failed"
        detail = _without_name(item.error or "", item.path)
        info(self.console, f"[{self.count}] {item.status}: {item.rel}" + (f" ({detail})" if detail else ""))

    def _draw(self) -> None:
        if self.progress is None:
            return
        elapsed = max(1e-6, self.clock() - self.start)
        live_frames = sum(done for _, done, _ in self.running.values())
        live_bytes = sum(item.size * min(1.0, done / total) for item, done, total in self.running.values() if total)
        fps = (self.frames + live_frames) / elapsed
        gone = self.bytes_done + live_bytes
        eta = "ETA -"
        if self.bytes_total and gone > 0:
            seconds = max(0.0, elapsed * (self.bytes_total - gone) / gone)
            eta = f"ETA {int(seconds // 60)}:{int(seconds % 60):02d}"
        done_videos = self.count - self.offset
        self.progress.update(self.overall, total=self.planned, completed=max(0, done_videos),
                             detail=f"{max(0, done_videos)}/{self.planned if self.planned is not None else '?'} videos, "
                                    f"{self.failed} failed, {fps:.1f} frames/s, {eta}")
        for worker, (item, done, total) in self.running.items():
            label = f"  {worker}: {item.rel}"
            if worker not in self.bars:
                self.bars[worker] = self.progress.add_task(label, total=total, detail="")
            self.progress.update(self.bars[worker], description=label, total=total, completed=done,
                                 detail=f"{done}/{total if total else '?'} frames", visible=True)
        for worker, task in self.bars.items():
            if worker not in self.running:
                self.progress.update(task, visible=False)


def _without_name(message: str, path) -> str:
    """``message`` without the leading ``PATH: `` the line already names."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
