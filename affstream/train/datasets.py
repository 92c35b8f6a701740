"""Training samples drawn from a feature bank split: frames (per-frame heads) and
windows (temporal heads).

Both read features from the bank's memory-mapped arrays only when a batch is
gathered; labels (small) are held in memory.

Label encodings inside batches (torch tensors, float32 features):

========  ===============================  =======================================
task      target                            mask (True = counts in loss / metric)
========  ===============================  =======================================
expr      (..., ) int64, 0 where masked     (..., ) bool, label not -1
au        (..., 12) float32 0/1             (..., 12) bool, that AU not -1
va        (..., 2) float32, 0 where masked  (..., ) bool, both values finite
========  ===============================  =======================================

A frame sample is a (person, row) pair where the frame is *present* (has a face) and
annotated for at least one of the requested tasks; the masks say which. A person's
*sequence* is its present frames in order (missing frames are skipped, as at
inference, where a track's sequence is the frames where it has a face); windows cut
that sequence with :func:`affstream.temporal.windows.plan_windows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..labels import ordered_tasks
from ..temporal.windows import plan_windows
from .affwild import unannotated
from .bank import FeatureBank


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Validated tuple of task names in canonical order (``labels.TASKS``)."""
    try:
        return ordered_tasks(tasks)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def label_masks(labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Annotation masks of label arrays in the bank's encoding.

    expr (n,) -> (n,) bool; au (n, 12) -> (n, 12) bool per AU; va (n, 2) -> (n,) bool.
    """
    masks = {}
    if "expr" in labels:
        masks["expr"] = labels["expr"] >= 0
    if "au" in labels:
        masks["au"] = labels["au"] >= 0
    if "va" in labels:
        masks["va"] = np.isfinite(labels["va"]).all(axis=-1)
    return masks


def frame_annotated(labels: dict[str, np.ndarray]) -> np.ndarray:
    """(n,) bool: annotated for at least one task (an AU row counts if any AU is)."""
    masks = label_masks(labels)
    rows = [m.any(axis=-1) if m.ndim == 2 else m for m in masks.values()]
    return np.logical_or.reduce(rows)


def person_labels(bank: FeatureBank, name: str, tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """Label arrays of ``name`` for ``tasks``; a task the person lacks is all unannotated."""
    stored = bank.labels(name)
    n = bank.people[name]["n_frames"]
    return {t: (getattr(stored, t) if getattr(stored, t) is not None else unannotated(t, n)) for t in tasks}


def to_batch(labels: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Label arrays (any leading shape) -> targets and masks as in the module table.

    Keys: ``expr``/``expr_mask``, ``au``/``au_mask``, ``va``/``va_mask`` for the tasks present.
    """
    masks = label_masks(labels)
    out: dict[str, torch.Tensor] = {}
    if "expr" in labels:
        out["expr"] = torch.from_numpy(np.where(masks["expr"], labels["expr"], 0).astype(np.int64))
    if "au" in labels:
        out["au"] = torch.from_numpy(np.where(masks["au"], labels["au"], 0).astype(np.float32))
    if "va" in labels:
        va = labels["va"].astype(np.float32)
        out["va"] = torch.from_numpy(np.where(masks["va"][..., None], va, 0.0).astype(np.float32))
    for task, mask in masks.items():
        out[f"{task}_mask"] = torch.from_numpy(np.ascontiguousarray(mask))
    return {k: v.to(device) for k, v in out.items()}


class MemmapCache:
    """``cache(name)`` -> the bank's memory-mapped (n_frames, D) features of ``name``,
    opened once per person."""

    def __init__(self, bank: FeatureBank) -> None:
        self.bank = bank
        self._maps: dict[str, np.ndarray] = {}

    def __call__(self, name: str) -> np.ndarray:
        if name not in self._maps:
            self._maps[name] = self.bank.features(name)
        return self._maps[name]


# --------------------------------------------------------------------------- frames


@dataclass
class FrameSet:
    """Every present, annotated frame of some people of a bank.

    person: (N,) int32 index into ``names``; row: (N,) int64 0-based frame row
    (frame number - 1); labels: task -> (N,) / (N, 12) / (N, 2) arrays in bank encoding.
    """

    bank: FeatureBank
    names: list[str]
    person: np.ndarray
    row: np.ndarray
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def __post_init__(self) -> None:
        self._maps = MemmapCache(self.bank)

    def features(self, index: np.ndarray) -> np.ndarray:
        """(len(index), D) float32 features of samples ``index``, read from the memory maps."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.bank.feature_dim), dtype=np.float32)
        people = self.person[index]
        for p in np.unique(people):
            sel = np.flatnonzero(people == p)
            rows = self.row[index[sel]]
            order = np.argsort(rows, kind="stable")
            mapped = self._maps(self.names[p])
            out[sel[order]] = mapped[rows[order]]
        return out

    def batch(self, index: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Features (B, D) float32 under ``"features"`` plus targets and masks (see module doc)."""
        out = to_batch({t: v[index] for t, v in self.labels.items()}, device)
        out["features"] = torch.from_numpy(self.features(index)).to(device)
        return out


def frame_set(bank: FeatureBank, names: Sequence[str], tasks: Sequence[str]) -> FrameSet:
    """All (person, row) of ``names`` that are present and annotated for >= 1 of ``tasks``."""
    tasks = check_tasks(tasks)
    persons, rows, labels = [], [], {t: [] for t in tasks}
    for p, name in enumerate(names):
        person = person_labels(bank, name, tasks)
        keep = np.flatnonzero(bank.present(name) & frame_annotated(person))
        persons.append(np.full(len(keep), p, dtype=np.int32))
        rows.append(keep.astype(np.int64))
        for t in tasks:
            labels[t].append(person[t][keep])
    if not names:
        raise DataError(f"{bank.path}: no people to draw frames from")
    return FrameSet(bank, list(names), np.concatenate(persons), np.concatenate(rows),
                    {t: np.concatenate(v) for t, v in labels.items()})


# --------------------------------------------------------------------------- windows


@dataclass
class PersonSequence:
    """One person's present frames in order: rows (m,) int64 0-based frame rows, and
    labels per task restricted to those rows."""

    name: str
    rows: np.ndarray
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def person_sequence(bank: FeatureBank, name: str, tasks: Sequence[str]) -> PersonSequence:
    rows = np.flatnonzero(bank.present(name)).astype(np.int64)
    labels = person_labels(bank, name, tasks)
    return PersonSequence(name, rows, {t: v[rows] for t, v in labels.items()})


@dataclass
class WindowSet:
    """Training windows over people's sequences.

    items: (K, 3) int64 rows of (sequence index, start, valid_length) from
    ``plan_windows(len(sequence), length, stride)``; only windows holding at least one
    annotated frame are kept.
    """

    bank: FeatureBank
    sequences: list[PersonSequence]
    items: np.ndarray
    length: int

    def __post_init__(self) -> None:
        self._maps = MemmapCache(self.bank)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def batch(self, index: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Windows ``index`` padded to ``length``: ``features`` (B, w, D) float32 (zeros on
        padding), ``mask`` (B, w) bool (True = real frame), targets and per-task label
        masks (B, w, ...) that are False on padding and on unannotated frames."""
        index = np.asarray(index, dtype=np.int64)
        b, w = len(index), self.length
        feats = np.zeros((b, w, self.bank.feature_dim), dtype=np.float32)
        mask = np.zeros((b, w), dtype=bool)
        tasks = self.sequences[0].labels.keys() if self.sequences else ()
        labels = {t: np.stack([unannotated(t, w)] * b) for t in tasks}
        for i, k in enumerate(index):
            seq_idx, start, valid = (int(v) for v in self.items[k])
            seq = self.sequences[seq_idx]
            feats[i, :valid] = self._maps(seq.name)[seq.rows[start:start + valid]]
            mask[i, :valid] = True
            for t in tasks:
                labels[t][i, :valid] = seq.labels[t][start:start + valid]
        out = to_batch(labels, device)
        out["features"] = torch.from_numpy(feats).to(device)
        out["mask"] = torch.from_numpy(mask).to(device)
        return out


def window_set(bank: FeatureBank, names: Sequence[str], tasks: Sequence[str],
               length: int, stride: int) -> WindowSet:
    """Windows of every person in ``names`` (see :class:`WindowSet`)."""
    tasks = check_tasks(tasks)
    sequences, items = [], []
    for name in names:
        seq = person_sequence(bank, name, tasks)
        annotated = frame_annotated(seq.labels)
        idx = len(sequences)
        sequences.append(seq)
        for start, valid in plan_windows(len(seq), length, stride):
            if annotated[start:start + valid].any():
                items.append((idx, start, valid))
    return WindowSet(bank, sequences, np.asarray(items, dtype=np.int64).reshape(-1, 3), int(length))


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int, *, min_size: int = 1) -> list[np.ndarray]:
    """Sample indices 0..n-1 in a permutation fixed by (seed, epoch), cut into batches.

    A trailing batch smaller than ``min_size`` is dropped (BatchNorm needs >= 2 rows).
    """
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) >= min_size]
