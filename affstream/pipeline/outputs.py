"""Where a run's outputs go, and the checks made before anything is written.

``OUT/<stem>.csv`` and ``OUT/<stem>.json`` per input. Before any model loads,
:func:`check_outputs` makes sure that writing them destroys nothing but an earlier
affstream run's outputs: never an input (``affstream annotate clip.json -o .`` would
otherwise replace the video with its own report), never a file affstream did not write
unless asked to (``overwrite``); two inputs may not share a stem in one output folder,
and the folder must be creatable.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from ..writers.columns import CSV_COLUMNS

_HEADER_MAX = 1 << 16  # bytes read to find a CSV's header line
_REPORT_MAX = 16 << 20  # a JSON larger than this is not an affstream report

_OVERWRITE_HINT = "use --overwrite (overwrite=True) to replace it, or choose another output folder"


def output_paths(source: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """``OUT/<stem>.csv`` and ``OUT/<stem>.json`` for ``source``."""
    stem = Path(source).stem
    out = Path(out_dir)
    return out / f"{stem}.csv", out / f"{stem}.json"


def _resolved(path: str | Path) -> Path:
    """``path`` made absolute with symbolic links followed as far as they exist."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop, an unreadable folder
        return Path(os.path.abspath(path))


class _Inputs:
    """The sources, to tell whether a path is one of them: by device and inode where
    the source exists (what :func:`os.path.samefile` compares: hard links, symbolic
    links and case-insensitive names included), by resolved path always."""

    def __init__(self, sources: Sequence[str | Path]) -> None:
        self.by_inode: dict[tuple[int, int], str] = {}
        self.by_path: dict[Path, str] = {}
        for source in sources:
            info = _stat(source)
            if info is not None and info.st_ino:  # st_ino 0: the filesystem has no inode numbers
                self.by_inode.setdefault((info.st_dev, info.st_ino), str(source))
            self.by_path.setdefault(_resolved(source), str(source))

    def match(self, path: Path, info: os.stat_result | None) -> str | None:
        """The source that ``path`` (whose :func:`os.stat` is ``info``) is, or None."""
        if info is not None and info.st_ino and (info.st_dev, info.st_ino) in self.by_inode:
            return self.by_inode[(info.st_dev, info.st_ino)]
        return self.by_path.get(_resolved(path))


def _stat(path: str | Path) -> os.stat_result | None:
    """:func:`os.stat` of ``path`` (links followed), or None if there is nothing there."""
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _csv_problem(path: Path) -> str | None:
    """Why the regular file ``path`` is not a per-frame CSV affstream wrote, or None."""
    try:
        with path.open("rb") as handle:
            first = handle.readline(_HEADER_MAX)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    try:
        line = first.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    header = next(csv.reader([line.rstrip("\r\n")]), None) if line.strip() else None
    if header is None:
        return "empty"
    if tuple(header) != CSV_COLUMNS:
        return "its header is not affstream's per-frame columns"
    return None


def _json_problem(path: Path, size: int) -> str | None:
    """Why the regular file ``path`` is not a JSON report affstream wrote, or None."""
    if size > _REPORT_MAX:
        return "too large to be an affstream report"
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return "not JSON"
    if not isinstance(value, dict) or "affstream_version" not in value:
        return "not an affstream report (no affstream_version)"
    return None


def _foreign(path: Path, info: os.stat_result | None) -> str | None:
    """Why what exists at output ``path`` is not an output affstream wrote; None if
    nothing is there or it is one. Never opens anything but a regular file (a FIFO
    would block)."""
    if info is None:
        return "a dangling symbolic link" if os.path.islink(path) else None
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if path.suffix == ".csv":
        return _csv_problem(path)
    return _json_problem(path, info.st_size)


def check_outputs(sources: Sequence[str | Path], out_dir: str | Path, *, overwrite: bool = False) -> None:
    """Fail early, with a one-line ConfigError, if writing the outputs of ``sources``
    into ``out_dir`` could destroy anything but an earlier affstream run's outputs.

    Refused always, ``overwrite`` or not:

    * two sources that would write the same output files (one stem);
    * an output path that is the same file as any source (the input itself, e.g.
      ``clip.json -o .``, or a hard or symbolic link to it): the message names both;
    * a folder under an output name (no file can replace it);
    * an ``out_dir`` that cannot be created.

    Refused unless ``overwrite``: an existing output path affstream did not write -- a
    CSV whose header is not :data:`~affstream.writers.columns.CSV_COLUMNS`, a JSON that
    is not an object with an ``affstream_version`` key, anything else (a FIFO, a
    socket, a dangling link). An earlier run's outputs pass, so re-running over them
    needs no ``overwrite``.

    Nothing is written or opened but the regular files under output names (read, at
    most their first line or 16 MiB) and ``out_dir`` (created, checked last, so a
    refusal leaves no new folder).
    """
    seen: dict[Path, str] = {}
    for source in sources:
        csv_path, _ = output_paths(source, out_dir)
        if csv_path in seen:
            raise ConfigError(
                f"{source} and {seen[csv_path]} would both write {csv_path.name}; "
                "annotate them into different output directories or rename one"
            )
        seen[csv_path] = str(source)
    inputs = _Inputs(sources)
    for source in sources:
        for path in output_paths(source, out_dir):
            info = _stat(path)
            same = inputs.match(path, info)
            if same is not None:
                raise ConfigError(
                    f"{path} is the input {same} itself; writing the output there would destroy it; "
                    "choose another output folder or rename the input"
                )
            if info is not None and stat.S_ISDIR(info.st_mode):
                raise ConfigError(
                    f"{path}: is a folder, which no output file can replace; "
                    "rename or remove it, or choose another output folder"
                )
            problem = _foreign(path, info)
            if problem is not None and not overwrite:
                raise ConfigError(f"{path}: exists and was not written by affstream ({problem}); {_OVERWRITE_HINT}")
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out_dir}: cannot create the output directory ({exc.strerror or exc})") from None
