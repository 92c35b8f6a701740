from __future__ import annotations

import numpy as np
import pytest

from affstream.errors import DataError
from affstream.train.metrics import (
    au_f1,
    au_valid,
    ccc_np,
    expr_macro_f1,
    expr_valid,
    f1_per_class,
    tune_au_thresholds,
    va_ccc,
    va_valid,
)


def _ref_f1(truth: list[bool], pred: list[bool]) -> float:
    tp = fp = fn = 0
    for t, p in zip(truth, pred, strict=True):
        if t and p:
            tp += 1
        elif p:
            fp += 1
        elif t:
            fn += 1
    if tp == 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)


def _ref_ccc(x, y) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    vx = sum((a - mx) ** 2 for a in x) / n
    vy = sum((b - my) ** 2 for b in y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / n
    return 2 * cov / (vx + vy + (mx - my) ** 2)


def test_f1_per_class_matches_reference_loop():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 8, 500)
    y_pred = np.where(rng.random(500) < 0.4, y_true, rng.integers(0, 8, 500))
    got = f1_per_class(y_true, y_pred)
    expected = [_ref_f1(list(y_true == c), list(y_pred == c)) for c in range(8)]
    assert got.shape == (8,)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert expr_macro_f1(y_true, y_pred) == pytest.approx(np.mean(expected))


def test_f1_hand_checked_values():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    f1 = f1_per_class(y_true, y_pred)
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: 0
    np.testing.assert_allclose(f1[:3], [0.5, 0.8, 0.0])
    assert np.all(f1[3:] == 0.0)  # absent and never predicted -> 0, still in the mean
    assert expr_macro_f1(y_true, y_pred) == pytest.approx(1.3 / 8)
    assert expr_macro_f1(np.arange(8), np.arange(8)) == 1.0


def test_f1_rejects_unannotated_and_mismatched():
    with pytest.raises(DataError, match="-1"):
        f1_per_class(np.array([0, -1]), np.array([0, 1]))
    with pytest.raises(DataError, match="length"):
        f1_per_class(np.array([0, 1]), np.array([0]))
    with pytest.raises(DataError, match="no annotated"):
        expr_macro_f1(np.array([], dtype=int), np.array([], dtype=int))


def test_au_f1_matches_reference_loop():
    rng = np.random.default_rng(1)
    y_true = (rng.random((300, 12)) < 0.3).astype(int)
    probs = np.clip(y_true * 0.3 + rng.random((300, 12)) * 0.7, 0, 1)
    thresholds = np.linspace(0.3, 0.7, 12)
    mean, per_au = au_f1(y_true, probs, thresholds)
    expected = [_ref_f1(list(y_true[:, j] == 1), list(probs[:, j] >= thresholds[j])) for j in range(12)]
    np.testing.assert_allclose(per_au, expected, atol=1e-12)
    assert mean == pytest.approx(np.mean(expected))
    mean_half, _ = au_f1(y_true, probs)
    expected_half = [_ref_f1(list(y_true[:, j] == 1), list(probs[:, j] >= 0.5)) for j in range(12)]
    assert mean_half == pytest.approx(np.mean(expected_half))


def test_au_f1_shape_and_label_errors():
    with pytest.raises(DataError, match=r"\(N, 12\)"):
        au_f1(np.zeros((4, 11)), np.zeros((4, 11)))
    labels = np.zeros((4, 12))
    labels[0, 0] = -1
    with pytest.raises(DataError, match="-1"):
        au_f1(labels, np.zeros((4, 12)))


def test_threshold_tuning_never_lowers_f1():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y_true = (rng.random((200, 12)) < rng.uniform(0.05, 0.6, 12)).astype(int)
        probs = np.clip(y_true * rng.uniform(0, 0.5, 12) + rng.random((200, 12)) * 0.6, 0, 1)
        thr = tune_au_thresholds(y_true, probs)
        assert thr.shape == (12,) and np.all((thr >= 0.05) & (thr <= 0.95))
        tuned, per_tuned = au_f1(y_true, probs, thr)
        base, per_base = au_f1(y_true, probs, 0.5)
        assert np.all(per_tuned >= per_base - 1e-12)
        assert tuned >= base
    # a case where tuning must help: positives score 0.3, negatives 0.1
    y_true = np.tile(np.array([[1] * 12, [0] * 12]), (10, 1))
    probs = np.where(y_true == 1, 0.3, 0.1)
    thr = tune_au_thresholds(y_true, probs)
    assert au_f1(y_true, probs, thr)[0] == 1.0 and au_f1(y_true, probs, 0.5)[0] == 0.0
    assert np.all((thr > 0.1) & (thr <= 0.3))


def test_ccc_hand_checked_values():
    x = np.linspace(-1, 1, 41)
    assert ccc_np(x, x) == pytest.approx(1.0)
    assert ccc_np(x, -x) == pytest.approx(-1.0)
    shifted = ccc_np(x, x + 0.2)
    assert shifted < 1.0
    assert shifted == pytest.approx(2 * x.var() / (2 * x.var() + 0.04))
    assert ccc_np(x, 2 * x) < 1.0  # perfectly correlated but not concordant
    assert ccc_np(np.ones(5), np.ones(5)) == 0.0


def test_va_ccc_matches_reference_loop():
    rng = np.random.default_rng(3)
    true = rng.uniform(-1, 1, (200, 2))
    pred = np.clip(true * 0.6 + rng.normal(0, 0.3, (200, 2)) + 0.1, -1, 1)
    mean, valence, arousal = va_ccc(true, pred)
    assert valence == pytest.approx(_ref_ccc(list(true[:, 0]), list(pred[:, 0])), abs=1e-12)
    assert arousal == pytest.approx(_ref_ccc(list(true[:, 1]), list(pred[:, 1])), abs=1e-12)
    assert mean == pytest.approx((valence + arousal) / 2)
    with pytest.raises(DataError):
        va_ccc(true, pred[:, :1])


def test_validity_masks():
    assert expr_valid(np.array([0, -1, 7])).tolist() == [True, False, True]
    au = np.zeros((3, 12), dtype=int)
    au[1, 4] = -1
    assert au_valid(au).tolist() == [True, False, True]
    va = np.array([[0.1, 0.2], [-5, -5], [-1.0, 1.0]])
    assert va_valid(va).tolist() == [True, False, True]
