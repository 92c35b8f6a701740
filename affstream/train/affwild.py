"""Reading Aff-Wild2 / ABAW annotations.

Layout of a dataset root (the organizers' layout)::

    ROOT/EXPR_Recognition_Challenge/{Train_Set,Validation_Set}/VIDEO.txt
    ROOT/AU_Detection_Challenge/{Train_Set,Validation_Set}/VIDEO.txt
    ROOT/VA_Estimation_Challenge/{Train_Set,Validation_Set}/VIDEO.txt

A video with two annotated people has ``VIDEO_left.txt`` and ``VIDEO_right.txt``
instead; each file describes one *annotated person*, named after the file stem
(``video3_left``), whose *video* is the stem without the side suffix (``video3``).

Each file is a header line followed by exactly one line per video frame: file line
``k + 1`` holds frame ``k`` (1-based, as the cropped images ``%05d.jpg``). Error
messages quote file line numbers, so the header is line 1 and frame 1 is line 2.

Unannotated frames and how they are returned:

========  ==========================  ========================================
task      in the file                 returned array
========  ==========================  ========================================
expr      ``-1``                      (n,) int64, ``-1``
au        ``-1`` (the whole row)      (n, 12) int8, ``-1`` where unannotated
va        ``-5`` (either value)       (n, 2) float32, both values ``NaN``
========  ==========================  ========================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..labels import AU_LABELS, EXPR_LABELS, VA_LABELS

log = logging.getLogger("affstream")

TASK_DIRS: dict[str, str] = {
    "expr": "EXPR_Recognition_Challenge",
    "au": "AU_Detection_Challenge",
    "va": "VA_Estimation_Challenge",
}
SPLITS: tuple[str, ...] = ("Train_Set", "Validation_Set")
TEST_SPLIT = "Test_Set"
"""Split of the unannotated people of a test list (``affstream features --test-list``)."""

HEADERS: dict[str, tuple[str, ...]] = {
    "expr": EXPR_LABELS,
    "au": AU_LABELS,
    "va": VA_LABELS,
}
VALUE_COLUMNS: dict[str, int] = {"expr": 1, "au": len(AU_LABELS), "va": len(VA_LABELS)}
"""Values per frame line (an EXPR line holds one class index, not one column per class)."""
_LINE_FORMS: dict[str, str] = {
    "expr": "one class 0-7 or -1",
    "au": "12 comma-separated values 0/1 or -1",
    "va": "valence,arousal",
}
VA_UNANNOTATED = -5.0
LENGTH_TOLERANCE_FRAMES = 2
"""Frames by which an annotation may differ from the decoded video before it is an error."""

SIDE_SUFFIXES: tuple[str, ...] = ("_left", "_right")


# --------------------------------------------------------------------------- parsing


def _fail(path: Path, line: int, problem: str, fix: str) -> DataError:
    return DataError(f"{path}:{line}: {problem}; {fix}")


def _check_task(task: str) -> None:
    if task not in TASK_DIRS:
        raise ConfigError(f"unknown task '{task}' (use expr, au or va)")


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found; check the dataset root") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read annotation file ({exc}); check the file") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _check_header(path: Path, header: str, task: str) -> None:
    expected = HEADERS[task]
    got = tuple(part.strip() for part in header.split(","))
    if tuple(g.lower() for g in got) != tuple(e.lower() for e in expected):
        raise _fail(
            path, 1, f"header '{header.strip()}' is not the {task} header",
            f"expected '{','.join(expected)}' (is the file in the right challenge folder?)",
        )


def _parse_expr(path: Path, lineno: int, parts: list[str]) -> int:
    try:
        value = int(parts[0])
    except ValueError:
        raise _fail(path, lineno, f"non-numeric value '{parts[0]}'",
                    "expected an integer class 0-7 or -1") from None
    if not -1 <= value <= 7:
        raise _fail(path, lineno, f"expression {value} out of range",
                    "expected a class 0-7 or -1 (not annotated)")
    return value


def _parse_au(path: Path, lineno: int, parts: list[str]) -> list[int]:
    row = []
    for text in parts:
        try:
            value = int(text)
        except ValueError:
            raise _fail(path, lineno, f"non-numeric value '{text}'",
                        "expected 0, 1 or -1 for every AU") from None
        if value not in (-1, 0, 1):
            raise _fail(path, lineno, f"AU value {value} out of range",
                        "expected 0, 1 or -1 (not annotated)")
        row.append(value)
    return row


def _parse_va(path: Path, lineno: int, parts: list[str]) -> tuple[float, float]:
    values = []
    for text in parts:
        try:
            value = float(text)
        except ValueError:
            raise _fail(path, lineno, f"non-numeric value '{text}'",
                        "expected a number in [-1, 1] or -5") from None
        if not (math.isfinite(value) and (-1.0 <= value <= 1.0 or value == VA_UNANNOTATED)):
            raise _fail(path, lineno, f"value {text} out of range",
                        "expected valence/arousal in [-1, 1] or -5 (not annotated)")
        values.append(value)
    if VA_UNANNOTATED in values:
        return (math.nan, math.nan)
    return (values[0], values[1])


_PARSERS = {"expr": _parse_expr, "au": _parse_au, "va": _parse_va}


def read_annotation_file(path: str | Path, task: str) -> np.ndarray:
    """Read one Aff-Wild2 annotation file; row ``k - 1`` is frame ``k``.

    Returns:
        expr: (n,) int64, classes 0-7 in ``EXPR_LABELS`` order, -1 = not annotated.
        au:   (n, 12) int8, 0/1 in ``AU_LABELS`` order, -1 = not annotated.
        va:   (n, 2) float32 (valence, arousal) in [-1, 1]; a line where either value
              is -5 is unannotated and both values become NaN.

    Raises DataError ``FILE:LINE: problem; what to do`` for a missing or empty file, a
    wrong header, a wrong column count, a non-numeric or out-of-range value.
    Trailing blank lines are ignored; a blank line between frames is an error.
    """
    _check_task(task)
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise _fail(path, 1, "empty file", "expected a header line and one line per frame")
    _check_header(path, lines[0], task)
    if len(lines) == 1:
        raise _fail(path, 2, "no frame lines after the header",
                    "expected one line per frame; remove the file or re-export it")
    fast = _parse_fast(lines[1:], task)
    if fast is not None:
        return fast
    return _parse_lines(path, lines[1:], task)


def _parse_fast(body: list[str], task: str) -> np.ndarray | None:
    """Vectorised parse of a well-formed file; None if anything looks wrong, so that
    :func:`_parse_lines` finds and reports the offending line."""
    n_columns = VALUE_COLUMNS[task]
    dtype = np.float64 if task == "va" else np.int64
    try:
        values = np.loadtxt(body, delimiter=",", dtype=dtype, ndmin=2, comments=None)
    except ValueError:
        return None
    if values.shape != (len(body), n_columns):
        return None  # blank lines (skipped by loadtxt) or wrong column counts
    if task == "expr":
        return values[:, 0] if ((values >= -1) & (values <= 7)).all() else None
    if task == "au":
        return values.astype(np.int8) if np.isin(values, (-1, 0, 1)).all() else None
    valid = (np.isfinite(values) & (np.abs(values) <= 1.0)) | (values == VA_UNANNOTATED)
    if not valid.all():
        return None
    unannotated = (values == VA_UNANNOTATED).any(axis=1)
    values[unannotated] = np.nan
    return values.astype(np.float32)


def _parse_lines(path: Path, body: list[str], task: str) -> np.ndarray:
    """Line-by-line parse with a precise error for the first bad line."""
    n_columns = VALUE_COLUMNS[task]
    parse = _PARSERS[task]
    rows = []
    for lineno, line in enumerate(body, start=2):
        if not line.strip():
            raise _fail(path, lineno, "blank line", "expected one line per frame; remove the blank line")
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != n_columns:
            raise _fail(path, lineno, f"{len(parts)} values instead of {n_columns}",
                        f"expected {_LINE_FORMS[task]} on every line")
        rows.append(parse(path, lineno, parts))
    if task == "expr":
        return np.asarray(rows, dtype=np.int64)
    if task == "au":
        return np.asarray(rows, dtype=np.int8).reshape(-1, n_columns)
    return np.asarray(rows, dtype=np.float32).reshape(-1, n_columns)


def read_video_list(path: str | Path) -> list[str]:
    """Names listed in a plain text file, one per line (e.g. a test-set list).

    Blank lines and lines starting with ``#`` are skipped; a trailing ``.txt``, ``.mp4``
    or ``.avi`` extension is dropped. Raises DataError if the file is missing or lists
    no name.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read video list ({exc}); check the path") from None
    names = []
    for line in lines:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        stem, dot, ext = name.rpartition(".")
        names.append(stem if dot and ext.lower() in ("txt", "mp4", "avi") else name)
    if not names:
        raise DataError(f"{path}: the video list is empty; write one video name per line")
    return names


# --------------------------------------------------------------------------- people


@dataclass(frozen=True, eq=False)
class PersonLabels:
    """All annotations of one annotated person, tasks merged and padded to one length.

    name:     the file stem, e.g. ``video3_left`` (or ``video3`` for one person).
    video:    the video the person appears in, e.g. ``video3``.
    split:    ``Train_Set`` or ``Validation_Set``.
    expr:     (n_frames,) int64 or None; au: (n_frames, 12) int8 or None;
    va:       (n_frames, 2) float32 or None -- encodings of :func:`read_annotation_file`.
    n_frames: number of annotated frame lines (the longest of the task files).
    files:    task -> annotation file it was read from (empty when not read from files).
    """

    name: str
    video: str
    split: str
    expr: np.ndarray | None
    au: np.ndarray | None
    va: np.ndarray | None
    n_frames: int
    files: dict[str, str] = field(default_factory=dict)

    def task_labels(self, task: str) -> np.ndarray | None:
        """The array of ``task`` ("expr", "au" or "va"), or None if not annotated."""
        _check_task(task)
        return getattr(self, task)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASK_DIRS if getattr(self, t) is not None)


def video_of(name: str) -> str:
    """``video3_left`` -> ``video3``; a name without a side suffix is its own video."""
    for suffix in SIDE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def side_of(name: str) -> str | None:
    """``"left"`` / ``"right"`` for a two-person annotation, None for a single person."""
    for suffix in SIDE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix[1:]
    return None


def unannotated(task: str, n: int) -> np.ndarray:
    """An all-unannotated array of ``n`` frames in ``task``'s encoding."""
    _check_task(task)
    if task == "expr":
        return np.full(n, -1, dtype=np.int64)
    if task == "au":
        return np.full((n, len(AU_LABELS)), -1, dtype=np.int8)
    return np.full((n, 2), np.nan, dtype=np.float32)


def _pad(task: str, values: np.ndarray, n: int) -> np.ndarray:
    padded = unannotated(task, n)
    padded[: len(values)] = values
    return padded


def _scan_task_files(root: Path, task: str, splits: Iterable[str]) -> list[tuple[str, Path]]:
    task_dir = root / TASK_DIRS[task]
    if not task_dir.is_dir():
        log.warning("no %s annotations: %s does not exist", task, task_dir)
        return []
    found = []
    for split in splits:
        split_dir = task_dir / split
        if not split_dir.is_dir():
            log.debug("no %s folder for %s", split, task_dir)
            continue
        found.extend((split, p) for p in sorted(split_dir.glob("*.txt")))
    return found


def scan_affwild(
    root: str | Path,
    splits: Iterable[str] = SPLITS,
    tasks: Iterable[str] = ("expr", "au", "va"),
) -> dict[str, PersonLabels]:
    """Read every annotation file under ``root``; one entry per annotated person.

    Tasks of one person are merged; a task array at most ``LENGTH_TOLERANCE_FRAMES``
    shorter than the person's longest one is padded with unannotated frames and a
    warning is logged (Aff-Wild2 files are occasionally a frame short). Returns
    ``{name: PersonLabels}`` sorted by name.

    Raises DataError if ``root`` holds none of the challenge folders asked for, if a
    person appears in two splits, or if a task file is more than
    ``LENGTH_TOLERANCE_FRAMES`` lines shorter than the person's longest (naming both
    files and line counts); ConfigError for an unknown task or split name.
    """
    root = Path(root)
    tasks = tuple(tasks)
    splits = tuple(splits)
    for task in tasks:
        _check_task(task)
    for split in splits:
        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}' (use {' or '.join(SPLITS)})")
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found; give the folder that holds the challenge folders")
    if not any((root / TASK_DIRS[t]).is_dir() for t in tasks):
        wanted = ", ".join(TASK_DIRS[t] for t in tasks)
        raise DataError(f"{root}: no annotation folders found (expected {wanted}); check the dataset root")

    arrays: dict[str, dict[str, np.ndarray]] = {}
    files: dict[str, dict[str, str]] = {}
    split_of: dict[str, tuple[str, Path]] = {}
    for task in tasks:
        for split, path in _scan_task_files(root, task, splits):
            name = path.stem
            if name in split_of and split_of[name][0] != split:
                other = split_of[name][1]
                raise DataError(
                    f"{path}: person '{name}' is in {split} but also in {split_of[name][0]} "
                    f"({other}); a person must belong to one split only"
                )
            split_of[name] = (split, path)
            arrays.setdefault(name, {})[task] = read_annotation_file(path, task)
            files.setdefault(name, {})[task] = str(path)
    return {name: _merge(name, split_of[name][0], arrays[name], files[name]) for name in sorted(arrays)}


def _merge(name: str, split: str, by_task: dict[str, np.ndarray], files: dict[str, str]) -> PersonLabels:
    """Merge one person's task arrays, padding those at most ``LENGTH_TOLERANCE_FRAMES``
    short of the longest; DataError for a file shorter than that."""
    longest = max(by_task, key=lambda t: len(by_task[t]))
    n_frames = len(by_task[longest])
    merged: dict[str, np.ndarray | None] = {t: None for t in TASK_DIRS}
    for task, values in by_task.items():
        shortfall = n_frames - len(values)
        if shortfall > LENGTH_TOLERANCE_FRAMES:
            raise DataError(
                f"{files[task]}: {len(values)} frame lines but {n_frames} in {files[longest]} "
                f"({shortfall} fewer, tolerance {LENGTH_TOLERANCE_FRAMES}); every task file of '{name}' "
                "needs one line per video frame, check that both files belong to this video"
            )
        if shortfall:
            log.warning(
                "%s: %d frame lines, %d in the longest task file of '%s'; padding with unannotated frames",
                files[task], len(values), n_frames, name,
            )
            values = _pad(task, values, n_frames)
        merged[task] = values
    return PersonLabels(name=name, video=video_of(name), split=split, n_frames=n_frames,
                        files=dict(files), **merged)


def test_person(name: str, n_frames: int) -> PersonLabels:
    """An unannotated test-set person: split ``TEST_SPLIT``, every task None."""
    return PersonLabels(name=name, video=video_of(name), split=TEST_SPLIT, expr=None, au=None,
                        va=None, n_frames=int(n_frames))


def read_test_list(path: str | Path, annotated: dict[str, PersonLabels]) -> list[str]:
    """The people named in the test list ``path`` (see :func:`read_video_list`), in order,
    duplicates dropped. A name that is also an annotated person of ``annotated``
    raises DataError: a person belongs to one split only.
    """
    names = list(dict.fromkeys(read_video_list(path)))
    for name in names:
        if name in annotated:
            person = annotated[name]
            where = ", ".join(sorted(set(person.files.values()))) or person.split
            raise DataError(
                f"{path}: '{name}' is listed as a test person but is annotated in {person.split} "
                f"({where}); a person belongs to one split only, remove it from the list"
            )
    return names


def check_length(labels: PersonLabels, n_decoded_frames: int, source: str) -> None:
    """Check that ``labels`` (one line per frame) fits a video of ``n_decoded_frames``.

    A difference of up to ``LENGTH_TOLERANCE_FRAMES`` either way is accepted (the
    missing frames are then simply unannotated or featureless). Raises DataError naming
    the annotation file(s), the video and both counts otherwise.
    """
    diff = labels.n_frames - int(n_decoded_frames)
    if abs(diff) <= LENGTH_TOLERANCE_FRAMES:
        if diff:
            log.info("%s: %d annotated frames vs %d decoded (within tolerance)",
                     labels.name, labels.n_frames, n_decoded_frames)
        return
    annotation = ", ".join(sorted(set(labels.files.values()))) or f"annotation of '{labels.name}'"
    relation = "more" if diff > 0 else "fewer"
    raise DataError(
        f"{annotation}: {labels.n_frames} annotated frames but {source} decodes to "
        f"{n_decoded_frames} frames ({abs(diff)} {relation}, tolerance {LENGTH_TOLERANCE_FRAMES}); "
        "check that the annotation belongs to this video"
    )
