"""Running a head over a feature bank, and scoring it with the ABAW metrics.

Predictions are made per person on its *present* frames (those with a face):

- per-frame heads score each present frame alone;
- temporal heads see the person's sequence of present frames (missing frames
  skipped, as a track's sequence at inference), cut with ``plan_windows`` by the
  card's window length/stride, batched, and merged with ``stitch_windows`` -- the
  same rule the annotate pipeline applies through its streaming buffer.

Scoring follows the ABAW protocol: every annotated frame of the split is scored,
pooled over people. An annotated frame without a face takes the prediction of the
nearest frame with one (ties: the earlier), exactly as an ABAW submission written by
:mod:`affstream.train.export` does; their number is reported as ``n_filled``. A
person without any face gets neutral scores (expression logits 0, every AU absent,
VA 0). A frame counts for AU only when all 12 AUs are annotated
(:func:`affstream.train.metrics.au_valid`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..files import atomic_write_text, check_output_file
from ..heads.base import AffectHead, HeadCard, checkpoint_paths
from ..labels import AU_LABELS, EXPR_LABELS, TASK_WIDTHS
from ..temporal.windows import gather_windows, plan_windows, stitch_windows
from . import metrics
from .bank import FeatureBank
from .datasets import MemmapCache, person_labels

log = logging.getLogger("affstream")

TASK_METRIC = {"expr": "expr_f1", "au": "au_f1", "va": "va_ccc"}
"""The ABAW metric of each task (higher is better)."""

FRAME_BATCH = 4096
WINDOW_BATCH = 16


@dataclass
class PersonOutputs:
    """Raw head scores of one person's present frames.

    rows:   (m,) int64 0-based frame rows (frame number - 1) of the present frames.
    scores: task -> (m, C) float64 raw scores: va (m, 2) values in [-1, 1],
            expr (m, 8) logits, au (m, 12) logits.
    """

    name: str
    n_frames: int
    rows: np.ndarray
    scores: dict[str, np.ndarray]


def _outputs_dict(out, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    by_task = {"va": out.va, "expr": out.expr_logits, "au": out.au_logits}
    return {t: by_task[t] for t in tasks}


@torch.no_grad()
def _frame_scores(head: AffectHead, feats: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    tasks = head.card.tasks
    chunks: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    for i in range(0, len(feats), FRAME_BATCH):
        x = torch.from_numpy(np.ascontiguousarray(feats[i:i + FRAME_BATCH], dtype=np.float32)).to(device)
        for t, v in _outputs_dict(head(x), tasks).items():
            chunks[t].append(v.float().cpu().numpy().astype(np.float64))
    return {t: np.concatenate(v) for t, v in chunks.items()}


@torch.no_grad()
def _window_scores(head: AffectHead, feats: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    card = head.card
    n = len(feats)
    plan = plan_windows(n, card.window_length, card.window_stride)
    windows, mask = gather_windows(np.ascontiguousarray(feats, dtype=np.float32), plan, card.window_length)
    chunks: dict[str, list[np.ndarray]] = {t: [] for t in card.tasks}
    for i in range(0, len(plan), WINDOW_BATCH):
        x = torch.from_numpy(windows[i:i + WINDOW_BATCH]).to(device)
        m = torch.from_numpy(mask[i:i + WINDOW_BATCH]).to(device)
        for t, v in _outputs_dict(head(x, m), card.tasks).items():
            chunks[t].append(v.float().cpu().numpy())
    return {t: stitch_windows(np.concatenate(v), plan, n) for t, v in chunks.items()}


def predict_person(head: AffectHead, bank: FeatureBank, name: str, device: torch.device | str = "cpu",
                   maps: MemmapCache | None = None) -> PersonOutputs:
    """Raw scores of ``head`` (in eval mode) on the present frames of ``name``."""
    device = torch.device(device)
    was_training = head.training
    head.eval()
    try:
        rows = np.flatnonzero(bank.present(name)).astype(np.int64)
        mapped = maps(name) if maps is not None else bank.features(name)
        feats = np.asarray(mapped[rows], dtype=np.float32)
        tasks = head.card.tasks
        if len(rows) == 0:
            scores = {t: np.zeros((0, TASK_WIDTHS[t]), dtype=np.float64) for t in tasks}
        elif head.card.windowed:
            scores = _window_scores(head, feats, device)
        else:
            scores = _frame_scores(head, feats, device)
    finally:
        head.train(was_training)
    return PersonOutputs(name, int(bank.people[name]["n_frames"]), rows, scores)


def predict_people(head: AffectHead, bank: FeatureBank, names: Sequence[str],
                   device: torch.device | str = "cpu") -> list[PersonOutputs]:
    maps = MemmapCache(bank)
    return [predict_person(head, bank, name, device, maps) for name in names]


# --------------------------------------------------------------------------- scoring


@dataclass
class Pooled:
    """Annotated frames of a split pooled over people, per task.

    truth: task -> expr (N,) int64 / au (N, 12) int8 / va (N, 2) float; scores: raw
    scores for the same frames; filled: task -> annotated frames without a face, whose
    scores come from the nearest frame with one.
    """

    truth: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    filled: dict[str, int]


FACELESS_AU_LOGIT = -20.0
"""AU score of a person without any face: absent (as the export writes 0)."""


def nearest_present(present: np.ndarray) -> np.ndarray | None:
    """For each frame row, the row of the nearest present frame (ties: the earlier).

    present: (n,) bool. Returns (n,) int64, or None when no frame is present.
    """
    rows = np.flatnonzero(present)
    if rows.size == 0:
        return None
    frames = np.arange(len(present))
    pos = np.searchsorted(rows, frames)  # first present row >= frame
    after = rows[np.minimum(pos, rows.size - 1)]
    before = rows[np.maximum(pos - 1, 0)]
    use_before = (pos > 0) & ((pos == rows.size) | (frames - before <= after - frames))
    return np.where(use_before, before, after).astype(np.int64)


def _annotated(task: str, labels: np.ndarray) -> np.ndarray:
    if task == "expr":
        return metrics.expr_valid(labels)
    if task == "au":
        return metrics.au_valid(labels)
    return np.isfinite(labels).all(axis=1)


def _scores_at(person: PersonOutputs, task: str, frames: np.ndarray) -> np.ndarray:
    """Raw scores of ``task`` at 0-based frame rows, faceless frames filled (see module)."""
    present = np.zeros(person.n_frames, dtype=bool)
    present[person.rows] = True
    source = nearest_present(present)
    if source is None:
        faceless = np.zeros((len(frames), TASK_WIDTHS[task]), dtype=np.float64)
        if task == "au":
            faceless[:] = FACELESS_AU_LOGIT
        return faceless
    position = np.searchsorted(person.rows, source[frames])  # frame row -> index among present
    return person.scores[task][position]


def pool(bank: FeatureBank, outputs: Sequence[PersonOutputs], tasks: Sequence[str]) -> Pooled:
    """Pair each person's predictions with its labels at every annotated frame."""
    truth: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    scores: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    filled = {t: 0 for t in tasks}
    for person in outputs:
        labels = person_labels(bank, person.name, tasks)
        present = np.zeros(person.n_frames, dtype=bool)
        present[person.rows] = True
        for t in tasks:
            frames = np.flatnonzero(_annotated(t, labels[t]))
            truth[t].append(labels[t][frames])
            scores[t].append(_scores_at(person, t, frames))
            filled[t] += int((~present[frames]).sum())
    return Pooled(
        {t: np.concatenate(v) if v else np.zeros((0,)) for t, v in truth.items()},
        {t: np.concatenate(v) if v else np.zeros((0, TASK_WIDTHS[t])) for t, v in scores.items()},
        filled,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def score(pooled: Pooled, tasks: Sequence[str], au_thresholds: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """ABAW metrics of pooled predictions.

    Keys per task: expr -> ``expr_f1`` (macro over 8) and ``expr_f1_per_class``
    {label: F1}; au -> ``au_f1`` (mean over 12) and ``au_f1_per_au`` {AU: F1} with
    presence = sigmoid(logit) >= threshold; va -> ``va_ccc`` (mean), ``va_ccc_valence``,
    ``va_ccc_arousal``. Plus ``n_frames`` {task: scored frames} and ``n_filled``
    {task: scored frames without a face, filled from the nearest face}. A task with no
    scored frame raises DataError.
    """
    result: dict[str, Any] = {}
    if "expr" in tasks:
        y_true, y_pred = pooled.truth["expr"], pooled.scores["expr"].argmax(axis=1)
        result["expr_f1"] = metrics.expr_macro_f1(y_true, y_pred)
        per = metrics.f1_per_class(y_true, y_pred)
        result["expr_f1_per_class"] = {label: float(v) for label, v in zip(EXPR_LABELS, per, strict=True)}
    if "au" in tasks:
        mean, per = metrics.au_f1(pooled.truth["au"], _sigmoid(pooled.scores["au"]), np.asarray(au_thresholds))
        result["au_f1"] = mean
        result["au_f1_per_au"] = {label: float(v) for label, v in zip(AU_LABELS, per, strict=True)}
    if "va" in tasks:
        mean, valence, arousal = metrics.va_ccc(pooled.truth["va"], pooled.scores["va"])
        result.update(va_ccc=mean, va_ccc_valence=valence, va_ccc_arousal=arousal)
    result["n_frames"] = {t: len(pooled.truth[t]) for t in tasks}
    result["n_filled"] = dict(pooled.filled)
    return result


HALF = "at_0.5"
"""Suffix of the AU metrics computed at threshold 0.5 beside those at the card's thresholds."""


def score_with_thresholds(pooled: Pooled, tasks: Sequence[str], thresholds: Sequence[float] | np.ndarray | None,
                          tuned_on: str | None) -> dict[str, Any]:
    """:func:`score` at per-AU ``thresholds`` (None: 0.5 for every AU) plus, for AU
    heads, the AU F1 at 0.5 beside it (``au_f1_at_0.5``, ``au_f1_per_au_at_0.5``), the
    thresholds used (``au_thresholds`` {AU: threshold}) and where they were tuned
    (``au_thresholds_tuned_on``: ``tuned_on``, None for untuned thresholds)."""
    half = np.full(len(AU_LABELS), 0.5)
    used = half if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    result = score(pooled, tasks, used)
    if "au" in tasks:
        at_half = score(pooled, ("au",), half)
        result[f"au_f1_{HALF}"] = at_half["au_f1"]
        result[f"au_f1_per_au_{HALF}"] = at_half["au_f1_per_au"]
        result["au_thresholds"] = {label: float(t) for label, t in zip(AU_LABELS, used, strict=True)}
        result["au_thresholds_tuned_on"] = tuned_on if thresholds is not None else None
    return result


def overall(result: dict[str, Any], tasks: Sequence[str]) -> float:
    """Model-selection score: the task's ABAW metric, or their sum for several tasks."""
    return float(sum(result[TASK_METRIC[t]] for t in tasks))


# --------------------------------------------------------------------------- evaluate


def check_compatible(card: HeadCard, bank: FeatureBank, head_path: str | Path) -> None:
    """ConfigError unless the head was trained on features like the bank's."""
    if card.backbone != bank.backbone or card.feature_dim != bank.feature_dim:
        raise ConfigError(
            f"{head_path}: head expects features of backbone '{card.backbone}' ({card.feature_dim}-d) "
            f"but feature bank {bank.path} holds '{bank.backbone}' ({bank.feature_dim}-d); "
            "use a bank built with the head's backbone"
        )


def write_card(card: HeadCard, head_path: str | Path) -> Path:
    """Replace the JSON card of ``head_path`` atomically (temp file, then rename).

    OutputError (one line) if it cannot be written; the card is then left as it was.
    """
    _, card_path = checkpoint_paths(head_path)
    atomic_write_text(card_path, card.to_json() + "\n")
    return card_path


def check_card_output(head_path: str | Path) -> None:
    """OutputError (one line) unless the card of ``head_path`` can be replaced (its
    folder is writable, the card is not a folder). Creates nothing."""
    check_output_file(checkpoint_paths(head_path)[1])


def split_people(bank: FeatureBank, split: str) -> list[str]:
    names = bank.split(split)
    if not names:
        splits = sorted({e["split"] for e in bank.people.values()})
        raise DataError(f"{bank.path}: no people in split '{split}' (the bank has {', '.join(splits) or 'none'})")
    return names


def evaluate_head(
    features_dir: str | Path,
    head_path: str | Path,
    *,
    split: str = "Validation_Set",
    tune_thresholds: bool = False,
    tune_split: str = "Train_Set",
    device: str = "auto",
) -> dict[str, Any]:
    """Score a trained head on one split of a feature bank.

    Returns a JSON-ready dict: ``expr_f1`` / ``au_f1`` / ``va_ccc`` (whichever the head
    predicts) with their per-class values (see :func:`score`), ``n_frames``,
    ``n_filled``, ``split`` and ``people``. The AU F1 uses the card's per-AU thresholds
    (tuned by training on held-out training videos, or by ``tune_thresholds``); the F1
    at threshold 0.5 is reported beside it (:func:`score_with_thresholds`). With ``tune_thresholds`` (AU heads) the
    per-AU thresholds are tuned on ``tune_split`` (:func:`metrics.tune_au_thresholds`),
    written to the head's card atomically (with ``au_thresholds_tuned_on`` in its
    metrics) and used for the reported AU F1; they are returned as ``au_thresholds``.
    Tuning on the evaluated split itself is allowed but logged: its score is optimistic.

    Raises ConfigError if the bank's backbone / feature_dim differ from the head's,
    DataError for a missing bank or an empty split, WeightsError for a bad checkpoint,
    OutputError if the card cannot be written (checked before anything is scored; a
    write failing anyway loses the result: :func:`score_head` returns it first).
    """
    if tune_thresholds:
        check_card_output(head_path)
    result, tuned = score_head(features_dir, head_path, split=split, tune_thresholds=tune_thresholds,
                               tune_split=tune_split, device=device)
    if tuned is not None:
        write_card(tuned, head_path)
        log.info("AU thresholds tuned on %s written to the card of %s", tune_split, head_path)
    return result


def score_head(
    features_dir: str | Path,
    head_path: str | Path,
    *,
    split: str = "Validation_Set",
    tune_thresholds: bool = False,
    tune_split: str = "Train_Set",
    device: str = "auto",
) -> tuple[dict[str, Any], HeadCard | None]:
    """:func:`evaluate_head` without writing anything: ``(result, tuned card)``.

    The tuned card (None without ``tune_thresholds``) is the head's card with the tuned
    thresholds, for the caller to store with :func:`write_card` -- after it has kept
    the result, so that metrics computed are never lost to a card that cannot be written.
    """
    from ..heads.base import load_head_checkpoint, read_card
    from ..runtime import resolve_device

    bank = FeatureBank.open(features_dir)
    card = read_card(head_path)
    check_compatible(card, bank, head_path)
    if tune_thresholds and "au" not in card.tasks:
        raise ConfigError(f"{head_path}: --tune-thresholds needs a head that predicts AUs")
    dev = resolve_device(device)
    head, _ = load_head_checkpoint(head_path, dev)
    names = split_people(bank, split)
    pooled = pool(bank, predict_people(head, bank, names, dev), card.tasks)
    tuned = None
    if tune_thresholds:
        card = tuned = _tune_thresholds(card, head, bank, tune_split, split, dev)
    result = score_with_thresholds(pooled, card.tasks, np.asarray(card.au_thresholds, dtype=np.float64),
                                   card.metrics.get("au_thresholds_tuned_on"))
    result["split"] = split
    result["people"] = len(names)
    return result, tuned


def _tune_thresholds(card: HeadCard, head: AffectHead, bank: FeatureBank, tune_split: str,
                     split: str, device: torch.device) -> HeadCard:
    """The card with per-AU thresholds tuned on ``tune_split`` (not written here)."""
    if tune_split == split:
        log.warning("AU thresholds tuned on %s, the split being scored: its AU F1 is optimistic", split)
    tuning = pool(bank, predict_people(head, bank, split_people(bank, tune_split), device), ("au",))
    tuned = metrics.tune_au_thresholds(tuning.truth["au"], _sigmoid(tuning.scores["au"]))
    thresholds = tuple(float(t) for t in np.round(tuned, 6))  # 0.55, not 0.5499999...
    return dataclasses.replace(card, au_thresholds=thresholds,
                               metrics={**card.metrics, "au_thresholds_tuned_on": tune_split})
