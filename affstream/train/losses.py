"""Training losses: per-sample task losses, their CVaR or mean reduction, and 1 - CCC.

Per-sample losses are 1-D float tensors of shape ``(N,)``, one value per frame, so
that a risk measure (:func:`cvar`) can weight the hardest frames. Everything here
stays on the losses' device: no ``.item()``, no host round-trip, except in
:func:`cvar_host_search`, which exists only as a reference for tests and benchmarks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

CCC_EPS = 1e-8
"""Floor of the CCC denominator, so two constant, equal vectors give 0 instead of NaN."""

_INTEGER_TOL = 1e-9
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618..., the golden-section shrink factor


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"CVaR alpha={alpha}: must lie in (0, 1]; use e.g. 0.3")
    return alpha


def _check_losses(losses: torch.Tensor) -> None:
    if losses.ndim != 1 or losses.numel() == 0:
        raise ValueError(f"expected non-empty per-sample losses of shape (N,), got {tuple(losses.shape)}")


def _tail_mass(n: int, alpha: float) -> float:
    """alpha * n, snapped to the nearest integer when it is one up to rounding (0.3 * 10)."""
    mass = alpha * n
    nearest = round(mass)
    return float(nearest) if abs(mass - nearest) <= _INTEGER_TOL * max(1.0, mass) else mass


def cvar(losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """Conditional Value at Risk of per-sample losses at level ``alpha``: the worst-tail mean.

    losses: (N,) float, any device. alpha: float in (0, 1]. Returns a 0-d tensor on the
    same device and dtype, differentiable.

    With ``m = alpha * N``, ``k = floor(m)`` and the losses sorted in decreasing order
    ``l(1) >= ... >= l(N)``, the value is

        ( l(1) + ... + l(k) + (m - k) * l(k+1) ) / m

    i.e. the mean of the worst ``m`` losses, the boundary loss counting with its
    fractional weight when ``m`` is not an integer (for ``m < 1`` this is the maximum).
    alpha = 1 gives the plain mean. Gradients reach only the selected (top) samples.

    Why this is the Rockafellar-Uryasev objective
    ``min_lambda  lambda + 1/m * sum_i max(0, l_i - lambda)``: the objective is convex
    and piecewise linear in lambda; its slope on the segment just below ``l(j)`` is
    ``1 - j/m`` (j losses lie above lambda there). The slope turns non-negative once
    ``j <= m``, so the minimum is attained at ``lambda = l(k+1)`` (any lambda between
    ``l(k+1)`` and ``l(k)`` when m is an integer). Substituting gives
    ``l(k+1) + 1/m * sum_{i<=k} (l(i) - l(k+1))``, which rearranges to the formula above.
    So the exact minimum comes from one top-k on the device; no scalar search is needed.
    When ``alpha * N`` is an integer up to float rounding (``0.3 * 10``) it is taken
    as that integer.
    """
    alpha = _check_alpha(alpha)
    _check_losses(losses)
    n = losses.shape[0]
    mass = _tail_mass(n, alpha)
    whole = min(math.floor(mass), n)
    frac = mass - whole
    if whole == n:
        return losses.mean()
    if frac == 0.0:
        return torch.topk(losses, whole, sorted=False).values.sum() / mass
    top = torch.topk(losses, whole + 1, sorted=True).values
    return (top[:whole].sum() + frac * top[whole]) / mass


def _ru_objective_np(losses: np.ndarray, lam: float, mass: float) -> float:
    return lam + float(np.maximum(losses - lam, 0.0).sum()) / mass


def _golden_section_min(losses: np.ndarray, mass: float, rel_tol: float = 1e-12, max_iter: int = 200) -> float:
    """Minimiser over lambda in [min(l), max(l)] of the RU objective, by golden section.

    The objective is convex, so the bracket always keeps the minimiser; float64 host math.
    """
    lo, hi = float(losses.min()), float(losses.max())
    tol = rel_tol * max(1.0, abs(lo), abs(hi))
    a = hi - _GOLDEN * (hi - lo)
    b = lo + _GOLDEN * (hi - lo)
    fa, fb = _ru_objective_np(losses, a, mass), _ru_objective_np(losses, b, mass)
    for _ in range(max_iter):
        if hi - lo <= tol:
            break
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = _ru_objective_np(losses, a, mass)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = _ru_objective_np(losses, b, mass)
    return 0.5 * (lo + hi)


def cvar_host_search(losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """REFERENCE / BENCHMARK ONLY: CVaR the way the seed code computes it.

    Copies the losses to the host (a device sync), finds lambda by a golden-section
    search of ``lambda + mean(max(0, l - lambda)) / alpha`` in float64 numpy, then
    evaluates that objective on the device with the found lambda (a constant, so the
    gradient reaches the samples above it). Same value as :func:`cvar` up to the search
    tolerance; slower, and it stalls the device every step. Use :func:`cvar` instead.

    losses: (N,) float. alpha in (0, 1]. Returns a 0-d tensor on the losses' device.
    """
    alpha = _check_alpha(alpha)
    _check_losses(losses)
    host = losses.detach().double().cpu().numpy()
    mass = alpha * host.shape[0]
    lam = _golden_section_min(host, mass)
    lam_t = torch.as_tensor(lam, dtype=losses.dtype, device=losses.device)
    return lam_t + torch.clamp(losses - lam_t, min=0.0).mean() / alpha


def reduce(losses: torch.Tensor, kind: str, alpha: float = 1.0) -> torch.Tensor:
    """Reduce per-sample losses (N,) to a 0-d tensor: ``"erm"`` (mean) or ``"cvar"`` (at alpha)."""
    if kind == "erm":
        _check_losses(losses)
        return losses.mean()
    if kind == "cvar":
        return cvar(losses, alpha)
    raise ConfigError(f"loss reduction '{kind}': unknown; use 'cvar' or 'erm'")


def expr_loss(logits: torch.Tensor, target: torch.Tensor, *, reduction: str = "none",
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of expression logits, optionally class-weighted.

    logits: (N, 8) float, unnormalised. target: (N,) int64 class index in [0, 8).
    weight: optional (8,) float per-class weights (:func:`expr_class_weights`); sample i
    then counts ``weight[target[i]]`` times. reduction: ``"none"`` -> (N,) per-sample
    losses in nats; ``"mean"`` / ``"sum"`` -> 0-d (torch's weighted mean for "mean").
    Rows with missing labels (-1) must be removed by the caller.
    """
    w = None if weight is None else weight.to(device=logits.device, dtype=torch.float32)
    return F.cross_entropy(logits.float(), target, weight=w, reduction=reduction)


def au_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
            pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean binary cross-entropy (with logits) over the valid action units.

    logits: (N, 12) float. target: (N, 12) float 0/1 (entries outside ``mask`` are ignored,
    whatever their value). mask: (N, 12) bool, True where the AU is annotated; None means
    all are. pos_weight: optional (12,) float, the weight of a positive label per AU
    (class-weighted BCE, :func:`au_pos_weights`); negatives weigh 1. Returns (N,) float
    losses in nats; a row with no valid AU gets loss 0 and no gradient.
    """
    logits = logits.float()
    target = target.to(logits.dtype)
    pw = None if pos_weight is None else pos_weight.to(device=logits.device, dtype=logits.dtype)
    if mask is None:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw).mean(dim=1)
    weight = mask.to(logits.dtype)
    target = torch.where(mask, target, torch.zeros_like(target))
    per_au = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw) * weight
    return per_au.sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


MAX_CLASS_WEIGHT = 10.0
"""Largest class weight (EXPR) or positive weight (AU) derived from label counts: a
class seen a handful of times must not dominate every batch."""


def expr_class_weights(labels: np.ndarray, n_classes: int = 8, max_weight: float = MAX_CLASS_WEIGHT) -> np.ndarray:
    """Inverse-frequency class weights for :func:`expr_loss`, (n_classes,) float64.

    labels: (N,) int class indices of the training frames (-1 = unannotated, ignored).
    Class c gets ``N / (C * n_c)`` clipped to ``[1 / max_weight, max_weight]``, then all
    are rescaled so that the mean weight over the training frames is 1 (the loss keeps
    its scale). A class without frames gets weight 1 (it never occurs as a target).
    """
    y = np.asarray(labels).reshape(-1)
    y = y[y >= 0].astype(np.int64)
    counts = np.bincount(y, minlength=n_classes)[:n_classes].astype(np.float64)
    if counts.sum() == 0:
        return np.ones(n_classes)
    raw = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1.0)), 1.0)
    raw = np.clip(raw, 1.0 / max_weight, max_weight)
    return raw * counts.sum() / float((raw * counts).sum())


def au_pos_weights(labels: np.ndarray, max_weight: float = MAX_CLASS_WEIGHT) -> np.ndarray:
    """Positive weights per AU for :func:`au_loss`, (12,) float64: ``n_negative / n_positive``
    of each AU over its annotated training frames, clipped to ``[1 / max_weight, max_weight]``.

    labels: (N, 12) 0/1 with -1 for unannotated entries (ignored). An AU without
    positives or without negatives gets 1.
    """
    y = np.asarray(labels)
    pos = (y == 1).sum(axis=0).astype(np.float64)
    neg = (y == 0).sum(axis=0).astype(np.float64)
    ratio = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1.0), 1.0)
    return np.clip(ratio, 1.0 / max_weight, max_weight)


def ccc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Concordance correlation coefficient of two (N,) vectors, a 0-d tensor in [-1, 1].

    CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), with population
    (divide-by-N) variance and covariance as in the ABAW reference. Computed in float32
    at least; the denominator is floored at ``CCC_EPS``. Differentiable.
    """
    x = x.float().reshape(-1)
    y = y.float().reshape(-1)
    mx, my = x.mean(), y.mean()
    dx, dy = x - mx, y - my
    cov = (dx * dy).mean()
    denom = dx.pow(2).mean() + dy.pow(2).mean() + (mx - my).pow(2)
    return 2.0 * cov / denom.clamp_min(CCC_EPS)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean(CCC_valence, CCC_arousal); pred and target (N, 2) in [-1, 1]. 0-d tensor in [0, 2].

    The CCC is a statistic of the whole batch, so this loss has no per-sample form
    (it cannot be CVaR-reduced).
    """
    if pred.shape != target.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"expected pred and target of shape (N, 2), got {tuple(pred.shape)}, {tuple(target.shape)}")
    return 1.0 - 0.5 * (ccc(pred[:, 0], target[:, 0]) + ccc(pred[:, 1], target[:, 1]))
