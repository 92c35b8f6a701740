from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from affstream.errors import ConfigError
from affstream.train.losses import (
    au_loss,
    ccc,
    ccc_loss,
    cvar,
    cvar_host_search,
    expr_loss,
    reduce,
)


def _ru_grid_min(losses: np.ndarray, alpha: float) -> float:
    """Brute force: the Rockafellar-Uryasev objective minimised on a dense lambda grid
    that also contains every loss value (the breakpoints of the piecewise-linear objective)."""
    grid = np.concatenate([np.linspace(losses.min() - 1, losses.max() + 1, 20001), losses])
    values = grid + np.maximum(losses[None, :] - grid[:, None], 0).sum(axis=1) / (alpha * len(losses))
    return float(values.min())


@pytest.mark.parametrize("n,alpha", [(10, 0.3), (32, 0.25), (40, 0.5), (7, 1 / 7), (50, 0.02)])
def test_cvar_integer_tail_is_mean_of_worst(n, alpha):
    gen = torch.Generator().manual_seed(n)
    losses = torch.rand(n, generator=gen, dtype=torch.float64) * 3
    k = round(alpha * n)
    expected = torch.sort(losses, descending=True).values[:k].mean()
    assert torch.allclose(cvar(losses, alpha), expected, atol=1e-12)


@pytest.mark.parametrize("n,alpha", [(10, 0.33), (32, 0.3), (9, 0.5), (5, 0.3), (13, 0.77)])
def test_cvar_fractional_tail_matches_ru_objective(n, alpha):
    assert not float(alpha * n).is_integer()
    gen = torch.Generator().manual_seed(100 + n)
    losses = torch.randn(n, generator=gen, dtype=torch.float64).exp()
    got = float(cvar(losses, alpha))
    assert got == pytest.approx(_ru_grid_min(losses.numpy(), alpha), abs=1e-9)
    # and it differs from the naive "mean of the worst ceil(alpha n)" rounding
    naive = torch.sort(losses, descending=True).values[: math.ceil(alpha * n)].mean()
    assert abs(got - float(naive)) > 1e-6


def test_cvar_alpha_one_is_mean_and_tiny_alpha_is_max():
    losses = torch.tensor([0.5, 2.0, 1.0, 4.0])
    assert torch.allclose(cvar(losses, 1.0), losses.mean())
    assert torch.allclose(cvar(losses, 0.1), losses.max())


def test_cvar_gradient_only_on_selected_samples():
    losses = torch.tensor([0.1, 5.0, 0.3, 3.0, 0.2, 4.0, 0.9, 0.4, 0.6, 2.0], requires_grad=True)
    cvar(losses, 0.3).backward()  # worst 3: 5.0, 4.0, 3.0
    expected = torch.zeros(10)
    expected[[1, 3, 5]] = 1 / 3
    assert torch.allclose(losses.grad, expected)

    losses.grad = None
    cvar(losses, 0.35).backward()  # m = 3.5: three full weights, then 2.0 with weight 0.5
    expected = torch.zeros(10)
    expected[[1, 3, 5]] = 1 / 3.5
    expected[9] = 0.5 / 3.5
    assert torch.allclose(losses.grad, expected)
    assert (losses.grad != 0).sum() == 4


@pytest.mark.parametrize("alpha", [0.3, 0.33, 0.05, 1.0])
def test_cvar_host_search_agrees(alpha):
    gen = torch.Generator().manual_seed(7)
    losses = torch.rand(64, generator=gen) * 2
    assert float(cvar_host_search(losses, alpha)) == pytest.approx(float(cvar(losses, alpha)), abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_cvar_rejects_bad_alpha(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        cvar(torch.ones(4), alpha)


def test_reduce_kinds():
    losses = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert torch.allclose(reduce(losses, "erm", 0.25), torch.tensor(4.0))
    assert torch.allclose(reduce(losses, "cvar", 0.25), torch.tensor(10.0))
    with pytest.raises(ConfigError, match="reduction"):
        reduce(losses, "median", 0.5)


def test_expr_loss_per_sample():
    logits = torch.tensor([[2.0, 0.0, 0, 0, 0, 0, 0, 0], [0.0] * 8])
    target = torch.tensor([0, 3])
    losses = expr_loss(logits, target)
    assert losses.shape == (2,)
    assert losses[1].item() == pytest.approx(math.log(8))
    assert losses[0].item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 7)))
    assert expr_loss(logits, target, reduction="mean").item() == pytest.approx(losses.mean().item())


def test_au_loss_mask():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 12, generator=gen, requires_grad=True)
    target = (torch.rand(4, 12, generator=gen) > 0.5).float()
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[0, :6] = False
    mask[3] = False
    target_with_missing = torch.where(mask, target, torch.full_like(target, -1.0))
    losses = au_loss(logits, target_with_missing, mask)
    full = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert losses.shape == (4,)
    assert torch.allclose(losses[0], full[0, 6:].mean())
    assert torch.allclose(losses[1:3], full[1:3].mean(dim=1))
    assert losses[3].item() == 0.0
    losses.sum().backward()
    assert torch.all(logits.grad[3] == 0) and torch.all(logits.grad[0, :6] == 0)
    assert torch.allclose(au_loss(logits, target, None), full.mean(dim=1))


def test_ccc_values():
    x = torch.linspace(-1, 1, 50)
    assert ccc(x, x).item() == pytest.approx(1.0)
    assert ccc(x, -x).item() == pytest.approx(-1.0)
    shifted = ccc(x, x + 0.3).item()
    assert 0.0 < shifted < 1.0
    # population statistics: var(x) = mean((x - mean)^2)
    var = x.var(unbiased=False).item()
    assert shifted == pytest.approx(2 * var / (2 * var + 0.09), rel=1e-5)


def test_ccc_loss_differentiable_and_ranges():
    gen = torch.Generator().manual_seed(5)
    target = torch.rand(20, 2, generator=gen) * 2 - 1
    target = target - target.mean(dim=0)  # zero mean, so -target is perfectly discordant
    assert ccc_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert ccc_loss(-target, target).item() == pytest.approx(2.0, abs=1e-6)
    pred = torch.zeros(20, 2, requires_grad=True)
    with torch.no_grad():
        pred += torch.rand(20, 2, generator=gen) * 0.1
    loss = ccc_loss(pred, target)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
