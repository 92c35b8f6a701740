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
that sequence with :func:`affstream.temporal.windows.plan_windows` (the inference
rule), or, for training, with :func:`recut_windows`: a random phase per pass (and
optionally random lengths up to the window length), so that a video gives other
windows in every pass. :class:`BatchStream` turns a sample set into the endless,
seeded sequence of batches a training run consumes, pass after pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..labels import ordered_tasks
from ..temporal.windows import check_window_params, plan_windows
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

    items: (K, 3) int64 rows of (sequence index, start, valid_length), from
    ``plan_windows(len(sequence), length, stride)`` or :func:`recut_windows`; only
    windows holding at least one annotated frame are kept. length: the window length w
    (no item is longer). pad_longest: pad a batch to its longest window instead of w
    (training batches of re-cut windows, which may be shorter than w).
    """

    bank: FeatureBank
    sequences: list[PersonSequence]
    items: np.ndarray
    length: int
    pad_longest: bool = False

    def __post_init__(self) -> None:
        self._maps = MemmapCache(self.bank)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def batch(self, index: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Windows ``index`` padded to ``length`` (or to the longest of them with
        ``pad_longest``): ``features`` (B, T, D) float32 (zeros on padding), ``mask``
        (B, T) bool (True = real frame), targets and per-task label masks (B, T, ...)
        that are False on padding and on unannotated frames."""
        index = np.asarray(index, dtype=np.int64)
        b = len(index)
        w = int(self.items[index, 2].max()) if (self.pad_longest and b) else self.length
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


def _annotated_windows(sequences: Sequence[PersonSequence], plans: Sequence[list[tuple[int, int]]]) -> np.ndarray:
    """(K, 3) int64 items (sequence, start, valid) of the planned windows that hold an annotated frame."""
    items = []
    for idx, (seq, plan) in enumerate(zip(sequences, plans, strict=True)):
        annotated = frame_annotated(seq.labels)
        items.extend((idx, start, valid) for start, valid in plan if annotated[start:start + valid].any())
    return np.asarray(items, dtype=np.int64).reshape(-1, 3)


def window_set(bank: FeatureBank, names: Sequence[str], tasks: Sequence[str],
               length: int, stride: int) -> WindowSet:
    """Windows of every person in ``names`` by the inference rule (``plan_windows``;
    see :class:`WindowSet`)."""
    tasks = check_tasks(tasks)
    sequences = [person_sequence(bank, name, tasks) for name in names]
    plans = [plan_windows(len(seq), length, stride) for seq in sequences]
    return WindowSet(bank, sequences, _annotated_windows(sequences, plans), int(length))


def recut_windows(n: int, length: int, stride: int, rng: np.random.Generator,
                  min_length: int | None = None) -> list[tuple[int, int]]:
    """Training windows over a sequence of ``n`` frames, cut at a random phase:
    ``(start, valid_length)`` pairs, starts increasing, ``valid_length <= length``.

    A phase ``p`` is drawn uniformly from ``[0, stride)``; window ``k`` starts at
    ``p - stride + k * stride`` (``k = 0`` only when ``p > 0``) and is clipped to the
    sequence, so the first window of a pass may be shorter than ``length`` and
    consecutive windows overlap by ``length - stride`` frames as at inference. With
    ``min_length`` (1 <= min_length <= length) each window's length is drawn uniformly
    from ``[min_length, length]`` and the next start advances by that length times
    ``stride / length``. Clipped windows shorter than half the shortest window length
    (or than half the sequence) are dropped; every other frame is covered. ``n == 0``
    gives no window.
    """
    check_window_params(length, stride)
    if n <= 0:
        return []
    shortest = length if min_length is None else int(min_length)
    if not 1 <= shortest <= length:
        raise ConfigError(f"shortest training window {min_length} must lie in [1, window length {length}]")
    keep = max(1, min(n, shortest) // 2)
    phase = int(rng.integers(0, stride))
    start = phase - stride if phase > 0 else 0
    plan = []
    while start < n:
        size = length if shortest == length else int(rng.integers(shortest, length + 1))
        first, stop = max(start, 0), min(start + size, n)
        if stop - first >= keep:
            plan.append((first, stop - first))
        start += max(1, round(size * stride / length))
    return plan


def recut_window_set(base: WindowSet, stride: int, seed: int, pass_no: int,
                     min_length: int | None = None) -> WindowSet:
    """The windows of one training pass over ``base``'s sequences: :func:`recut_windows`
    with a generator seeded by ``(seed, pass_no)`` (so a pass is reproducible, also
    after a resume). Batches pad to their longest window."""
    rng = np.random.default_rng([int(seed), int(pass_no), 0x57])
    plans = [recut_windows(len(seq), base.length, stride, rng, min_length) for seq in base.sequences]
    return WindowSet(base.bank, base.sequences, _annotated_windows(base.sequences, plans), base.length,
                     pad_longest=True)


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int, *, min_size: int = 1) -> list[np.ndarray]:
    """Sample indices 0..n-1 in a permutation fixed by (seed, epoch), cut into batches.

    A trailing batch smaller than ``min_size`` is dropped (BatchNorm needs >= 2 rows).
    """
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) >= min_size]


SampleSet = FrameSet | WindowSet


class BatchStream:
    """The endless sequence of training batches of a run: pass 1, pass 2, ...

    Pass ``p`` (1-based) draws its samples with ``view(p)`` (the fixed sample set, or
    windows re-cut for that pass) and shuffles them with ``shuffled_batches(...,
    seed, p)``; global step ``g`` (0-based) takes the ``g``-th batch of the
    concatenated passes. Everything is a pure function of (seed, step), so a resumed
    run continues with exactly the batches an uninterrupted one would have used.
    When every pass has the same number of batches ``b`` and an epoch is ``b`` steps,
    epoch ``e`` is exactly pass ``e``.
    """

    def __init__(self, view, batch_size: int, seed: int, min_size: int = 1) -> None:
        self._view = view
        self.batch_size, self.seed, self.min_size = int(batch_size), int(seed), int(min_size)
        self._counts: list[int] = []  # batches in pass 1, 2, ...
        self._current: tuple[int, SampleSet, list[np.ndarray]] | None = None

    def _pass(self, pass_no: int) -> tuple[SampleSet, list[np.ndarray]]:
        if self._current is None or self._current[0] != pass_no:
            data = self._view(pass_no)
            batches = shuffled_batches(len(data), self.batch_size, self.seed, pass_no, min_size=self.min_size)
            self._current = (pass_no, data, batches)
        return self._current[1], self._current[2]

    def pass_batches(self, pass_no: int) -> int:
        """Number of batches in pass ``pass_no`` (1-based)."""
        while len(self._counts) < pass_no:
            self._counts.append(len(self._pass(len(self._counts) + 1)[1]))
        return self._counts[pass_no - 1]

    def samples(self, pass_no: int = 1) -> int:
        """Number of samples (frames or windows) in pass ``pass_no``."""
        return len(self._pass(pass_no)[0])

    def locate(self, step: int) -> tuple[int, int]:
        """(pass, batch index within it) of global step ``step`` (0-based).
        DataError if a pass has no batch (nothing to train on)."""
        pass_no, offset = 1, int(step)
        while True:
            count = self.pass_batches(pass_no)
            if count == 0:
                raise DataError(f"training pass {pass_no} has no batch: too few annotated samples")
            if offset < count:
                return pass_no, offset
            offset -= count
            pass_no += 1

    def take(self, first_step: int, count: int):
        """Yield ``(data, index)`` for global steps ``first_step .. first_step + count - 1``:
        the sample set of the step's pass and the indices of its batch."""
        pass_no, offset = self.locate(first_step)
        for _ in range(count):
            data, batches = self._pass(pass_no)
            if offset >= len(batches):
                pass_no, offset = pass_no + 1, 0
                data, batches = self._pass(pass_no)
                if not batches:
                    raise DataError(f"training pass {pass_no} has no batch: too few annotated samples")
            yield data, batches[offset]
            offset += 1
