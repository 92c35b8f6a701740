"""ABAW metrics: expression macro F1, action-unit F1, valence/arousal CCC.

Inputs are numpy arrays (CPU tensors are accepted too) of annotated frames pooled over
the whole evaluation set. The caller removes unannotated frames; :func:`expr_valid`,
:func:`au_valid` and :func:`va_valid` give the masks for Aff-Wild2's conventions (-1 for
a missing EXPR or AU label, -5 for missing VA). All arithmetic is float64.

F1 convention: F1 = 2 TP / (2 TP + FP + FN); a class (or AU) that is neither present
nor predicted has F1 = 0 (the ``zero_division=0`` convention of the ABAW reference
scripts), and it still counts in the mean.

CCC convention: population (divide-by-N) variances and covariance, as in the ABAW
reference: CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2).
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..labels import AU_LABELS, EXPR_LABELS

EXPR_MISSING = -1
AU_MISSING = -1
VA_MISSING = -5.0

N_EXPR = len(EXPR_LABELS)
N_AU = len(AU_LABELS)
DEFAULT_THRESHOLD_GRID = np.linspace(0.05, 0.95, 19)


def _nonempty(name: str, n: int) -> None:
    if n == 0:
        raise DataError(f"{name}: no annotated frames to score; check the labels and the split")


def _binary_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    safe = np.where(denom > 0, denom, 1)
    return np.where(denom > 0, 2 * tp / safe, 0.0).astype(np.float64)


# --- masks --------------------------------------------------------------------------


def expr_valid(y_true: np.ndarray) -> np.ndarray:
    """(N,) bool: frames with an expression label (not -1). y_true: (N,) int."""
    return np.asarray(y_true) != EXPR_MISSING


def au_valid(y_true: np.ndarray) -> np.ndarray:
    """(N,) bool: frames whose 12 AU labels are all annotated (none is -1). y_true: (N, 12)."""
    return np.all(np.asarray(y_true) != AU_MISSING, axis=1)


def va_valid(true: np.ndarray) -> np.ndarray:
    """(N,) bool: frames with both valence and arousal annotated (neither is -5). true: (N, 2)."""
    return np.all(np.asarray(true, dtype=np.float64) != VA_MISSING, axis=1)


# --- expressions --------------------------------------------------------------------


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_EXPR) -> np.ndarray:
    """One-vs-rest F1 of each class. y_true, y_pred: (N,) int in [0, n_classes).

    Returns (n_classes,) float64 in [0, 1]; a class never present nor predicted gets 0.
    """
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_pred = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise DataError(f"expression labels {y_true.shape} and predictions {y_pred.shape} differ in length")
    for name, y in (("labels", y_true), ("predictions", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise DataError(f"expression {name} must lie in [0, {n_classes}); remove unannotated (-1) frames first")
    confusion = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes)
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    return _binary_f1(tp, fp, fn)


def expr_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the 8 classes of :func:`f1_per_class`, in [0, 1]. y_true, y_pred: (N,) int."""
    _nonempty("expression F1", np.asarray(y_true).size)
    return float(f1_per_class(y_true, y_pred, N_EXPR).mean())


# --- action units -------------------------------------------------------------------


def _au_arrays(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape[1] != N_AU or probs.shape != y_true.shape:
        raise DataError(f"AU labels {y_true.shape} and probabilities {probs.shape} must both be (N, {N_AU})")
    if y_true.size and not np.isin(y_true, (0, 1)).all():
        raise DataError("AU labels must be 0 or 1; remove unannotated (-1) frames first")
    return y_true.astype(bool), probs


def _au_f1_columns(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    pred = probs >= thresholds
    tp = np.sum(pred & truth, axis=0)
    fp = np.sum(pred & ~truth, axis=0)
    fn = np.sum(~pred & truth, axis=0)
    return _binary_f1(tp, fp, fn)


def au_f1(
    y_true: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | float = 0.5
) -> tuple[float, np.ndarray]:
    """Per-AU binary F1 and their mean.

    y_true: (N, 12) 0/1. probs: (N, 12) probabilities in [0, 1]; an AU is predicted
    present when ``prob >= threshold``. thresholds: a float or (12,) per-AU values.
    Returns (mean F1, (12,) float64 per-AU F1).
    """
    truth, probs = _au_arrays(y_true, probs)
    _nonempty("AU F1", truth.shape[0])
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (N_AU,))
    per_au = _au_f1_columns(truth, probs, thr)
    return float(per_au.mean()), per_au


def tune_au_thresholds(
    y_true: np.ndarray, probs: np.ndarray, grid: np.ndarray = DEFAULT_THRESHOLD_GRID
) -> np.ndarray:
    """Per-AU threshold maximising that AU's F1 over ``grid`` (0.5 is always a candidate).

    y_true: (N, 12) 0/1; probs: (N, 12) in [0, 1]. Returns (12,) float64. Ties keep the
    earlier candidate, with 0.5 tried first, so the tuned F1 is never below the F1 at 0.5.
    Tune on a split other than the one reported, or the score is optimistic.
    """
    truth, probs = _au_arrays(y_true, probs)
    _nonempty("AU threshold tuning", truth.shape[0])
    best_thr = np.full(N_AU, 0.5)
    best_f1 = _au_f1_columns(truth, probs, best_thr)
    for t in np.asarray(grid, dtype=np.float64).reshape(-1):
        f1 = _au_f1_columns(truth, probs, np.full(N_AU, t))
        better = f1 > best_f1
        best_thr = np.where(better, t, best_thr)
        best_f1 = np.where(better, f1, best_f1)
    return best_thr


# --- valence / arousal --------------------------------------------------------------


def ccc_np(x: np.ndarray, y: np.ndarray) -> float:
    """CCC of two (N,) vectors, float64, population statistics; in [-1, 1].

    Returns 0.0 when both vectors are constant and equal (the formula is 0/0 there).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise DataError(f"CCC inputs differ in length: {x.shape[0]} vs {y.shape[0]}")
    _nonempty("CCC", x.size)
    mx, my = x.mean(), y.mean()
    cov = np.mean((x - mx) * (y - my))
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2.0 * cov / denom) if denom > 0 else 0.0


def va_ccc(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """(mean, valence, arousal) CCC. true, pred: (N, 2) columns valence, arousal in [-1, 1]."""
    true = np.asarray(true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if true.ndim != 2 or true.shape[1] != 2 or pred.shape != true.shape:
        raise DataError(f"VA labels {true.shape} and predictions {pred.shape} must both be (N, 2)")
    valence = ccc_np(true[:, 0], pred[:, 0])
    arousal = ccc_np(true[:, 1], pred[:, 1])
    return 0.5 * (valence + arousal), valence, arousal
