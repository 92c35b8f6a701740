"""The base every per-frame table writer shares: ``write``, ``rows``, ``close``,
``abort``, a context manager, and two ways of publishing the file.

``"atomic"`` (outputs of a finished run) streams rows to a hidden temporary file that
:meth:`TableWriter.close` publishes; ``"live"`` (session logs) writes the final file
directly and flushes every row. See :class:`TableWriter`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

from ..errors import ConfigError, OutputError
from ..files import AtomicFile, output_error
from ..records import FrameAnnotation

WRITER_MODES: tuple[str, ...] = ("atomic", "live")
"""How a table writer publishes its file (see :class:`TableWriter`)."""


def check_mode(mode: str) -> str:
    """``mode`` normalised ("atomic" or "live"); ConfigError for anything else."""
    key = str(mode).strip().lower()
    if key not in WRITER_MODES:
        raise ConfigError(f"unknown writer mode '{mode}' (known: {', '.join(WRITER_MODES)})")
    return key


def open_live(path: Path, *, overwrite: bool = False) -> IO[str]:
    """Open ``path`` for a live log: UTF-8 text, no newline translation.

    Created with ``O_EXCL`` (OutputError if it exists) unless ``overwrite``, which
    truncates an existing file instead.
    """
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the output")
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
    flags |= os.O_TRUNC if overwrite else os.O_EXCL
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise OutputError(
            f"{path}: already exists; pass overwrite=True to replace it, or choose another name"
        ) from None
    except FileNotFoundError:
        raise OutputError(
            f"{path}: output folder '{path.parent}' does not exist; create it or choose another output path"
        ) from None
    except OSError as exc:
        raise output_error(path, exc, "cannot create an output file here") from None
    try:
        return open(fd, "w", encoding="utf-8", newline="")
    except BaseException:
        os.close(fd)
        raise


class TableWriter:
    """Base of the per-frame table writers: one row per :class:`FrameAnnotation`.

    ``mode="atomic"`` (default): rows stream to a hidden temporary file beside ``path``
    (:class:`~affstream.files.AtomicFile`); :meth:`close` publishes it, :meth:`abort`
    deletes it, and a previous ``path`` stays intact until then (``overwrite`` does
    not apply: publishing always replaces).

    ``mode="live"``: a session log. Rows go straight to ``path``, the header first, and
    each is flushed as it is written, so a killed process leaves a complete,
    parseable file that lacks at most the row being written. An existing ``path`` is
    refused unless ``overwrite``. :meth:`close` flushes, fsyncs and closes;
    :meth:`abort` keeps the rows written so far and just closes.

    As a context manager a normal exit closes and an exception aborts. Any OSError of
    writing, flushing, fsyncing, closing or renaming is raised as a one-line
    OutputError naming ``path`` and the fix (:func:`~affstream.files.output_error`,
    e.g. a full disk), and the writer is aborted first: an atomic writer never leaves
    its temporary file behind, a live one keeps the rows already written. Subclasses set
    :attr:`format_name` and implement :meth:`_write_row` (and :meth:`_start` for a
    header), writing each row with one ``write`` call to ``self._handle``.
    """

    format_name: ClassVar[str] = "table"

    def __init__(self, path: str | Path, *, mode: str = "atomic", overwrite: bool = False) -> None:
        self.path = Path(path)
        self.mode = check_mode(mode)
        self._rows = 0
        self._done = False
        self._atomic: AtomicFile | None = None
        if self.mode == "live":
            self._handle = open_live(self.path, overwrite=overwrite)
        else:
            self._atomic = AtomicFile(self.path, encoding="utf-8", newline="")
            self._handle = self._atomic.handle
        try:
            self._start()
            if self._atomic is None:
                self._handle.flush()
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from None
        except BaseException:
            self.abort()
            raise

    def _start(self) -> None:
        """Write what precedes the rows (a header); nothing by default."""

    def _write_row(self, ann: FrameAnnotation) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Write what follows the rows (a closing bracket); nothing by default."""

    @property
    def rows(self) -> int:
        """Data rows written so far (a header not counted)."""
        return self._rows

    @property
    def done(self) -> bool:
        """True once closed or aborted."""
        return self._done

    @property
    def temp_path(self) -> Path | None:
        """Where an atomic writer's rows are until close(); None in live mode."""
        return None if self._atomic is None else self._atomic.temp_path

    def write(self, ann: FrameAnnotation) -> None:
        """Append one row (flushed at once in live mode). ValueError after close() or abort().

        OutputError if the row cannot be written; the writer is aborted then.
        """
        if self._done:
            raise ValueError(f"{self.path}: {self.format_name} writer is already closed")
        try:
            self._write_row(ann)
            if self._atomic is None:
                self._handle.flush()
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from None
        self._rows += 1

    def close(self) -> None:
        """Atomic: flush, fsync and rename onto ``path``. Live: flush, fsync, close. Idempotent.

        OutputError if that fails: an atomic writer's temporary file is removed and a
        previous ``path`` stays as it was; a live log keeps the rows written so far.
        """
        if self._done:
            return
        try:
            self._finish()
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from None
        self._done = True
        if self._atomic is not None:
            self._atomic.commit()  # OutputError on failure, its temporary file removed
            return
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        except OSError as exc:
            _close_quietly(self._handle)
            raise output_error(self.path, exc, "cannot finish the file") from None

    def abort(self) -> None:
        """Atomic: delete the temporary file (``path`` untouched). Live: keep the rows, close.

        No-op after close(); never raises for the file it gives up.
        """
        if self._done:
            return
        self._done = True
        if self._atomic is not None:
            self._atomic.discard()
        else:
            _close_quietly(self._handle)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _close_quietly(handle: IO[str]) -> None:
    with contextlib.suppress(OSError):
        handle.close()
