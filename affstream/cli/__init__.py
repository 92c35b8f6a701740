"""Command line: parsing, progress and error reporting only; the work is in the library.

One module per command family (:mod:`.annotate`, :mod:`.corpus`, :mod:`.train`,
:mod:`.pictures`, :mod:`.doctor`), all sharing
:mod:`._ui` (console, exit codes, progress, summary). Nothing heavy (torch, open_clip,
av) is imported until a command runs, so ``affstream --help`` is instant.
"""

from __future__ import annotations

import logging
import sys

import click

from . import _ui
from .annotate import annotate_command
from .corpus import corpus_command
from .doctor import doctor_command
from .finetune import finetune_group
from .pictures import plot_command, render_command, report_command
from .stream import stream_command
from .train import evaluate_command, export_command, features_command, train_command


class _Group(click.Group):
    """The command group; a stop while a command starts (imports, model loading)
    exits 128 + signal with one line, like a stop during the work, not click's
    "Aborted!" with exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _ui.interrupted(_ui.stderr_console(), "no partial output was left under a final name")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="affstream")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """affstream: frame-exact facial affect analysis of video (valence/arousal,
    8 expressions, 12 action units) from CLIP features."""
    from rich.logging import RichHandler

    from ..runtime import install_stop_signals, restore_signals

    previous = install_stop_signals()  # SIGTERM / SIGHUP stop a command the way Ctrl-C does
    click.get_current_context().call_on_close(lambda: restore_signals(previous))

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=_ui.stderr_console(), show_path=False, show_time=False, markup=False)
    logger = logging.getLogger("affstream")
    logger.handlers[:] = [handler]
    logger.setLevel(level)


for _command in (annotate_command, corpus_command, features_command, train_command, evaluate_command, export_command,
                 render_command, plot_command, report_command, finetune_group):
    main.add_command(_command)
main.add_command(stream_command)
main.add_command(doctor_command)

def run() -> None:
    """The console entry point: :func:`main`, with a stop that arrives while click
    itself starts (before any command) handled as well.

    After a stop (exit status above 128) the process ends with ``os._exit``, once the
    command's own cleanup has run and the streams are flushed: CPython remembers a
    KeyboardInterrupt that hit code it ran through its exec path (torch's import does)
    and would otherwise end the process by SIGINT (status -2), although it was handled.
    """
    import os

    try:
        try:
            main()
        except KeyboardInterrupt:
            _ui.interrupted(_ui.stderr_console(), "nothing was started")
    except SystemExit as done:
        if isinstance(done.code, int) and done.code > 128:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(done.code)
        raise


__all__ = ["main", "run"]

if __name__ == "__main__":  # pragma: no cover
    main()
