"""Which files of a corpus are videos, and where their outputs go.

INPUT is a folder (searched recursively) or a list of paths: a text file with one path
a line, or a CSV with a ``path`` column (relative paths are relative to the list's
folder). ``--glob`` keeps the files whose path relative to the root matches.

Whether a file is a video is decided by its content, never its name: a probe opens it
with :func:`affstream.io.sources.open_source` (which decodes the first frame) in a
separate process, so that a decoder crash on one file costs that file only. Decisions:

* ``failed``: the file system says it cannot be read (missing, empty, no permission:
  :func:`~affstream.io.sources.describe_unusable_input`), or its first bytes carry a
  media container's signature but no frame can be decoded (a truncated or corrupt video);
* ``not a video``: FFmpeg recognises no media in it and it has no media signature (a
  text file named ``fake.mp4``), or it holds no video stream;
* a video otherwise (with or without an extension; still images count, as for
  ``affstream annotate``).

Outputs mirror the input's relative path: ``sub/dir/clip.mp4`` -> ``OUT/sub/dir/clip.csv``
and ``.json``. Two videos of one folder with one stem (``a/x.mp4`` and ``a/x.mov``) would
write the same files: :func:`check_collisions` refuses the corpus with one line naming
both, before anything is annotated (rename one; output names never depend on which
other files exist).
"""

from __future__ import annotations

import concurrent.futures
import csv
import fnmatch
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CRASH_REPORT_HINT, ConfigError
from ..io.sources import describe_unusable_input
from ..writers.csv import read_text_cell

log = logging.getLogger("affstream")

STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
STATUS_NOT_VIDEO = "not a video"

_SIGNATURE_BYTES = 64


@dataclass
class CorpusItem:
    """One input file of a corpus.

    path: the file as found (under the root, or as the list gave it); rel: its path
    relative to the root (decides the output paths); size: bytes (0 if unknown).
    status / error: set once decided (None while it is still to be annotated).
    """

    path: Path
    rel: Path
    size: int = 0
    status: str | None = None
    error: str | None = None

    def outputs(self, out_dir: Path) -> tuple[Path, Path]:
        """``OUT/<rel parent>/<stem>.csv`` and ``.json``."""
        folder = out_dir / self.rel.parent
        stem = self.rel.stem if self.rel.suffix else self.rel.name
        return folder / f"{stem}.csv", folder / f"{stem}.json"


# ------------------------------------------------------------------------------ listing


def _read_list(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the list of inputs ({exc})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{path}: the list of inputs is empty")
    header = next(csv.reader([lines[0]]))
    names = [h.strip().lower() for h in header]
    if "path" in names and (len(names) > 1 or path.suffix.lower() == ".csv"):
        column = names.index("path")
        rows = csv.reader(lines[1:])
        entries = [read_text_cell(row[column].strip()) for row in rows if len(row) > column and row[column].strip()]
    else:
        entries = [line.strip() for line in lines if not line.lstrip().startswith("#")]
    return [Path(e) if Path(e).is_absolute() else path.parent / e for e in entries]


def _common_root(paths: list[Path]) -> Path:
    if not paths:
        return Path(".")
    try:
        return Path(os.path.commonpath([str(p.absolute().parent) for p in paths]))
    except ValueError:  # different drives
        return Path("/")


def _walk(root: Path, out_abs: Path) -> tuple[list[Path], list[CorpusItem]]:
    """Every file under ``root`` (the output folder left out), and a failed item for each
    folder that could not be listed or that a symbolic link leads back into (a loop).

    Symbolic links to folders are followed, so a tree assembled from links is annotated
    whole; a link to a folder already on the way down (or already listed) is a loop and
    is refused, with its own row, never silently skipped."""
    files: list[Path] = []
    problems: list[CorpusItem] = []
    seen: set[tuple[int, int]] = set()

    def failed(folder: Path, reason: str) -> None:
        problems.append(CorpusItem(folder, folder.relative_to(root), 0, STATUS_FAILED, f"{folder}: {reason}"))
        log.warning("corpus: %s: %s", folder, reason)

    def visit(folder: Path) -> None:
        try:
            info = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            failed(folder, f"folder cannot be listed ({exc.strerror or exc}); its files are not annotated")
            return
        key = (info.st_dev, info.st_ino)
        if key in seen:
            failed(folder, f"symbolic link back to a folder already listed ({os.path.realpath(folder)}); "
                           "a loop: its files are annotated once, from their other path")
            return
        seen.add(key)
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if Path(os.path.abspath(path)) != out_abs:
                    visit(path)
            else:
                files.append(path)

    visit(root)
    return files, problems


def list_inputs(source: str | Path, out_dir: str | Path, pattern: str | None = None) -> tuple[Path, list[CorpusItem]]:
    """The root and the candidate files of ``source`` (a folder or a list), sorted by
    relative path. The output folder is never searched (its CSVs are not inputs)."""
    source = Path(source)
    out_abs = Path(os.path.abspath(out_dir))
    problems: list[CorpusItem] = []
    if source.is_dir():
        root = source
        files, problems = _walk(source, out_abs)
        rels = [f.relative_to(root) for f in files]
    elif source.is_file():
        files = _read_list(source)
        root = _common_root(files)
        rels = [Path(os.path.relpath(f.absolute(), root)) for f in files]
    else:
        raise ConfigError(f"{source}: no such folder or list of inputs; give a folder or a text/CSV list of paths")
    items = []
    for path, rel in zip(files, rels, strict=True):
        if pattern and not (fnmatch.fnmatch(rel.as_posix(), pattern) or fnmatch.fnmatch(rel.name, pattern)):
            continue
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        items.append(CorpusItem(path, rel, size))
    items.extend(problems)  # folders that could not be listed: rows of their own, never left out silently
    items.sort(key=lambda item: item.rel.as_posix())
    return root, items


# ------------------------------------------------------------------------------ probing


_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"),  # MP4 / MOV / 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI (and WAV: no video stream)
    (0, b"FLV"), (0, b"OggS"), (0, b"\x00\x00\x01\xba"), (0, b"\x00\x00\x01\xb3"),  # FLV, Ogg, MPEG-PS
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
    (0, b"\xff\xd8\xff"), (0, b"\x89PNG"), (0, b"GIF8"), (0, b"BM"),  # images
)


def has_media_signature(head: bytes) -> bool:
    """Whether the first bytes of a file look like a media container (MPEG-TS: a sync
    byte every 188 bytes)."""
    if any(head[offset:offset + len(magic)] == magic for offset, magic in _SIGNATURES):
        return True
    return len(head) >= 1 and head[0] == 0x47 and (len(head) < 189 or head[188] == 0x47)


def probe_file(path: str) -> tuple[str | None, str]:
    """Runs in the probe process: (status, detail). status None: a video (detail
    describes it); else STATUS_FAILED or STATUS_NOT_VIDEO with the reason."""
    import av

    from ..errors import AffstreamError, first_line, internal_error
    from ..io.sources import open_source

    try:
        with open(path, "rb") as handle:
            head = handle.read(_SIGNATURE_BYTES)
    except OSError as exc:
        return STATUS_FAILED, f"{path}: cannot be read ({exc.strerror or exc})"
    try:
        source = open_source(path)
    except AffstreamError as exc:
        message = str(exc)
        if "no video stream" in message.lower() or not has_media_signature(head):
            return STATUS_NOT_VIDEO, message
        return STATUS_FAILED, message
    except (av.FFmpegError, OSError, ValueError) as exc:  # the decoder's own error: this file's failure
        return STATUS_FAILED, f"{path}: cannot be decoded ({type(exc).__name__}: {first_line(exc)})"
    except Exception as exc:  # noqa: BLE001 - a defect in affstream or a dependency, not in the file
        return STATUS_FAILED, internal_error(path, exc)
    try:
        info = source.info
        return None, f"{info.codec} {info.width}x{info.height}, {info.frame_count} frame(s) declared"
    finally:
        source.close()


class Prober:
    """Probes files one at a time in a separate (spawned) process; a probe that kills
    that process fails its file only, and the next probe gets a fresh process."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def probe(self, path: Path) -> tuple[str | None, str]:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return self._pool.submit(probe_file, str(path)).result()
        except concurrent.futures.process.BrokenProcessPool:
            self._pool.shutdown(wait=False)
            self._pool = None
            return STATUS_FAILED, f"{path}: the probe process crashed on this file; {CRASH_REPORT_HINT}"


def classify(items: Iterable[CorpusItem], prober: Callable[[Path], tuple[str | None, str]]) -> None:
    """Decide, for each item still undecided, whether it is a video (status stays None)
    or a failed / not-a-video row; every decision is logged."""
    for item in items:
        if item.status is not None:
            continue
        problem = describe_unusable_input(item.path)
        if problem is not None:
            item.status, item.error = STATUS_FAILED, problem
            log.info("probe: %s: failed (%s)", item.rel, problem)
            continue
        status, detail = prober(item.path)
        if status is None:
            log.info("probe: %s: video (%s)", item.rel, detail)
        else:
            item.status, item.error = status, detail
            log.info("probe: %s: %s (%s)", item.rel, status, detail)


def check_collisions(items: Iterable[CorpusItem], out_dir: Path) -> None:
    """ConfigError (one line naming both) when two videos would write the same outputs."""
    seen: dict[Path, CorpusItem] = {}
    for item in items:
        csv_path, _ = item.outputs(out_dir)
        key = Path(os.path.normcase(str(csv_path)))
        if key in seen:
            raise ConfigError(f"{item.path} and {seen[key].path} would both write {csv_path}; "
                              "rename one of them (outputs keep the input's name without its extension)")
        seen[key] = item
