"""Files: where shipped data and caches live, checksums, and atomic output.

Shipped data. A wheel carries ``pipelines/`` and ``weights/`` under ``affstream/_data/``;
an editable install or a source checkout reads them from the repository root
(:func:`shipped_dir`). Derived artefacts go to the cache, :func:`usable_cache_dir`: it
only ever holds data that can be recomputed, so a cache folder that cannot be created
or written warns once and the run goes on without caching.

Checksums. :func:`sha256_file` is the one sha256 of a file (:func:`sha256_bytes` of bytes
in memory); :func:`sha256_file_cached` memoises it by (path, size, mtime) for large
weight files.

Atomic output. An output file only ever appears under its final name once it is
complete: the data goes to a temporary file in the same directory, named
``.NAME.partial-<host>-<pid>-<random><suffix>`` (the hidden prefix keeps it out of globs
such as ``*.csv``; the trailing suffix keeps tools that guess a format from the
extension working; host and pid name the owner), which is flushed, fsync'ed and then
renamed onto ``NAME`` with :func:`os.replace` (atomic on POSIX and Windows within one
filesystem). An interrupted run therefore never leaves a truncated ``NAME`` behind and
never clobbers a previous complete ``NAME``. Every writer of the package goes through
one of:

* :class:`AtomicFile`        -- an open text file for streaming writers (``commit`` / ``discard``);
* :func:`atomic_path`        -- a temporary *path* for code that opens the file itself
  (a video muxer, ``safetensors.save_file``, ``np.save``);
* :func:`atomic_write_text` -- a whole text at once.

Failures. Every OSError of writing, flushing, fsyncing, closing or renaming becomes one
:class:`~affstream.errors.OutputError` line that names the output and the fix
(:func:`output_error`), and the temporary file is removed on every error path, also
when closing the handle fails again (buffered data is written on close). A process
killed outright (SIGKILL, or SIGTERM / SIGHUP without a handler) cannot clean up; the
next write of the same output removes what it left (:func:`remove_stale_partials`).

Nothing here does work at import time.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import OutputError, first_line

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
    """Where the per-user cache lives: ``AFFSTREAM_CACHE`` if set, else
    ``$XDG_CACHE_HOME/affstream``, else ``~/.cache/affstream``.

    Only the location: nothing is created or checked (see :func:`usable_cache_dir`).
    """
    root = os.environ.get("AFFSTREAM_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "affstream"


_CACHE_WARNED: set[str] = set()  # cache folders already warned about in this process


def _cache_problem(path: Path) -> str | None:
    """Why no file can be written in ``path`` (creating it first), or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        # an anonymous (O_TMPFILE where available) probe: it leaves no name behind
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def usable_cache_dir() -> Path | None:
    """The cache folder (:func:`cache_dir`), created on demand, if files can be written
    in it; None otherwise.

    The cache only holds derived data (text embeddings of the zero-shot head, the sha256
    memo), so a folder that cannot be created or cannot be written (read-only, not a
    folder, no permission) never stops a run: callers get None and work without
    caching, and one warning line naming the folder and ``AFFSTREAM_CACHE`` is logged,
    once per folder and process. Checked on every call (a probe file that leaves no
    name behind), so a folder fixed meanwhile is used again. Never raises.
    """
    path = cache_dir()
    problem = _cache_problem(path)
    if problem is None:
        return path
    if str(path) not in _CACHE_WARNED:
        _CACHE_WARNED.add(str(path))
        log.warning("cache folder %s is not usable (%s); running without a cache "
                    "(set AFFSTREAM_CACHE to a writable folder)", path, problem)
    return None


# ----------------------------------------------------------------------------- checksums


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are one file: :func:`os.path.samefile` where both exist
    (hard links, symbolic links, case-insensitive names), else the same absolute path."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


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
    that cannot be read or written, or no usable cache (:func:`usable_cache_dir`), is
    ignored: the digest is still returned.
    """
    path = Path(path).resolve()
    info = path.stat()
    key = f"{path}|{info.st_size}|{info.st_mtime_ns}"
    cache = usable_cache_dir()
    if cache is None:
        return sha256_file(path)
    memo_path = cache / "sha256.json"
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
"""Marker in every temporary file name: ``.NAME.partial-<host>-<pid>-<8 hex digits><suffix>``."""

STALE_UNOWNED_S = 3600.0
"""A temporary file without owner in its name (``.NAME.partial-<8 hex digits><suffix>``,
written by an older affstream) counts as stale once unmodified for this many seconds."""

_CREATE_ATTEMPTS = 16
_HOST_TAG_MAX = 24  # characters of the host name kept in temporary names

_NO_ROOM = frozenset(
    code for code in (getattr(errno, name, None) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS"))
    if code is not None
)
"""errno values that can only mean "the output cannot be stored here"."""

_CAUSES: dict[int, str] = {
    code: text
    for name, text in (
        ("ENOSPC", "no space left on the device; free space or choose another output folder"),
        ("EDQUOT", "disk quota exceeded; free space or choose another output folder"),
        ("EFBIG", "file too large for this file system; choose another output folder"),
        ("EROFS", "read-only file system; choose another output folder"),
        ("EACCES", "permission denied; check the folder's permissions or choose another output folder"),
        ("EPERM", "operation not permitted; check the folder's permissions or choose another output folder"),
        ("EIO", "input/output error; check the disk, then run again"),
        ("ENAMETOOLONG", "file name too long; choose a shorter output name or folder"),
    )
    if (code := getattr(errno, name, None)) is not None
}


def output_error(path: str | Path, exc: BaseException, doing: str = "cannot write the file") -> OutputError:
    """The one-line OutputError for ``exc``, met while ``doing`` output ``path``.

    ``"PATH: DOING: CAUSE; FIX"``: the cause and fix come from the OSError's ``errno``
    (e.g. ENOSPC: "no space left on the device; free space or choose another output
    folder"), else from its ``strerror`` or message (also for a library's own error,
    e.g. safetensors'). Raise it ``from None``: the original adds nothing.
    """
    cause = _CAUSES.get(getattr(exc, "errno", None) or 0)
    if cause is None:
        reason = getattr(exc, "strerror", None) or first_line(exc, 200)
        cause = f"{reason}; check the free space and permissions of the output folder, then run again"
    return OutputError(f"{path}: {doing}: {cause}")


def _host_tag() -> str:
    """This host as temporary names carry it: the first label of the host name, with
    anything but ASCII letters, digits, ``_`` and ``-`` replaced by ``_``, at most 24
    characters; ``host`` if nothing is left."""
    label = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", label)[:_HOST_TAG_MAX] or "host"


def _partial_names(path: Path) -> re.Pattern[str]:
    """Matches exactly the temporary names of output ``path`` (with or without owner)."""
    return re.compile(
        rf"\.{re.escape(path.name)}{re.escape(PARTIAL_TAG)}"
        rf"(?:(?P<host>[A-Za-z0-9_-]+)-(?P<pid>[0-9]+)-)?[0-9a-f]{{8}}{re.escape(path.suffix)}"
    )


def _process_alive(pid: int) -> bool:
    """False only if process ``pid`` of this host certainly does not exist.

    ``os.kill(pid, 0)`` sends no signal: ProcessLookupError means gone, PermissionError
    means alive (another user's). Where that test is unavailable or unsafe (Windows,
    where os.kill terminates the process; pid 0 or below, which name process groups)
    the process counts as alive.
    """
    if os.name == "nt" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError included: it exists
        return True
    return True


def _stale_owner(entry: os.DirEntry[str], match: re.Match[str], here: str, now: float) -> str | None:
    """Who left the temporary file ``entry`` and why it is stale, or None if it is not."""
    if not entry.is_file(follow_symlinks=False):
        return None
    host, pid = match["host"], match["pid"]
    if host is None:  # an older affstream's name: only its age tells
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            return None
        return f"an interrupted run (no owner recorded, unmodified for {age / 3600:.1f} h)" \
            if age > STALE_UNOWNED_S else None
    if host != here or _process_alive(int(pid)):
        return None  # another host's (shared storage) or a running process's
    return f"process {pid} on this host, which no longer runs"


def remove_stale_partials(path: str | Path) -> list[Path]:
    """Delete the temporary files that killed runs left for output ``path``; return them.

    Only names of exactly this output are considered
    (``.NAME.partial-<host>-<pid>-<8 hex digits><suffix>`` beside ``path``; other outputs'
    temporary files, the final file and anything else are never touched). One is stale
    when its owner ran on this host and no longer runs (``os.kill(pid, 0)`` raises
    ProcessLookupError; PermissionError counts as running), or when its name carries no
    owner (an older affstream) and it was not modified for :data:`STALE_UNOWNED_S`.
    Temporary files of running processes and of other hosts (shared storage) are kept.
    Each removal is logged at INFO. Never raises: a folder that cannot be listed or a
    file that cannot be removed is left alone.
    """
    target = Path(path)
    prefix = f".{target.name}{PARTIAL_TAG}"
    pattern = _partial_names(target)
    try:
        with os.scandir(target.parent) as entries:
            candidates = [(e, m) for e in entries if e.name.startswith(prefix) and (m := pattern.fullmatch(e.name))]
    except OSError:
        return []
    here, now = _host_tag(), time.time()
    removed: list[Path] = []
    for entry, match in candidates:
        owner = _stale_owner(entry, match, here, now)
        if owner is None:
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue  # another run cleaned it up first
        except OSError as exc:
            log.debug("could not remove stale temporary file %s: %s", entry.path, exc)
            continue
        log.info("removed stale temporary file %s left by %s", entry.path, owner)
        removed.append(Path(entry.path))
    return removed


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

    First removes the stale temporary files of ``path`` (:func:`remove_stale_partials`):
    every atomic output passes here, so whatever a killed run left is cleaned up by the
    next write of the same output. The file is created with ``O_EXCL`` and mode 0o666
    filtered by the umask, so the renamed output gets the same permissions as an
    ordinary new file would. OutputError if it cannot be created.
    """
    _check_target(path)
    remove_stale_partials(path)
    owner = f"{_host_tag()}-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_CREATE_ATTEMPTS):
        tmp = path.parent / f".{path.name}{PARTIAL_TAG}{owner}-{secrets.token_hex(4)}{path.suffix}"
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise output_error(path, exc, "cannot create an output file here") from None
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
    """Rename a complete, synced temporary file onto ``path`` (replacing it).

    OutputError if the rename fails; the temporary file is removed then.
    """
    try:
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise output_error(path, exc, "cannot replace the output file") from None
    _fsync_dir(path.parent)
    log.debug("wrote %s", path)


def _remove_quietly(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - only on odd filesystems
        log.warning("could not remove temporary file %s: %s", tmp, exc)


def _close(handle: IO[str]) -> OSError | None:
    """Close ``handle``; the OSError closing raised, or None.

    Closing writes what is still buffered, so it can fail (ENOSPC, EDQUOT, an NFS
    close); :mod:`io` closes the descriptor even then, so the file can be removed.
    """
    try:
        handle.close()
    except OSError as exc:
        return exc
    return None


def _finalize_abandoned(handle: IO[str], tmp: Path) -> None:
    """Garbage-collection fallback: an AtomicFile dropped without commit/discard."""
    try:
        _close(handle)
    finally:
        _remove_quietly(tmp)


class AtomicFile:
    """A text file that appears under ``path`` only when :meth:`commit` is called.

    ``handle`` is the open text stream (UTF-8, ``newline`` as given: ``""`` leaves line
    endings exactly as written). :meth:`commit` flushes, fsyncs and renames;
    :meth:`discard` deletes the temporary file and leaves ``path`` untouched. Both are
    idempotent; after one of them the other does nothing. An instance dropped without
    either is discarded when it is garbage collected. Whatever fails, the temporary
    file does not outlive the instance.
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
        """Flush, fsync, close and rename the temporary file onto ``path``.

        If any step fails: OutputError (:func:`output_error`, one line naming ``path``)
        for an OSError, the exception itself otherwise (KeyboardInterrupt); in every
        case the handle is closed, the temporary file removed and ``path`` untouched.
        """
        if self._done:
            return
        self._done = True
        self._finalizer.detach()
        try:
            try:
                self.handle.flush()
                os.fsync(self.handle.fileno())
            except OSError as exc:
                raise output_error(self.path, exc) from None
            problem = _close(self.handle)  # a last chance to fail: NFS reports ENOSPC here
            if problem is not None:
                raise output_error(self.path, problem) from None
        except BaseException:
            _close(self.handle)  # closes the descriptor even if flushing fails again
            _remove_quietly(self.temp_path)
            raise
        _publish(self.temp_path, self.path)

    def discard(self) -> None:
        """Close and delete the temporary file; ``path`` is left as it was.

        Never raises for the file it gives up (a close that fails to write the buffered
        rest, a full disk, is ignored).
        """
        if self._done:
            return
        self._done = True
        self._finalizer.detach()
        try:
            problem = _close(self.handle)
            if problem is not None:
                log.debug("discarding %s: closing failed (%s)", self.temp_path, problem)
        finally:
            _remove_quietly(self.temp_path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file already exists (empty) when the block starts; the block may
    open it, write it or replace it. If the block raises (KeyboardInterrupt included),
    the temporary file is removed, ``path`` is untouched and the exception propagates;
    an OSError that can only mean the output does not fit (ENOSPC, EDQUOT, EFBIG,
    EROFS) becomes an OutputError naming ``path``, any other is left as it is (the
    block may read other files). Failing to fsync or rename: OutputError, temporary
    file removed.
    """
    target = Path(path)
    tmp, fd = _create_temp(target)
    mode = os.fstat(fd).st_mode & 0o777  # 0o666 filtered by the umask
    os.close(fd)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in _NO_ROOM:
                raise output_error(target, exc) from None
            raise
        try:
            # a block that replaced the file (safetensors writes its own temporary
            # file and renames it) leaves that file's mode, often 0o600
            if os.stat(tmp).st_mode & 0o777 != mode:
                os.chmod(tmp, mode)
            _fsync_file(tmp)
        except OSError as exc:
            raise output_error(target, exc) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    _publish(tmp, target)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (no newline translation).

    OutputError (one line naming ``path``) if it cannot be written; then no temporary
    file is left and a previous ``path`` is untouched.
    """
    out = AtomicFile(path, encoding=encoding, newline="")
    try:
        out.handle.write(text)
    except OSError as exc:
        out.discard()
        raise output_error(out.path, exc) from None
    except BaseException:
        out.discard()
        raise
    out.commit()


# -------------------------------------------------------------- output folders, checked


def _unwritable_reason(folder: Path) -> str:
    """Why ``folder`` (existing) cannot be written: read-only file system or permissions."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        pass
    return "permission denied"


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (as anything)."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def check_output_folder(folder: str | Path) -> None:
    """OutputError unless ``folder`` is a writable folder or can be created as one: for a
    command to check its output before minutes of work instead of after them.

    Creates nothing. The message names the folder, what is wrong (a file in the way,
    a read-only file system, no permission) and what to do.
    """
    folder = Path(folder)
    existing = _nearest_existing(folder)
    if not os.path.isdir(existing):
        if existing == Path(os.path.abspath(folder)):
            raise OutputError(f"{folder}: exists and is not a folder; choose another output folder")
        raise OutputError(f"{folder}: cannot create this folder, '{existing}' is a file, not a folder; "
                          "choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == Path(os.path.abspath(folder)) else f" in '{existing}'"
        raise OutputError(f"{folder}: cannot write{where} ({_unwritable_reason(existing)}); "
                          "choose a writable output folder or fix its permissions")


def check_output_file(path: str | Path) -> None:
    """OutputError unless ``path`` can be written as a file (see :func:`check_output_folder`
    for its folder, which may not exist yet). Creates nothing."""
    path = Path(path)
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder; give a file name for the output")
    check_output_folder(path.parent)


def make_folder(folder: str | Path) -> Path:
    """Create ``folder`` and its parents if needed; OutputError (one line) if it cannot be."""
    folder = Path(folder)
    if os.path.isdir(folder):
        return folder
    check_output_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create this folder ({exc.strerror or exc}); "
                          "choose another output folder or fix its permissions") from None
    return folder
