"""Training loops: samples drawn from a bank, losses, schedule, determinism and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synth_affwild import make_feature_bank

from affstream.errors import ConfigError
from affstream.heads.base import HeadOutputs, load_head_checkpoint, read_card
from affstream.temporal.windows import plan_windows
from affstream.train.bank import FeatureBank
from affstream.train.checkpoint import load_resume, resume_dir
from affstream.train.datasets import frame_set, person_sequence, shuffled_batches, window_set
from affstream.train.loop import batch_loss, lr_factor, make_config, train_head
from affstream.train.losses import ccc_loss

TINY_MLP = dict(width=32, dropout=0.1, batch_size=32, device="cpu")
TINY_TEMPORAL = dict(d_model=16, dropout=0.1, lr=2e-3, window_length=24, window_stride=12, batch_size=4, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    return make_feature_bank(tmp_path_factory.mktemp("bank") / "bank", n_people=5, frames=(90, 140), dim=16, seed=3)


@pytest.fixture(scope="module")
def bank(bank_path):
    return FeatureBank.open(bank_path)


# ---------------------------------------------------------------- samples


def test_frame_set_keeps_present_annotated_frames_only(bank):
    names = bank.split("Train_Set")
    fs = frame_set(bank, names, ("expr",))
    expected = 0
    for p, name in enumerate(names):
        keep = bank.present(name) & (bank.labels(name).expr >= 0)
        expected += int(keep.sum())
        rows = fs.row[fs.person == p]
        assert np.array_equal(rows, np.flatnonzero(keep))
    assert len(fs) == expected
    # Multi-task: a frame annotated for any task is kept, with per-task masks.
    multi = frame_set(bank, names, ("expr", "au", "va"))
    assert len(multi) > len(fs)
    batch = multi.batch(np.arange(len(multi)))
    assert not bool(batch["expr_mask"].all()) and not bool(batch["va_mask"].all())
    assert bool((batch["expr_mask"] | batch["au_mask"].any(1) | batch["va_mask"]).all())
    assert torch.isfinite(batch["va"]).all()


def test_frame_batch_gathers_the_right_rows(bank):
    names = bank.split("Train_Set")
    fs = frame_set(bank, names, ("va",))
    index = np.array([len(fs) - 1, 0, 5, len(fs) // 2])
    batch = fs.batch(index)
    for i, k in enumerate(index):
        name = names[fs.person[k]]
        expected = np.asarray(bank.features(name)[fs.row[k]], dtype=np.float32)
        assert np.array_equal(batch["features"][i].numpy(), expected)
        assert np.allclose(batch["va"][i].numpy(), bank.labels(name).va[fs.row[k]])
    assert batch["features"].dtype == torch.float32


def test_windows_follow_present_sequence_and_mask_padding(bank):
    names = bank.split("Train_Set")
    ws = window_set(bank, names, ("expr", "au"), length=24, stride=12)
    seq = person_sequence(bank, names[0], ("expr", "au"))
    assert np.array_equal(seq.rows, np.flatnonzero(bank.present(names[0])))
    plan = plan_windows(len(seq), 24, 12)
    items = ws.items[ws.items[:, 0] == 0]
    assert [tuple(x) for x in items[:, 1:]] == [p for p in plan]
    batch = ws.batch(np.arange(len(items)))
    assert batch["features"].shape == (len(items), 24, 16)
    start, valid = plan[1]
    rows = seq.rows[start:start + valid]
    assert np.array_equal(batch["features"][1].numpy(), np.asarray(bank.features(names[0])[rows], np.float32))
    expr = bank.labels(names[0]).expr[rows]
    assert np.array_equal(batch["expr_mask"][1].numpy(), expr >= 0)
    # A short window: padding is masked out of input and labels.
    short = window_set(bank, names, ("expr",), length=500, stride=500)
    b = short.batch(np.array([0]))
    n = len(person_sequence(bank, short.sequences[0].name, ("expr",)))
    assert b["mask"][0].sum() == n and not b["mask"][0, n:].any()
    assert not b["expr_mask"][0, n:].any() and not b["features"][0, n:].any()


def test_shuffled_batches_are_seeded_and_cover_everything():
    a = shuffled_batches(101, 32, seed=1, epoch=2)
    assert [len(b) for b in a] == [32, 32, 32, 5]
    assert sorted(np.concatenate(a).tolist()) == list(range(101))
    assert all(np.array_equal(x, y) for x, y in zip(a, shuffled_batches(101, 32, seed=1, epoch=2), strict=True))
    assert not np.array_equal(np.concatenate(a), np.concatenate(shuffled_batches(101, 32, seed=1, epoch=3)))
    assert [len(b) for b in shuffled_batches(65, 32, 0, 0, min_size=2)] == [32, 32]


# ---------------------------------------------------------------- losses and schedule


def _batch(n=6):
    gen = torch.Generator().manual_seed(0)
    return {
        "expr": torch.tensor([0, 1, 2, 3, 4, 5][:n]), "expr_mask": torch.tensor([1, 1, 0, 1, 1, 1][:n], dtype=torch.bool),
        "au": (torch.rand(n, 12, generator=gen) > 0.5).float(), "au_mask": torch.ones(n, 12, dtype=torch.bool),
        "va": torch.rand(n, 2, generator=gen) * 2 - 1, "va_mask": torch.tensor([1, 1, 1, 0, 1, 1][:n], dtype=torch.bool),
    }


def test_batch_loss_masks_and_reductions():
    torch.manual_seed(0)
    out = HeadOutputs(va=torch.rand(6, 2) * 2 - 1, expr_logits=torch.randn(6, 8), au_logits=torch.randn(6, 12))
    batch = _batch()
    keep = batch["expr_mask"]
    ce = torch.nn.functional.cross_entropy(out.expr_logits[keep], batch["expr"][keep], reduction="none")
    assert torch.allclose(batch_loss(out, batch, ("expr",), "erm", 1.0, "ccc"), ce.mean())
    worst2 = ce.sort(descending=True).values[:2].mean()  # alpha 0.4 of 5 samples = 2
    assert torch.allclose(batch_loss(out, batch, ("expr",), "cvar", 0.4, "ccc"), worst2)
    # Changing a masked label changes nothing.
    batch2 = dict(batch, expr=batch["expr"].clone())
    batch2["expr"][2] = 7
    assert torch.equal(batch_loss(out, batch2, ("expr",), "erm", 1.0, "ccc"),
                       batch_loss(out, batch, ("expr",), "erm", 1.0, "ccc"))
    v = batch["va_mask"]
    assert torch.allclose(batch_loss(out, batch, ("va",), "erm", 1.0, "ccc"), ccc_loss(out.va[v], batch["va"][v]))
    se = (out.va[v] - batch["va"][v]).pow(2).mean(1)
    assert torch.allclose(batch_loss(out, batch, ("va",), "cvar", 1.0, "se"), se.mean())
    total = batch_loss(out, batch, ("expr", "au", "va"), "erm", 1.0, "ccc")
    parts = sum(batch_loss(out, batch, (t,), "erm", 1.0, "ccc") for t in ("expr", "au", "va"))
    assert torch.allclose(total, parts)


def test_batch_loss_over_windows_ignores_padding():
    torch.manual_seed(1)
    out = HeadOutputs(expr_logits=torch.randn(2, 5, 8, requires_grad=True))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    batch = {"expr": torch.randint(0, 8, (2, 5)), "expr_mask": mask}
    loss = batch_loss(out, batch, ("expr",), "erm", 1.0, "ccc")
    loss.backward()
    assert (out.expr_logits.grad[0, 3:] == 0).all() and (out.expr_logits.grad[0, :3] != 0).any()


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 0) == 1.0
    assert lr_factor(50, 100, 0) == pytest.approx(0.5)
    assert lr_factor(99, 100, 0) < 0.01
    assert [lr_factor(s, 100, 10) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, 100, 10) == 1.0 and lr_factor(55, 100, 10) == pytest.approx(0.5)


def test_config_defaults_and_errors():
    mlp = make_config("expr", "mlp", recipe="paper")
    assert (mlp.lr, mlp.batch_size, mlp.epochs, mlp.alpha, mlp.rho, mlp.sam, mlp.loss, mlp.optimizer) == (
        1e-3, 32, 32, 0.3, 0.05, True, "cvar", "adam")
    tmp = make_config("all", "temporal", recipe="paper")  # the default recipe changes lr etc. for small sets
    assert (tmp.lr, tmp.weight_decay, tmp.dropout, tmp.warmup_epochs, tmp.optimizer, tmp.window_length,
            tmp.window_stride, tmp.tasks) == (3e-5, 1e-5, 0.3, 1, "adamw", 300, 200, ("expr", "au", "va"))
    with pytest.raises(ConfigError, match="window_length"):
        make_config("expr", "mlp", window_length=10)
    with pytest.raises(ConfigError, match="alpha"):
        make_config("expr", "mlp", alpha=0.0)
    with pytest.raises(ConfigError, match="task"):
        make_config("pose", "mlp")
    with pytest.raises(ConfigError, match="stride"):
        make_config("va", "temporal", window_length=10, window_stride=20)


# ---------------------------------------------------------------- determinism, output, resume


def _weights(path):
    return load_file(str(path) + ".safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mlp_training_is_deterministic_and_writes_a_full_card(bank_path, tmp_path):
    a = train_head(bank_path, task="au", head="mlp", out=tmp_path / "a", epochs=2, seed=5, **TINY_MLP)
    b = train_head(bank_path, task="au", head="mlp", out=tmp_path / "b", epochs=2, seed=5, **TINY_MLP)
    train_head(bank_path, task="au", head="mlp", out=tmp_path / "c", epochs=2, seed=6, **TINY_MLP)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert not _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))
    assert a["metrics"] == b["metrics"]
    card = read_card(tmp_path / "a")
    bank = FeatureBank.open(bank_path)
    assert (card.kind, card.backbone, card.feature_dim, card.tasks) == ("mlp", bank.backbone, 16, ("au",))
    assert card.window_length is None and card.causal
    training = card.config["training"]
    assert (training["loss"], training["sam"], training["epochs"], training["seed"], training["width"]) == (
        "erm", True, 2, 5, 32)  # the default recipe's loss (the paper's cvar: recipe="paper")
    assert card.metrics["au_f1"] == pytest.approx(a["metrics"]["au_f1"])
    assert set(card.metrics["au_f1_per_au"]) == {"AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15",
                                                  "AU23", "AU24", "AU25", "AU26"}
    assert card.metrics["epoch"] == a["best_epoch"]
    best = max(a["history"], key=lambda h: h["score"])
    assert a["best_epoch"] == best["epoch"] and card.metrics["au_f1"] == pytest.approx(best["score"])
    assert not resume_dir(tmp_path / "a").exists()
    head, _ = load_head_checkpoint(tmp_path / "a")
    assert head.card.config["width"] == 32


class _Stop(Exception):
    pass


def _stop_after(epoch):
    def progress(event):
        if event["event"] == "epoch" and event["epoch"] == epoch:
            raise _Stop
    return progress


@pytest.mark.parametrize("kind,options", [("mlp", TINY_MLP), ("temporal", TINY_TEMPORAL)])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(bank_path, tmp_path, kind, options):
    task = "expr" if kind == "mlp" else "all"
    straight = train_head(bank_path, task=task, head=kind, out=tmp_path / "straight", epochs=4, **options)
    with pytest.raises(_Stop):
        train_head(bank_path, task=task, head=kind, out=tmp_path / "cut", epochs=4, progress=_stop_after(2), **options)
    state = load_resume(resume_dir(tmp_path / "cut"))
    assert state.epoch == 2 and not (tmp_path / "cut.safetensors").exists()
    assert {p.suffix for p in resume_dir(tmp_path / "cut").iterdir()} == {".json", ".safetensors"}  # no pickle
    saved = json.loads((resume_dir(tmp_path / "cut") / "state.json").read_text())
    assert saved["config"]["epochs"] == 4
    with pytest.raises(ConfigError, match="--resume"):
        train_head(bank_path, task=task, head=kind, out=tmp_path / "cut", epochs=4, **options)
    with pytest.raises(ConfigError, match="seed"):
        train_head(bank_path, task=task, head=kind, out=tmp_path / "cut", epochs=4, seed=9, resume=True, **options)
    resumed = train_head(bank_path, task=task, head=kind, out=tmp_path / "cut", epochs=4, resume=True, **options)
    assert resumed["resumed_from"] == 2
    assert _same(_weights(tmp_path / "straight"), _weights(tmp_path / "cut"))
    assert resumed["history"] == straight["history"] and resumed["best_epoch"] == straight["best_epoch"]
    assert not resume_dir(tmp_path / "cut").exists()
    assert read_card(tmp_path / "cut").metrics == read_card(tmp_path / "straight").metrics


def test_temporal_card_records_windows(bank_path, tmp_path):
    train_head(bank_path, task="va", head="temporal", out=tmp_path / "t", epochs=1, causal=True, **TINY_TEMPORAL)
    card = read_card(tmp_path / "t")
    assert (card.kind, card.window_length, card.window_stride, card.causal) == ("temporal", 24, 12, True)
    assert card.config["training"]["optimizer"] == "adamw" and card.config["d_model"] == 16
    assert set(card.metrics) >= {"va_ccc", "va_ccc_valence", "va_ccc_arousal", "n_frames", "epoch"}
