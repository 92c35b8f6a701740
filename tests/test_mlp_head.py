from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from affstream.errors import ConfigError, WeightsError
from affstream.heads.base import load_head_checkpoint, save_head, to_prediction
from affstream.heads.mlp import MLPHead, build_from_card

D = 32


def _head(tasks=("expr", "au", "va"), **kw) -> MLPHead:
    torch.manual_seed(0)
    return MLPHead(D, tasks, width=16, dropout=0.6, backbone="test-arch:random", meaningful=False, **kw)


def test_architecture_and_card():
    head = _head()
    blocks = list(head.trunk)
    assert len(blocks) == 3
    for block in blocks:
        assert [type(m) for m in block] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
        assert block[3].p == 0.6
    card = head.card
    assert card.kind == "mlp" and card.window_length is None and card.causal is True
    assert card.tasks == ("expr", "au", "va") and card.feature_dim == D
    assert card.config == {"width": 16, "dropout": 0.6, "hidden_layers": 3}
    default = MLPHead(768, ("expr",))
    assert default.card.config["width"] == 768 and default.card.config["dropout"] == 0.6


@pytest.mark.parametrize(
    "tasks", [("expr",), ("au",), ("va",), ("expr", "au"), ("expr", "au", "va")]
)
def test_output_shapes_per_task(tasks):
    head = _head(tasks).eval()
    out = head(torch.randn(5, D))
    for task, attr, width in (("expr", "expr_logits", 8), ("au", "au_logits", 12), ("va", "va", 2)):
        value = getattr(out, attr)
        if task in tasks:
            assert value.shape == (5, width)
        else:
            assert value is None
    if out.va is not None:
        assert out.va.abs().max() < 1.0


def test_windowed_input_is_flattened_and_rowwise_in_eval():
    head = _head().eval()
    x = torch.randn(2, 7, D)
    out = head(x, mask=torch.ones(2, 7, dtype=torch.bool))
    assert out.expr_logits.shape == (2, 7, 8)
    assert out.au_logits.shape == (2, 7, 12)
    assert out.va.shape == (2, 7, 2)
    flat = head(x.reshape(14, D))
    assert torch.allclose(out.expr_logits.reshape(14, 8), flat.expr_logits, atol=1e-6)
    single = head(x[1, 3:4])
    assert torch.allclose(single.au_logits[0], out.au_logits[1, 3], atol=1e-6)
    pred = to_prediction(out)
    assert pred.expr_probs.shape == (14, 8)


def test_training_mask_keeps_padding_out_of_batchnorm():
    head = _head(("expr",))
    head.train()
    x = torch.randn(2, 6, D)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    x_padded = x.clone()
    x_padded[1, 3:] = 1e3  # garbage in the padding must not matter
    head(x_padded, mask=mask)
    stats_masked = head.trunk[0][1].running_mean.clone()

    ref = _head(("expr",))
    ref.train()
    ref(x[mask])
    assert torch.allclose(stats_masked, ref.trunk[0][1].running_mean, atol=1e-5)


def test_wrong_feature_dim_is_config_error():
    head = _head().eval()
    with pytest.raises(ConfigError, match="expects"):
        head(torch.randn(3, D + 1))


def test_save_load_round_trip_identical_outputs(tmp_path):
    head = _head()
    # move BN running stats and weights away from their initial values
    head.train()
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(3):
        out = head(torch.randn(16, D) * 2 + 1)
        loss = out.expr_logits.logsumexp(-1).mean() + out.au_logits.pow(2).mean() + out.va.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.card = dataclasses.replace(head.card, au_thresholds=(0.4,) * 12, metrics={"expr_f1": 0.3})
    head.eval()

    weights = save_head(head, tmp_path / "my_mlp")
    card = json.loads((tmp_path / "my_mlp.json").read_text())
    assert card["kind"] == "mlp" and card["config"]["width"] == 16
    loaded, sha = load_head_checkpoint(weights)
    assert isinstance(loaded, MLPHead) and not loaded.training
    assert len(sha) == 64
    assert loaded.card == head.card
    x = torch.randn(9, D)
    a, b = head(x), loaded(x)
    assert torch.equal(a.expr_logits, b.expr_logits)
    assert torch.equal(a.au_logits, b.au_logits)
    assert torch.equal(a.va, b.va)


def test_build_from_card_rejects_mismatched_weights():
    head = _head(("expr",))
    state = head.state_dict()
    bigger = dataclasses.replace(head.card, config={"width": 32, "dropout": 0.6, "hidden_layers": 3})
    with pytest.raises(WeightsError, match="do not match"):
        build_from_card(bigger, state)
    with pytest.raises(ConfigError, match="kind"):
        build_from_card(dataclasses.replace(head.card, kind="temporal"), state)
