"""The feature bank: CLIP features of an Aff-Wild2-format dataset, stored once, read
with memory mapping while heads are trained.

Format (version 1)::

    FEATURES/index.json
    FEATURES/people/NAME.npy           (n_frames, D) float16|float32 features
    FEATURES/people/NAME.present.npy   (n_frames,) bool
    FEATURES/people/NAME.labels.npz    expr / au / va arrays (absent task = absent key)

``index.json``::

    {"format": "affstream-feature-bank", "version": 1,
     "backbone": "ViT-L-14:openai",       # spec of the CLIP image encoder
     "backbone_sha256": "..." | null,     # checksum of its weights (null: unknown/random)
     "feature_dim": 768, "dtype": "float16", "source": "crops" | "videos",
     "people": {NAME: {"video": ..., "split": "Train_Set" | "Validation_Set" | "Test_Set",
                       "n_frames": N, "n_missing": M, "file": "people/NAME.npy",
                       "n_frames_source": "video" | "crops"}}}   # test people only

A ``Test_Set`` person (from a test list) has no labels (every task absent). Its
``n_frames`` is the decoded frame count of its video (``n_frames_source`` "video"), or,
without a video, its largest crop number ("crops": trailing faceless frames unknown).

Row ``k - 1`` of a person's features is frame ``k`` (1-based), the same row as line
``k + 1`` of its annotation files. Frames without a face crop keep their row: the row
is all zeros and ``present`` is False there, so labels are never shifted. Features are
L2-normalised CLIP image embeddings (as stored; float16 costs < 1e-3 per value).
The labels use the encodings of :mod:`affstream.train.affwild` (expr -1, au -1, va NaN
for unannotated frames).

Writing is resumable: each person's three files are written under temporary names and
renamed once all three are complete, then ``index.json`` is replaced atomically. A person is in the bank only once
the index lists it, so an interrupted run redoes at most the person it was writing.
One writer at a time per bank. An output that cannot be written is a one-line
:class:`~affstream.errors.OutputError` (checked before a bank is opened for writing,
see :func:`check_bank_output`; a later failed write leaves the bank as it was).

``index.json`` is untrusted input: it is validated whole before use (every field's
type and range, each person's name and ``file``), and a problem is a one-line
DataError naming the file and the dotted field, e.g. ``people.vid01.n_frames``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, first_line
from ..files import PARTIAL_TAG, atomic_path, check_output_file, check_output_folder, make_folder, output_error
from ..labels import TASKS
from .affwild import SPLITS, TEST_SPLIT, PersonLabels, unannotated

log = logging.getLogger("affstream")

BANK_FORMAT = "affstream-feature-bank"
BANK_VERSION = 1
INDEX_NAME = "index.json"
PEOPLE_DIR = "people"
DTYPES = ("float16", "float32")
SOURCES = ("crops", "videos")
TMP_MARK = ".tmp-"
_ENTRY_KEYS = ("video", "split", "n_frames", "n_missing", "file")
KNOWN_SPLITS: tuple[str, ...] = (*SPLITS, TEST_SPLIT)
N_FRAMES_SOURCES = ("video", "crops")
MAX_FEATURE_DIM = 65536
MAX_NAME_BYTES = 200  # file names of its temporary files stay within 255 bytes
_SHA256 = re.compile(r"[0-9a-f]{64}")


def person_files(name: str) -> tuple[str, str, str]:
    """Relative paths of one person's features, present flags and labels."""
    return (f"{PEOPLE_DIR}/{name}.npy", f"{PEOPLE_DIR}/{name}.present.npy",
            f"{PEOPLE_DIR}/{name}.labels.npz")


def _name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a person of a bank (it names files under ``people/``), or None."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if "/" in name or "\\" in name or "\0" in name:
        return "contains a path separator or a NUL character"
    if name.startswith("."):
        return "starts with a dot"
    if TMP_MARK in name:
        return f"contains '{TMP_MARK}'"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def _check_name(name: str) -> None:
    if _name_problem(name) is not None:
        raise DataError(f"person name '{name}' cannot be stored in a feature bank; rename its annotation files")


# --------------------------------------------------------------------------- index


def check_bank_output(path: str | Path) -> None:
    """OutputError (one line) unless a bank can be written at ``path``: the folder and its
    ``people/`` folder exist as writable folders or can be created, ``index.json`` is
    not a folder. Creates nothing (see :func:`affstream.files.check_output_folder`)."""
    path = Path(path)
    check_output_file(path / INDEX_NAME)
    check_output_folder(path / PEOPLE_DIR)


def _read_index(path: Path) -> dict[str, Any]:
    index_path = path / INDEX_NAME
    if not index_path.is_file():
        raise DataError(f"{path}: not a feature bank ({INDEX_NAME} missing); build one with 'affstream features'")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{index_path}: unreadable feature bank index ({first_line(exc, 200)}); rebuild the bank") from None
    _validate_index(index_path, index)
    return index


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _shown(value: Any) -> str:
    """``'12' (a string)``: a value quoted from the index, short, with its JSON type."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({_json_type(value)})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_index(index_path: Path, index: Any) -> None:
    """DataError (one line, naming the file and the dotted field) unless ``index`` is a
    well-formed version-1 index: every field of the module docstring present with its
    type and range, every person's name storable and its ``file`` its own
    ``people/NAME.npy`` (never a path elsewhere)."""

    def bad(field: str, problem: str) -> DataError:
        return DataError(f"{index_path}: {field} {problem}; rebuild the bank with 'affstream features'")

    if not isinstance(index, dict) or index.get("format") != BANK_FORMAT:
        raise DataError(f"{index_path}: not an {BANK_FORMAT} index; give the folder of a bank built "
                        "with 'affstream features'")
    version = index.get("version")
    if not _is_int(version) or version != BANK_VERSION:
        raise bad("version", f"{_shown(version)} is not supported (expected {BANK_VERSION})")
    if not isinstance(index.get("backbone"), str) or not index["backbone"]:
        raise bad("backbone", f"must be a non-empty string, got {_shown(index.get('backbone'))}")
    sha = index.get("backbone_sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise bad("backbone_sha256", f"must be null or a sha256 hex digest, got {_shown(sha)}")
    dim = index.get("feature_dim")
    if not _is_int(dim) or not 1 <= dim <= MAX_FEATURE_DIM:
        raise bad("feature_dim", f"must be an integer from 1 to {MAX_FEATURE_DIM}, got {_shown(dim)}")
    for field, allowed in (("dtype", DTYPES), ("source", SOURCES)):
        value = index.get(field)
        if not isinstance(value, str) or value not in allowed:
            raise bad(field, f"must be one of {', '.join(allowed)}, got {_shown(value)}")
    people = index.get("people")
    if not isinstance(people, dict):
        raise bad("people", f"must be an object of people, got {_shown(people)}")
    for name, entry in people.items():
        _validate_entry(bad, name, entry)


def _validate_entry(bad, name: str, entry: Any) -> None:
    where = f"people.{name}"
    problem = _name_problem(name)
    if problem is not None:
        raise bad(where, f"is not a person name a bank can hold (it {problem})")
    if not isinstance(entry, dict):
        raise bad(where, f"must be an object, got {_shown(entry)}")
    for key in _ENTRY_KEYS:
        if key not in entry:
            raise bad(f"{where}.{key}", "is missing")
    if not isinstance(entry["video"], str) or not entry["video"]:
        raise bad(f"{where}.video", f"must be a non-empty string, got {_shown(entry['video'])}")
    if not isinstance(entry["split"], str) or entry["split"] not in KNOWN_SPLITS:
        raise bad(f"{where}.split", f"must be one of {', '.join(KNOWN_SPLITS)}, got {_shown(entry['split'])}")
    n_frames = entry["n_frames"]
    if not _is_int(n_frames) or n_frames < 0:
        raise bad(f"{where}.n_frames", f"must be an integer >= 0, got {_shown(n_frames)}")
    n_missing = entry["n_missing"]
    if not _is_int(n_missing) or not 0 <= n_missing <= n_frames:
        raise bad(f"{where}.n_missing", f"must be an integer from 0 to n_frames ({n_frames}), got {_shown(n_missing)}")
    expected = person_files(name)[0]
    if entry["file"] != expected:
        raise bad(f"{where}.file", f"must be '{expected}', got {_shown(entry['file'])}")
    source = entry.get("n_frames_source")
    if source is not None and source not in N_FRAMES_SOURCES:
        raise bad(f"{where}.n_frames_source", f"must be one of {', '.join(N_FRAMES_SOURCES)}, got {_shown(source)}")


def _write_atomic(*files: tuple[Path, Any]) -> None:
    """For each ``(target, write)``, call ``write(binary_file)`` on a temporary sibling of
    ``target``; once all are written, publish them under their names.

    OutputError (one line, naming the target) if one cannot be written; then none is
    published and every target is left as it was.
    """
    with contextlib.ExitStack() as stack:
        for target, write in files:
            tmp = stack.enter_context(atomic_path(target))
            try:
                with open(tmp, "wb") as handle:
                    write(handle)
            except OSError as exc:
                raise output_error(target, exc) from None


def _write_index(path: Path, index: dict[str, Any]) -> None:
    data = json.dumps(index, indent=1, sort_keys=True).encode("utf-8")
    _write_atomic((path / INDEX_NAME, lambda f: f.write(data)))


# --------------------------------------------------------------------------- reading


class FeatureBank:
    """A feature bank opened for reading (see the module docstring for the format).

    Attributes: path, backbone (spec string), backbone_sha256 (str or None),
    feature_dim (D), dtype ("float16"/"float32"), source ("crops"/"videos"),
    people (name -> index entry dict).
    """

    def __init__(self, path: Path, index: dict[str, Any]):
        self.path = path
        self.backbone: str = index["backbone"]
        self.backbone_sha256: str | None = index.get("backbone_sha256")
        self.feature_dim: int = index["feature_dim"]
        self.dtype: str = index["dtype"]
        self.source: str = index["source"]
        self.people: dict[str, dict[str, Any]] = dict(sorted(index["people"].items()))
        self._features: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | Path) -> FeatureBank:
        """Open the bank at ``path``. Raises DataError if the index is missing or
        malformed or a listed person's files are missing."""
        path = Path(path)
        index = _read_index(path)
        for name in index["people"]:
            for rel in person_files(name):
                if not (path / rel).is_file():
                    raise DataError(
                        f"{path / rel}: file of '{name}' missing from the feature bank; "
                        "re-run 'affstream features' on the same output to rebuild it"
                    )
        return cls(path, index)

    def __len__(self) -> int:
        return len(self.people)

    def __contains__(self, name: object) -> bool:
        return name in self.people

    def _entry(self, name: str) -> dict[str, Any]:
        try:
            return self.people[name]
        except KeyError:
            raise DataError(f"{self.path}: no person '{name}' in the feature bank") from None

    def features(self, name: str) -> np.ndarray:
        """(n_frames, D) float16/float32 features of ``name``, memory-mapped read-only.

        Row k-1 = frame k; rows where :meth:`present` is False are zeros. The map is
        opened once per person and reused by later calls.
        """
        if name in self._features:
            return self._features[name]
        entry = self._entry(name)
        file = self.path / entry["file"]
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{file}: unreadable feature file ({exc}); rebuild '{name}'") from None
        if array.shape != (entry["n_frames"], self.feature_dim) or array.dtype != np.dtype(self.dtype):
            raise DataError(
                f"{file}: shape {array.shape} {array.dtype} does not match the index "
                f"({entry['n_frames']}, {self.feature_dim}) {self.dtype}; rebuild '{name}'"
            )
        self._features[name] = array
        return array

    def present(self, name: str) -> np.ndarray:
        """(n_frames,) bool: True where the frame has a face crop and features."""
        entry = self._entry(name)
        file = self.path / person_files(name)[1]
        try:
            array = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{file}: unreadable present flags ({exc}); rebuild '{name}'") from None
        if array.shape != (entry["n_frames"],) or array.dtype != np.bool_:
            raise DataError(f"{file}: present flags do not match the index; rebuild '{name}'")
        return array

    def labels(self, name: str) -> PersonLabels:
        """The labels stored with ``name`` (absent tasks are None)."""
        entry = self._entry(name)
        file = self.path / person_files(name)[2]
        try:
            with np.load(file, allow_pickle=False) as npz:
                arrays = {t: (npz[t] if t in npz.files else None) for t in TASKS}
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{file}: unreadable labels ({exc}); rebuild '{name}'") from None
        for task, values in arrays.items():
            if values is not None and len(values) != entry["n_frames"]:
                raise DataError(f"{file}: {task} labels have {len(values)} rows, index says "
                                f"{entry['n_frames']}; rebuild '{name}'")
        return PersonLabels(name=name, video=entry["video"], split=entry["split"],
                            n_frames=entry["n_frames"], **arrays)

    def split(self, split_name: str) -> list[str]:
        """Sorted names of the people in ``split_name`` (e.g. "Train_Set")."""
        return [name for name, entry in self.people.items() if entry["split"] == split_name]


# --------------------------------------------------------------------------- writing


class BankWriter:
    """Creates a feature bank or adds people to an existing one (resumable).

    backbone: spec string of the encoder; backbone_sha256: checksum of its weights or
    None; feature_dim: D; dtype: "float16" (default, half the disk) or "float32";
    source: "crops" or "videos". Opening an existing bank whose backbone, checksum,
    feature_dim, dtype or source differs raises DataError.
    """

    def __init__(self, path: str | Path, *, backbone: str, backbone_sha256: str | None,
                 feature_dim: int, dtype: str = "float16", source: str):
        if dtype not in DTYPES:
            raise DataError(f"feature bank dtype '{dtype}' is not supported (use {' or '.join(DTYPES)})")
        if source not in SOURCES:
            raise DataError(f"feature source '{source}' is not supported (use {' or '.join(SOURCES)})")
        self.path = Path(path)
        wanted = {"format": BANK_FORMAT, "version": BANK_VERSION, "backbone": str(backbone),
                  "backbone_sha256": backbone_sha256, "feature_dim": int(feature_dim),
                  "dtype": dtype, "source": source}
        check_bank_output(self.path)
        if (self.path / INDEX_NAME).exists():
            self._index = _read_index(self.path)
            self._check_compatible(wanted)
            make_folder(self.path / PEOPLE_DIR)
        else:
            self._index = {**wanted, "people": {}}
            make_folder(self.path / PEOPLE_DIR)
            _write_index(self.path, self._index)
        self._remove_leftovers()

    @property
    def feature_dim(self) -> int:
        return self._index["feature_dim"]

    def _check_compatible(self, wanted: dict[str, Any]) -> None:
        have = self._index
        if have["backbone"] != wanted["backbone"]:
            raise DataError(
                f"{self.path}: bank was built with backbone '{have['backbone']}', not "
                f"'{wanted['backbone']}'; use the same --backbone or a new output folder"
            )
        for key in ("backbone_sha256", "feature_dim", "dtype", "source"):
            if have.get(key) != wanted[key]:
                raise DataError(
                    f"{self.path}: bank has {key} {have.get(key)!r}, this run {wanted[key]!r}; "
                    "use the same settings or a new output folder"
                )

    def _remove_leftovers(self) -> None:
        """Delete temporary files of an interrupted run (that person will be redone)."""
        people = self.path / PEOPLE_DIR
        for tmp in [*people.glob(f"*{TMP_MARK}*"), *people.glob(f".*{PARTIAL_TAG}*")]:
            log.info("removing %s left by an interrupted run", tmp)
            try:
                tmp.unlink(missing_ok=True)
            except OSError as exc:  # harmless: never under a final name, the person is redone
                log.warning("%s: could not remove this leftover of an interrupted run (%s)", tmp, exc.strerror or exc)

    def has(self, name: str) -> bool:
        """True if ``name`` is complete in the bank (listed in the index, files present)."""
        if name not in self._index["people"]:
            return False
        return all((self.path / rel).is_file() for rel in person_files(name))

    def add(self, labels: PersonLabels, features: np.ndarray, present: np.ndarray,
            extra: dict[str, Any] | None = None) -> None:
        """Store one person: features (n_frames, D) float, present (n_frames,) bool.

        extra: JSON-ready fields added to the person's index entry (e.g.
        ``{"n_frames_source": "crops"}``); they cannot replace the standard keys.

        Rows where ``present`` is False are stored as zeros whatever their values.
        Replaces the person if already stored. Raises DataError if shapes disagree
        with ``labels.n_frames`` / the bank's feature_dim, or features are not finite;
        OutputError (one line) if the files cannot be written (then none of them is
        published and the index is unchanged).
        """
        name = labels.name
        _check_name(name)
        extra = dict(extra or {})
        if set(extra) & set(_ENTRY_KEYS):
            raise DataError(f"extra index fields of '{name}' may not replace {', '.join(_ENTRY_KEYS)}")
        n, dim = labels.n_frames, self.feature_dim
        features = np.asarray(features)
        present = np.asarray(present)
        if features.shape != (n, dim):
            raise DataError(f"features of '{name}' have shape {features.shape}, expected ({n}, {dim})")
        if present.shape != (n,):
            raise DataError(f"present flags of '{name}' have shape {present.shape}, expected ({n},)")
        stored = np.zeros((n, dim), dtype=self._index["dtype"])
        stored[present.astype(bool)] = features[present.astype(bool)]
        if not np.isfinite(stored).all():
            raise DataError(f"features of '{name}' contain NaN or infinity; check the backbone")
        label_arrays = self._label_arrays(labels)

        feat_rel, present_rel, labels_rel = person_files(name)
        _write_atomic((self.path / feat_rel, lambda f: np.save(f, stored, allow_pickle=False)),
                      (self.path / present_rel, lambda f: np.save(f, present.astype(np.bool_), allow_pickle=False)),
                      (self.path / labels_rel, lambda f: np.savez(f, **label_arrays)))

        self._index["people"][name] = {
            "video": labels.video, "split": labels.split, "n_frames": int(n),
            "n_missing": int(n - int(present.astype(bool).sum())), "file": feat_rel, **extra,
        }
        self._index["people"] = dict(sorted(self._index["people"].items()))
        _write_index(self.path, self._index)

    @staticmethod
    def _label_arrays(labels: PersonLabels) -> dict[str, np.ndarray]:
        arrays = {}
        for task in TASKS:
            values = getattr(labels, task)
            if values is None:
                continue
            reference = unannotated(task, labels.n_frames)
            values = np.asarray(values)
            if values.shape != reference.shape:
                raise DataError(f"{task} labels of '{labels.name}' have shape {values.shape}, "
                                f"expected {reference.shape}")
            arrays[task] = values.astype(reference.dtype)
        return arrays

    def split_counts(self) -> dict[str, int]:
        """People stored per split (for summaries)."""
        counts = {s: 0 for s in SPLITS}
        for entry in self._index["people"].values():
            counts[entry["split"]] = counts.get(entry["split"], 0) + 1
        return counts
