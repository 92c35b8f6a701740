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
    """A table of (input, status, detail) rows, printed after a many-input run."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("input", "status", "detail"):
        table.add_column(column, overflow="fold")
    for name, status, detail in rows:
        style = "green" if status == INPUT_DONE else "red"
        table.add_row(Text(name), Text(status, style=style), Text(detail))
    console.print(table)
