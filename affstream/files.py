"""Files: where shipped data and caches live, checksums, and atomic output.

Shipped data. A wheel carries ``pipelines/`` and ``weights/`` under ``affstream/_data/``;
an editable install or a source checkout reads them from the repository root
(:func:`shipped_dir`). Derived artefacts go to :func:`cache_dir`.

Checksums. :func:`sha256_file` is the one sha256 of a file (:func:`sha256_bytes` of bytes
in memory); :func:`sha256_file_cached` memoises it by (path, size, mtime) for large
weight files.

Atomic output. An output file only ever appears under its final name once it is
complete: the data goes to a temporary file in the same directory, named
``.NAME.partial-<random><suffix>`` (the hidden prefix keeps it out of globs such as
``*.csv``; the trailing suffix keeps tools that guess a format from the extension
working), which is flushed, fsync'ed and then renamed onto ``NAME`` with
:func:`os.replace` (atomic on POSIX and Windows within one filesystem). An interrupted
run therefore never leaves a truncated ``NAME`` behind and never clobbers a previous
complete ``NAME``. Every writer of the package goes through one of:

* :class:`AtomicFile`        -- an open text file for streaming writers (``commit`` / ``discard``);
* :func:`atomic_path`        -- a temporary *path* for code that opens the file itself
  (a video muxer, ``safetensors.save_file``, ``np.save``);
* :func:`atomic_write_text` -- a whole text at once.

Nothing here does work at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import ConfigError, OutputError

log = logging.getLogger("affstream")

_PACKAGE_DIR = Path(__file__).resolve().parent
_HASH_CHUNK = 1 << 20  # bytes read per step while hashing


# ------------------------------------------------------------------ shipped data, cache


def shipped_dir(name: str) -> Path:
    """Directory of shipped data ``name`` ("pipelines" or "weights").

    Raises FileNotFoundError if the installation is incomplete.
    """
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"affstream's shipped '{name}' directory is missing; reinstall affstream")


def cache_dir() -> Path:
    """Per-user cache for downloaded or derived artefacts ($XDG_CACHE_HOME/affstream).

    ``AFFSTREAM_CACHE`` overrides the location. The directory is created on demand;
    ConfigError if it cannot be.
    """
    root = os.environ.get("AFFSTREAM_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "affstream"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot use cache directory {path} ({exc.strerror or exc}); "
            "set AFFSTREAM_CACHE to a writable directory"
        ) from None
    return path


# ----------------------------------------------------------------------------- checksums


def sha256_bytes(data: bytes) -> str:
    """sha256 hex digest of ``data`` (e.g. a file already read, a serialised cache key)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of the bytes of ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file_cached(path: str | Path) -> str:
    """:func:`sha256_file`, memoised in the cache by (resolved path, size, mtime).

    Large weight files take seconds to hash; the memo makes later runs instant. A memo
    that cannot be read or written is ignored (the digest is still returned).
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_dir() / "sha256.json"
    try:
        memo = dict(json.loads(memo_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        memo = {}
    if key in memo:
        return str(memo[key])
    memo[key] = sha256_file(path)
    try:
        atomic_write_text(memo_path, json.dumps(memo, indent=1, sort_keys=True))
    except OutputError as exc:
        log.debug("could not write sha256 memo %s: %s", memo_path, exc)
    return memo[key]


# -------------------------------------------------------------------------- atomic output

PARTIAL_TAG = ".partial-"
"""Marker in every temporary file name: ``.NAME.partial-<8 hex digits><suffix>``."""

_CREATE_ATTEMPTS = 16


def _check_target(path: Path) -> None:
    """Raise OutputError if ``path`` cannot become a regular output file."""
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(
            f"{path}: output folder '{parent}' does not exist; create it or choose another output path"
        )
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the output")


def _create_temp(path: Path) -> tuple[Path, int]:
    """Create a new, empty temporary file beside ``path``; return (temp path, open fd).

    The file is created with ``O_EXCL`` and mode 0o666 filtered by the umask, so the
    renamed output gets the same permissions as an ordinary new file would.
    """
    _check_target(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_CREATE_ATTEMPTS):
        tmp = path.parent / f".{path.name}{PARTIAL_TAG}{secrets.token_hex(4)}{path.suffix}"
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(
                f"{path}: cannot create an output file here ({exc.strerror}); check the folder's permissions"
            ) from None
    raise OutputError(f"{path}: could not pick a free temporary file name; clean up '.{path.name}.partial-*'")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename on POSIX; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path) -> None:
    """Rename a complete, synced temporary file onto ``path`` (replacing it)."""
    try:
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputError(f"{path}: cannot replace the output file ({exc.strerror})") from None
    _fsync_dir(path.parent)
    log.debug("wrote %s", path)


def _remove_quietly(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - only on odd filesystems
        log.warning("could not remove temporary file %s: %s", tmp, exc)


def _finalize_abandoned(handle: IO[str], tmp: Path) -> None:
    """Garbage-collection fallback: an AtomicFile dropped without commit/discard."""
    try:
        handle.close()
    finally:
        _remove_quietly(tmp)


class AtomicFile:
    """A text file that appears under ``path`` only when :meth:`commit` is called.

    ``handle`` is the open text stream (UTF-8, ``newline`` as given: ``""`` leaves line
    endings exactly as written). :meth:`commit` flushes, fsyncs and renames;
    :meth:`discard` deletes the temporary file and leaves ``path`` untouched. Both are
    idempotent; after one of them the other does nothing. An instance dropped without
    either is discarded when it is garbage collected.
    """

    def __init__(self, path: str | Path, *, encoding: str = "utf-8", newline: str | None = "") -> None:
        self.path = Path(path)
        self.temp_path, fd = _create_temp(self.path)
        try:
            # the handle outlives this call (commit/discard close it): no context manager
            self.handle: IO[str] = open(fd, "w", encoding=encoding, newline=newline)  # noqa: SIM115
        except BaseException:
            os.close(fd)
            _remove_quietly(self.temp_path)
            raise
        self._finalizer = weakref.finalize(self, _finalize_abandoned, self.handle, self.temp_path)
        self._done = False

    @property
    def done(self) -> bool:
        """True once committed or discarded."""
        return self._done

    def commit(self) -> None:
        """Flush, fsync and rename the temporary file onto ``path``."""
        if self._done:
            return
        self._done = True
        self._finalizer.detach()
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except BaseException:
            self.handle.close()
            _remove_quietly(self.temp_path)
            raise
        self.handle.close()
        _publish(self.temp_path, self.path)

    def discard(self) -> None:
        """Close and delete the temporary file; ``path`` is left as it was."""
        if self._done:
            return
        self._done = True
        self._finalizer.detach()
        try:
            self.handle.close()
        finally:
            _remove_quietly(self.temp_path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file already exists (empty) when the block starts; the block may
    open it, write it or replace it. If the block raises (KeyboardInterrupt included),
    the temporary file is removed, ``path`` is untouched and the exception propagates.
    """
    target = Path(path)
    tmp, fd = _create_temp(target)
    os.close(fd)
    try:
        yield tmp
        _fsync_file(tmp)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _publish(tmp, target)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (no newline translation)."""
    out = AtomicFile(path, encoding=encoding, newline="")
    try:
        out.handle.write(text)
    except BaseException:
        out.discard()
        raise
    out.commit()

