from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from affstream.train.sam import SAM, bn_stats_frozen, sam_step


def _data(n=16, d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return x, y


def test_sam_sgd_update_matches_hand_computed_two_pass_step():
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Linear(3, 1).double()
    rho, lr = 0.05, 0.1
    sam = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)

    # Hand computation on theta = [w, b], loss = mean((X_aug theta - y)^2) / 2.
    x_aug = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])

    def grad(t):
        return x_aug.T @ (x_aug @ t - y[:, 0]) / len(x)

    g = grad(theta)
    g_adv = grad(theta + rho * g / g.norm())
    expected = theta - lr * g_adv

    loss = sam_step(model, lambda: 0.5 * ((model(x) - y) ** 2).mean(), sam)
    got = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    assert torch.allclose(got, expected, atol=1e-12)
    # returned loss is the first-pass loss at the original weights
    assert loss.item() == pytest.approx(0.5 * float(((x_aug @ theta - y[:, 0]) ** 2).mean()))
    assert not loss.requires_grad
    # differs from the plain SGD step (the perturbation mattered)
    assert not torch.allclose(got, theta - lr * g, atol=1e-6)


def test_first_step_moves_by_rho_in_global_norm_and_second_step_restores():
    torch.manual_seed(1)
    x, y = _data()
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    ((model(x) - y) ** 2).mean().backward()
    sam.first_step()
    moved = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before, strict=True)])
    assert moved.norm().item() == pytest.approx(0.2, rel=1e-9)
    with pytest.raises(RuntimeError, match="twice"):
        sam.first_step()
    sam.second_step()  # lr = 0: weights must be exactly the originals
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)


def test_zero_gradient_gives_no_perturbation():
    model = nn.Linear(2, 1)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    (model(torch.zeros(1, 2)) * 0).sum().backward()
    sam.first_step()
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.isfinite(p).all() and torch.equal(p.detach(), b)
    sam.restore()


def test_bn_running_stats_updated_on_first_pass_only():
    torch.manual_seed(2)
    x, y = _data(n=32, d=4, seed=2)
    x = x.float() * 3 + 1
    y = y.float()
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    reference = copy.deepcopy(model)
    reference.train()
    with torch.no_grad():
        reference(x)  # one update of the running stats at the original weights

    sam = SAM(model.parameters(), torch.optim.Adam, rho=0.5, lr=1e-2)
    sam_step(model, lambda: ((model(x) - y) ** 2).mean(), sam)
    bn, ref_bn = model[1], reference[1]
    assert torch.allclose(bn.running_mean, ref_bn.running_mean)
    assert torch.allclose(bn.running_var, ref_bn.running_var)
    assert bn.num_batches_tracked.item() == 1
    assert bn.track_running_stats is True

    # Without freezing, the second pass (at perturbed weights) would move them again.
    unfrozen = copy.deepcopy(reference)
    with torch.no_grad():
        for p in unfrozen[0].parameters():
            p.add_(0.5)
        unfrozen(x)
    assert not torch.allclose(unfrozen[1].running_mean, ref_bn.running_mean)


def test_bn_stats_frozen_still_normalises_with_batch_stats():
    torch.manual_seed(3)
    bn = nn.BatchNorm1d(5)
    x = torch.randn(10, 5) * 4 + 2
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    with bn_stats_frozen(bn):
        out = bn(x)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(bn.running_mean, torch.zeros(5)) and bn.num_batches_tracked.item() == 0


def test_scheduler_on_base_optimizer_and_state_dict():
    model = nn.Linear(2, 1)
    sam = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(sam.base_optimizer, T_max=4)
    x = torch.randn(8, 2)
    for _ in range(2):
        sam_step(model, lambda: model(x).pow(2).mean(), sam)
        sched.step()
    assert sam.param_groups[0]["lr"] == pytest.approx(sched.get_last_lr()[0])
    assert sam.param_groups[0]["lr"] < 1e-3
    other = SAM(nn.Linear(2, 1).parameters(), torch.optim.Adam, rho=0.1, lr=1e-3)
    other.load_state_dict(sam.state_dict())
    assert other.rho == 0.05 and other.base_optimizer.state_dict()["state"][0]["step"] == 2


def test_sam_step_restores_weights_when_second_pass_fails():
    model = nn.Linear(2, 1)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 2)
    calls = []

    def loss_fn():
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("boom")
        return model(x).pow(2).mean()

    with pytest.raises(ValueError, match="boom"):
        sam_step(model, loss_fn, sam)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
