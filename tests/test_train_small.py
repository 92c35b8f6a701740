"""Training that learns on a user's first, small data set with every option at its default.

The set (tests/synth_small.py): 9 videos of 400-460 frames, 6 for training and 3 for
validation, labels in segments of 30-90 frames, per-frame cues right 60 % of the time.
No learning rate or other setting is tuned here: every head is trained with the
defaults a user gets. Each slow test prints its numbers (``pytest -s``).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from synth_affwild import make_feature_bank
from synth_small import make_small_bank

from affstream.errors import ConfigError
from affstream.heads.base import read_card
from affstream.labels import AU_LABELS
from affstream.train import metrics
from affstream.train.bank import FeatureBank
from affstream.train.datasets import BatchStream, recut_windows, shuffled_batches, window_set
from affstream.train.evaluate import evaluate_head
from affstream.train.loop import (
    PAPER_DIFFERENCES,
    RECIPES,
    make_config,
    plan_schedule,
    resolve_batch_size,
    schedule_warnings,
    split_holdout,
    train_head,
)
from affstream.train.losses import au_loss, au_pos_weights, expr_class_weights, expr_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_small_bank(tmp_path_factory.mktemp("small") / "bank", seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_feature_bank(tmp_path_factory.mktemp("tiny") / "bank", n_people=5, frames=(90, 140), dim=16, seed=3)


# --------------------------------------------------------------------------- recipes and schedule


def test_default_recipe_changes_only_documented_paper_settings():
    for head in ("mlp", "temporal"):
        paper, default = RECIPES["paper"][head], RECIPES["default"][head]
        assert paper.keys() == default.keys()
        changed = {k for k in paper if paper[k] != default[k]}
        assert changed and changed <= set(PAPER_DIFFERENCES)
        cfg = make_config("au", head)
        assert cfg.recipe == "default" and set(cfg.paper_differences()) == changed
        assert all(d["why"] == PAPER_DIFFERENCES[k] for k, d in cfg.paper_differences().items())
        assert make_config("au", head, recipe="paper").paper_differences() == {}
    # an option set by hand is recorded as such
    assert make_config("expr", "temporal", lr=1e-2).paper_differences()["lr"] == {
        "value": 1e-2,
        "paper": 3e-5,
        "why": "set for this run",
    }
    assert make_config("expr", "temporal", recipe="paper", d_model=64).d_model == 64
    with pytest.raises(ConfigError, match="recipe 'fast'"):
        make_config("expr", "mlp", recipe="fast")
    with pytest.raises(ConfigError, match="recut"):
        make_config("expr", "mlp", recut=True)
    with pytest.raises(ConfigError, match="steps 3 must be >= epochs 4"):
        make_config("expr", "mlp", epochs=4, steps=3)
    with pytest.raises(ConfigError, match="shortest training window 400"):
        make_config("expr", "temporal", window_min=400)


def test_schedule_floor_and_steps():
    small_run = make_config("expr", "temporal")  # min_steps 200 over 32 epochs
    assert plan_schedule(small_run, batches_per_pass=2) == 7
    assert plan_schedule(small_run, batches_per_pass=1000) == 1000  # a large set: an epoch is a pass
    assert plan_schedule(make_config("expr", "temporal", recipe="paper"), 2) == 2
    assert plan_schedule(make_config("expr", "mlp", steps=100, epochs=8), 1000) == 13


def test_warnings_say_what_to_change():
    paper = make_config("expr", "temporal", recipe="paper")
    few = schedule_warnings(paper, samples=18, batches_per_pass=1, steps_per_epoch=1, n_people=6)
    assert len(few) == 2
    assert "only 32 optimizer steps in all" in few[0] and "--min-steps" in few[0] and "--batch-size" in few[0]
    assert "only 18 training windows per pass" in few[1] and "fewer than one batch of 32" in few[1]
    assert "lower --batch-size (e.g. 4)" in few[1]
    default = make_config("expr", "temporal")
    assert schedule_warnings(default, samples=18, batches_per_pass=9, steps_per_epoch=9, n_people=6, batch_size=2) == []


def test_automatic_batch_size():
    temporal, mlp = make_config("expr", "temporal"), make_config("expr", "mlp")
    assert temporal.batch_size == mlp.batch_size == 0  # auto
    assert resolve_batch_size(temporal, 18) == 2  # a few videos: 9 steps per pass instead of 1
    assert resolve_batch_size(temporal, 5) == 1
    assert resolve_batch_size(temporal, 8000) == 32  # Aff-Wild2: the paper's batch
    assert resolve_batch_size(mlp, 10) == 2  # BatchNorm needs two frames
    assert resolve_batch_size(mlp, 2600) == 32
    assert resolve_batch_size(make_config("expr", "mlp", batch_size=7), 2600) == 7


def test_a_run_with_too_few_steps_logs_a_warning(tiny, tmp_path, caplog):
    options = dict(d_model=16, window_length=24, window_stride=12, epochs=2, device="cpu")
    with caplog.at_level(logging.WARNING, logger="affstream"):
        summary = train_head(tiny, task="expr", head="temporal", out=tmp_path / "p", recipe="paper", **options)
    assert summary["total_steps"] < 100
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("optimizer steps in all" in m and "--min-steps" in m for m in warned), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="affstream"):
        summary = train_head(tiny, task="expr", head="temporal", out=tmp_path / "d", **options)
    assert summary["total_steps"] >= 200  # the floor
    assert not [r for r in caplog.records if "optimizer steps" in r.getMessage()]
    card = read_card(tmp_path / "d")
    training = card.config["training"]
    assert training["total_steps"] == summary["total_steps"] and training["recipe"] == "default"
    assert training["differs_from_paper"]["lr"]["paper"] == 3e-5
    assert "3e-5" in training["differs_from_paper"]["lr"]["why"]


# --------------------------------------------------------------------------- windows re-cut every pass


def test_recut_windows_move_with_the_pass_and_cover_the_sequence():
    n, w, s = 430, 300, 200
    seen = []
    for p in range(1, 9):
        plan = recut_windows(n, w, s, np.random.default_rng([0, p]))
        starts = [a for a, _ in plan]
        assert starts == sorted(starts) and all(0 < v <= w and a + v <= n for a, v in plan)
        covered = np.zeros(n, bool)
        for a, v in plan:
            covered[a : a + v] = True
        # a stub shorter than half a window may be dropped at either end; all else is covered
        assert covered[w // 2 - (w - s) : n - (w // 2 - (w - s))].all()
        seen.append(tuple(plan))
    assert len(set(seen)) > 4  # other windows in other passes
    assert recut_windows(n, w, s, np.random.default_rng([0, 3])) == list(seen[2])  # seeded
    lengths = [v for _, v in recut_windows(5000, w, s, np.random.default_rng(1), min_length=100)[1:-1]]
    assert min(lengths) >= 100 and max(lengths) <= w and len(set(lengths)) > 5
    assert recut_windows(0, w, s, np.random.default_rng(0)) == []
    for seed in range(5):  # a sequence shorter than a window starts with one window over all of it
        assert recut_windows(10, w, s, np.random.default_rng(seed))[0] == (0, 10)


def test_batch_stream_is_a_pure_function_of_the_step(tiny):
    bank = FeatureBank.open(tiny)
    base = window_set(bank, bank.split("Train_Set"), ("expr",), 24, 12)
    from affstream.train.datasets import recut_window_set

    def view(p):
        return recut_window_set(base, 12, 5, p)

    stream = BatchStream(view, 4, seed=5)
    run = list(stream.take(0, 40))
    again = BatchStream(view, 4, seed=5)
    later = list(again.take(17, 23))  # a resumed run starts at step 17
    for (d1, i1), (d2, i2) in zip(run[17:], later, strict=True):
        assert np.array_equal(d1.items[i1], d2.items[i2])
    assert stream.pass_batches(1) != 0 and stream.locate(stream.pass_batches(1)) == (2, 0)
    batch = run[0][0].batch(run[0][1])
    assert batch["features"].shape[1] == int(run[0][0].items[run[0][1], 2].max())  # padded to the longest
    # fixed samples: pass p is shuffled_batches(..., p), so epoch e is pass e when an epoch is a pass
    fixed = BatchStream(lambda p: base, 4, seed=5)
    expected = shuffled_batches(len(base), 4, 5, 2)
    got = [i for _, i in fixed.take(len(shuffled_batches(len(base), 4, 5, 1)), len(expected))]
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


# --------------------------------------------------------------------------- class weights, hold-out


def test_class_weights_by_hand():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, -1])
    w = expr_class_weights(labels, n_classes=4)
    counts = np.array([6, 2, 1, 0])
    raw = np.array([9 / (4 * 6), 9 / (4 * 2), 9 / (4 * 1), 1.0])
    assert np.allclose(w, raw * 9 / (raw * counts).sum())
    assert np.isclose((w * counts).sum(), counts.sum())  # mean weight over the frames is 1
    au = np.zeros((10, 12), int)
    au[:2, 0] = 1  # 2 positives, 8 negatives -> 4
    au[:, 1] = 1  # no negative -> 1
    au[5:, 2] = -1  # 5 annotated, all negative -> 1
    au[0, 3] = 1  # 1 of 10 -> 9
    pw = au_pos_weights(au)
    assert pw[:4].tolist() == [4.0, 1.0, 1.0, 9.0] and pw[4] == 1.0
    assert au_pos_weights(np.vstack([np.eye(12, dtype=int)[:1], np.zeros((99, 12), int)]))[0] == 10.0  # clipped
    logits = torch.tensor([[2.0, -1.0] + [0.0] * 10, [-0.5, 0.3] + [0.0] * 10])
    target = torch.tensor([[1.0, 0.0] + [0.0] * 10, [0.0, 1.0] + [1.0] * 10])
    weights = torch.tensor([3.0, 2.0] + [1.0] * 10)

    def bce(z, y, p):
        return -(p * y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))

    by_hand = [np.mean([bce(float(logits[i, j]), float(target[i, j]), float(weights[j])) for j in range(12)]) for i in range(2)]
    assert np.allclose(au_loss(logits, target, pos_weight=weights).numpy(), by_hand, atol=1e-6)
    ce = expr_loss(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]), torch.tensor([0]), weight=torch.arange(1.0, 9.0))
    assert np.isclose(float(ce[0]), -np.log(np.e / (np.e + 7)))  # weight of class 0 is 1


def test_holdout_takes_whole_videos(tiny):
    bank = FeatureBank.open(tiny)
    names = bank.split("Train_Set")
    pair = [n for n in names if n.endswith(("_left", "_right"))]
    for seed in range(6):
        fit, held = split_holdout(bank, names, 0.2, seed)
        assert sorted(fit + held) == sorted(names) and held and fit
        assert {bank.people[n]["video"] for n in fit}.isdisjoint({bank.people[n]["video"] for n in held})
        assert not pair or set(pair) <= set(fit) or set(pair) <= set(held)
    assert split_holdout(bank, names, 0.0, 0) == (names, [])
    assert split_holdout(bank, names[:1], 0.5, 0) == (names[:1], [])


# --------------------------------------------------------------------------- the small set, defaults only


def _fit_linear(x: np.ndarray, y: np.ndarray, kind: str, pos_weight: torch.Tensor | None = None) -> torch.nn.Linear:
    """A linear model on features x (N, D): multinomial logistic ("ce", y (N,) int),
    per-AU logistic ("bce", y (N, 12) 0/1, class-balanced by ``pos_weight``) or
    ridge ("mse", y (N, 2)); L2 1e-3, full-batch L-BFGS."""
    torch.manual_seed(0)
    xt = torch.from_numpy(np.asarray(x, np.float32))
    yt = torch.from_numpy(np.asarray(y))
    n_out = {"ce": 8, "bce": 12, "mse": 2}[kind]
    model = torch.nn.Linear(xt.shape[1], n_out)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = model(xt)
        if kind == "ce":
            loss = torch.nn.functional.cross_entropy(z, yt.long())
        elif kind == "bce":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt.float(), pos_weight=pos_weight)
        else:
            loss = (z - yt.float()).pow(2).mean()
        loss = loss + 1e-3 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _frames(bank: FeatureBank, split: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in bank.split(split):
        y = getattr(bank.labels(name), task)
        valid = {
            "expr": y >= 0,
            "au": (y >= 0).all(axis=-1) if y.ndim == 2 else None,
            "va": np.isfinite(y).all(axis=-1) if y.ndim == 2 else None,
        }[task]
        keep = bank.present(name) & valid
        xs.append(np.asarray(bank.features(name), np.float32)[keep])
        ys.append(y[keep])
    return np.concatenate(xs), np.concatenate(ys)


def _balanced_logistic_au_f1(path) -> float:
    bank = FeatureBank.open(path)
    x, y = _frames(bank, "Train_Set", "au")
    prevalence = y.mean(axis=0)
    pos_weight = torch.tensor((1 - prevalence) / np.maximum(prevalence, 1e-6), dtype=torch.float32)
    model = _fit_linear(x, y, "bce", pos_weight)
    xv, yv = _frames(bank, "Validation_Set", "au")
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.from_numpy(xv))).numpy()
    return metrics.au_f1(yv, probs)[0]


@pytest.mark.slow
def test_temporal_head_beats_the_mlp_on_expressions(small, tmp_path):
    temporal = train_head(small, task="expr", head="temporal", out=tmp_path / "t", device="cpu")
    mlp = train_head(small, task="expr", head="mlp", out=tmp_path / "m", device="cpu")
    t, m = temporal["metrics"]["expr_f1"], mlp["metrics"]["expr_f1"]
    print(
        f"\nsmall set, defaults: EXPR F1 temporal {t:.3f} (best epoch {temporal['best_epoch']}, "
        f"{temporal['total_steps']} steps) vs MLP {m:.3f}"
    )
    assert temporal["best_epoch"] > 1  # it learns past its first epoch
    assert t > m + 0.05


@pytest.mark.slow
def test_temporal_head_beats_the_mlp_on_valence_arousal(small, tmp_path):
    temporal = train_head(small, task="va", head="temporal", out=tmp_path / "t", device="cpu")
    mlp = train_head(small, task="va", head="mlp", out=tmp_path / "m", device="cpu")
    t, m = temporal["metrics"]["va_ccc"], mlp["metrics"]["va_ccc"]
    print(f"\nsmall set, defaults: VA CCC temporal {t:.3f} vs MLP {m:.3f}")
    assert t > m + 0.1


def _check_trained_thresholds(path, out, summary) -> dict:
    """The card holds thresholds tuned on held-out whole training videos; ``evaluate``
    uses them and reports the F1 at 0.5 beside them. Returns the evaluation."""
    bank = FeatureBank.open(path)
    card = read_card(out)
    training = card.config["training"]
    held, fit = training["au_threshold_people"], training["fit_people"]
    assert held and fit and set(held).isdisjoint(fit)
    assert set(held) <= set(bank.split("Train_Set")) and set(held).isdisjoint(bank.split("Validation_Set"))
    assert card.au_thresholds != (0.5,) * len(AU_LABELS)
    assert card.metrics["au_thresholds_tuned_on"].startswith("held-out training videos: ")
    result = evaluate_head(path, out, device="cpu")
    json.dumps(result)
    assert result["au_f1"] == pytest.approx(summary["metrics"]["au_f1"], abs=1e-9)
    assert list(result["au_thresholds"].values()) == pytest.approx(list(card.au_thresholds))
    assert result["au_thresholds_tuned_on"] == card.metrics["au_thresholds_tuned_on"]
    assert 0 < result["au_f1_at_0.5"] <= 1 and set(result["au_f1_per_au_at_0.5"]) == set(AU_LABELS)
    return result


@pytest.mark.slow
def test_temporal_au_head_with_trained_thresholds_beats_balanced_logistic_regression(small, tmp_path):
    summary = train_head(small, task="au", head="temporal", out=tmp_path / "t", device="cpu")
    result = _check_trained_thresholds(small, tmp_path / "t", summary)
    logistic = _balanced_logistic_au_f1(small)
    print(
        f"\nsmall set, defaults: AU F1 temporal {result['au_f1']:.3f} with trained thresholds, "
        f"{result['au_f1_at_0.5']:.3f} at 0.5; class-balanced logistic regression {logistic:.3f}"
    )
    assert result["au_f1"] >= logistic


@pytest.mark.slow
def test_mlp_au_head_with_trained_thresholds_matches_balanced_logistic_regression(small, tmp_path):
    summary = train_head(small, task="au", head="mlp", out=tmp_path / "m", device="cpu")
    result = _check_trained_thresholds(small, tmp_path / "m", summary)
    logistic = _balanced_logistic_au_f1(small)
    print(
        f"\nsmall set, defaults: AU F1 MLP {result['au_f1']:.3f} with trained thresholds, "
        f"{result['au_f1_at_0.5']:.3f} at 0.5; class-balanced logistic regression {logistic:.3f}"
    )
    assert result["au_f1"] >= logistic
    assert result["au_f1"] > result["au_f1_at_0.5"]


def test_cli_warns_about_a_run_that_cannot_learn_and_reports_both_au_scores(tiny, tmp_path):
    from click.testing import CliRunner

    from affstream.cli import main

    common = ["--features", str(tiny), "--epochs", "2", "--device", "cpu"]
    result = CliRunner().invoke(
        main,
        [
            "train",
            *common,
            "--task",
            "expr",
            "--head",
            "temporal",
            "--recipe",
            "paper",
            "--d-model",
            "16",
            "--window",
            "24",
            "--stride",
            "12",
            "-o",
            str(tmp_path / "p"),
        ],
    )
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stderr.split())
    assert "optimizer steps in all" in flat and "raise --min-steps" in flat and "Traceback" not in flat
    result = CliRunner().invoke(main, ["train", *common, "--task", "au", "--width", "16", "-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "at threshold 0.5" in result.stderr
    result = CliRunner().invoke(main, ["evaluate", "--features", str(tiny), "--head", str(tmp_path / "a"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"au_f1", "au_f1_at_0.5", "au_thresholds", "au_thresholds_tuned_on"} <= set(data)
    assert data["au_thresholds_tuned_on"].startswith("held-out training videos")
    bad = CliRunner().invoke(main, ["train", *common, "--task", "expr", "--window-min", "5", "-o", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "window_min" in bad.stderr and not (tmp_path / "b.json").exists()
