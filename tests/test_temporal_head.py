"""TemporalHead: shapes, padding invariance, causality, checkpoint round trip, learning."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from affstream.errors import ConfigError, WeightsError
from affstream.heads.base import load_head_checkpoint, read_card, save_head
from affstream.heads.temporal import TemporalHead, build_from_card

D = 16
SMALL = dict(d_model=32, tcn_dilations=(1, 2, 4), n_layers=2, n_heads=4)
TASK_SETS = [c for r in (1, 2, 3) for c in itertools.combinations(("va", "expr", "au"), r)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_head(tasks=("va", "expr", "au"), seed=0, **kw) -> TemporalHead:
    torch.manual_seed(seed)
    return TemporalHead(D, tasks, **{**SMALL, **kw}).eval()


def flat(out) -> torch.Tensor:
    return torch.cat([t for t in (out.va, out.expr_logits, out.au_logits) if t is not None], dim=-1)


@pytest.mark.parametrize("tasks", TASK_SETS)
def test_shapes_for_every_task_set(tasks):
    head = make_head(tasks)
    x = torch.randn(3, 20, D)
    with torch.no_grad():
        out = head(x, torch.ones(3, 20, dtype=torch.bool))
    widths = {"va": 2, "expr": 8, "au": 12}
    for task, tensor in (("va", out.va), ("expr", out.expr_logits), ("au", out.au_logits)):
        if task in tasks:
            assert tensor.shape == (3, 20, widths[task]) and tensor.dtype == torch.float32
            assert torch.isfinite(tensor).all()
        else:
            assert tensor is None
    if "va" in tasks:
        assert out.va.abs().max() <= 1.0
    assert head.card.kind == "temporal" and head.card.tasks == tasks
    assert (head.card.window_length, head.card.window_stride, head.card.causal) == (300, 200, False)


def test_card_records_hyperparameters():
    head = TemporalHead(D, ("expr",), causal=True, window_length=64, window_stride=32, dropout=0.1)
    card = head.card
    assert card.causal and card.window_length == 64 and card.window_stride == 32
    assert card.config["d_model"] == 256 and card.config["tcn_dilations"] == [1, 2, 4, 8]
    assert card.config["kernel_size"] == 3 and card.config["dropout"] == 0.1
    assert card.config["positional_encoding"] == "sinusoidal"
    json.loads(card.to_json())


def test_rejects_bad_input_and_config():
    head = make_head()
    with pytest.raises(ValueError, match="windows"):
        head(torch.randn(10, D))
    with pytest.raises(ValueError):
        head(torch.randn(1, 10, D + 1))
    with pytest.raises(ValueError):
        head(torch.randn(1, 10, D), torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ConfigError):
        TemporalHead(D, ("va", "pose"))
    with pytest.raises(ConfigError):
        TemporalHead(D, ())
    with pytest.raises(ConfigError):
        TemporalHead(D, ("va",), d_model=30, n_heads=4)
    with pytest.raises(ConfigError):
        TemporalHead(D, ("va",), window_length=10, window_stride=20)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_does_not_reach_real_frames(causal):
    head = make_head(causal=causal)
    torch.manual_seed(1)
    valid = [30, 17, 1]
    mask = torch.zeros(3, 30, dtype=torch.bool)
    for b, v in enumerate(valid):
        mask[b, :v] = True
    real = torch.randn(3, 30, D)
    zeros = torch.where(mask[..., None], real, torch.zeros(()))
    garbage = torch.where(mask[..., None], real, 100 * torch.randn(3, 30, D))
    garbage[2, 5] = float("nan")
    garbage[1, 20] = float("inf")
    with torch.no_grad():
        a, b = flat(head(zeros, mask)), flat(head(garbage, mask))
        assert torch.isfinite(a[mask]).all()
        torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=1e-5)
        # A padded window equals the same frames given unpadded.
        alone = flat(head(real[1:2, :17], None))
        torch.testing.assert_close(a[1, :17], alone[0], rtol=0, atol=1e-4)
    if causal:
        return
    # Garbage must actually matter when it is not masked (the test can fail).
    with torch.no_grad():
        c = flat(head(torch.nan_to_num(garbage, nan=0.0, posinf=0.0), torch.ones(3, 30, dtype=torch.bool)))
    assert (c[1, :17] - a[1, :17]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_no_nan_for_odd_masks(causal):
    head = make_head(causal=causal)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[1, 4:] = True  # leading padding
    with torch.no_grad():
        out = flat(head(torch.randn(2, 12, D), mask))
    assert torch.isfinite(out).all()


def test_causal_output_ignores_future_frames():
    x = torch.randn(2, 40, D)
    y = x.clone()
    t = 23
    y[:, t + 1 :] = torch.randn(2, 40 - t - 1, D)
    causal = make_head(causal=True)
    with torch.no_grad():
        a, b = flat(causal(x)), flat(causal(y))
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-5)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3
    assert causal.card.causal
    # The non-causal head does look ahead.
    offline = make_head(causal=False)
    with torch.no_grad():
        c, d = flat(offline(x)), flat(offline(y))
    assert (c[:, t] - d[:, t]).abs().max() > 1e-3


def test_save_and_load_round_trip(tmp_path):
    head = make_head(("va", "au"), causal=True, window_length=40, window_stride=20, backbone="ViT-B-32:random")
    path = save_head(head, tmp_path / "tmp_head")
    loaded, sha = load_head_checkpoint(path)
    assert isinstance(loaded, TemporalHead) and not loaded.training and len(sha) == 64
    assert loaded.card == head.card
    x = torch.randn(2, 40, D)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    with torch.no_grad():
        torch.testing.assert_close(flat(loaded(x, mask)), flat(head(x, mask)), rtol=0, atol=0)

    other = make_head(("va", "au"), d_model=64)
    with pytest.raises(WeightsError):
        build_from_card(read_card(path), other.state_dict())


def test_learns_a_task_that_needs_neighbouring_frames():
    """Label at t is 1 when frames t-1 and t+1 carry the same sign, else 0: a per-frame
    model is at chance (50%), a temporal one can solve it."""
    gen = torch.Generator().manual_seed(0)

    def batch(n: int, length: int = 16):
        sign = torch.randint(0, 2, (n, length), generator=gen).float() * 2 - 1
        x = 0.3 * torch.randn(n, length, D, generator=gen)
        x[..., 0] = sign
        same = torch.zeros(n, length, dtype=torch.long)
        same[:, 1:-1] = (sign[:, :-2] == sign[:, 2:]).long()
        return x, same

    torch.manual_seed(0)
    head = TemporalHead(D, ("expr",), d_model=32, tcn_dilations=(1,), n_layers=1, n_heads=4, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    x, y = batch(32)
    head.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(x).expr_logits[:, 1:-1].reshape(-1, 8), y[:, 1:-1].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    x_test, y_test = batch(64)
    with torch.no_grad():
        pred = head(x_test).expr_logits[:, 1:-1].argmax(-1)
    accuracy = (pred == y_test[:, 1:-1]).float().mean().item()
    assert accuracy > 0.9, accuracy  # held-out sequences; chance is 0.5
