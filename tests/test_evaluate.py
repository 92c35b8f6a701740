"""Evaluating heads on a feature bank (ABAW metrics) and exporting ABAW submission files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from synth_affwild import make_feature_bank

from affstream.errors import ConfigError, DataError
from affstream.heads.base import read_card, save_head
from affstream.heads.mlp import MLPHead
from affstream.heads.temporal import TemporalHead
from affstream.labels import AU_LABELS, EXPR_LABELS
from affstream.train import metrics
from affstream.train.affwild import PersonLabels, unannotated
from affstream.train.bank import BankWriter, FeatureBank
from affstream.train.evaluate import evaluate_head
from affstream.train.export import EXPORT_FILES, export_abaw, nearest_present

TASKS = ("expr", "au", "va")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    return make_feature_bank(tmp_path_factory.mktemp("bank") / "bank", n_people=6, frames=(60, 110), dim=16, seed=4)


@pytest.fixture(scope="module")
def bank(bank_path):
    return FeatureBank.open(bank_path)


def _save(head, path):
    torch.manual_seed(0)
    save_head(head.eval(), path)
    return path


@pytest.fixture(scope="module")
def mlp_path(bank, tmp_path_factory):
    torch.manual_seed(11)
    head = MLPHead(16, TASKS, width=32, dropout=0.1, backbone=bank.backbone, name="mlp")
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in head.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.01, 0.05)
    return _save(head, tmp_path_factory.mktemp("heads") / "mlp")


def _present_feats(bank, name):
    rows = np.flatnonzero(bank.present(name))
    return rows, torch.from_numpy(np.asarray(bank.features(name)[rows], dtype=np.float32))


def _nearest_face(present, k):
    """Row of the face frame nearest to frame row k (ties: the earlier), by a plain scan."""
    rows = np.flatnonzero(present)
    return min(rows, key=lambda r: (abs(r - k), r))


def _reference(bank, names, predict, thresholds=0.5):
    """ABAW metrics computed by hand: every annotated frame is scored; a frame without a
    face takes the prediction of the nearest frame with one (every synthetic person here
    has faces)."""
    truth = {t: [] for t in TASKS}
    pred = {t: [] for t in TASKS}
    filled = {t: 0 for t in TASKS}
    for name in names:
        rows, feats = _present_feats(bank, name)
        with torch.no_grad():
            out = predict(feats)
        present = bank.present(name)
        at = {int(r): i for i, r in enumerate(rows)}
        labels = bank.labels(name)
        valid = {"expr": labels.expr >= 0, "au": (labels.au >= 0).all(1), "va": ~np.isnan(labels.va).any(1)}
        values = {"expr": out.expr_logits.numpy().argmax(1), "au": torch.sigmoid(out.au_logits).numpy(),
                  "va": out.va.numpy()}
        for t in TASKS:
            for k in np.flatnonzero(valid[t]):
                truth[t].append(getattr(labels, t)[k])
                pred[t].append(values[t][at[int(_nearest_face(present, k))]])
                filled[t] += int(not present[k])
    cat = {t: (np.asarray(truth[t]), np.asarray(pred[t])) for t in TASKS}
    au_mean, au_per = metrics.au_f1(*cat["au"], thresholds)
    va_mean, val, aro = metrics.va_ccc(*cat["va"])
    return {
        "expr_f1": metrics.expr_macro_f1(*cat["expr"]),
        "expr_per": metrics.f1_per_class(*cat["expr"]),
        "au_f1": au_mean, "au_per": au_per, "va_ccc": va_mean, "va": (val, aro),
        "n": {t: len(cat[t][0]) for t in TASKS}, "au_truth": cat["au"], "filled": filled,
    }


def test_evaluate_mlp_matches_metrics_by_hand(bank, bank_path, mlp_path):
    from affstream.heads.base import load_head_checkpoint

    result = evaluate_head(bank_path, mlp_path, device="cpu")
    json.dumps(result)  # JSON-ready
    assert {"expr_f1", "au_f1", "va_ccc", "expr_f1_per_class", "au_f1_per_au", "va_ccc_valence",
            "va_ccc_arousal", "n_frames"} <= set(result)
    head, _ = load_head_checkpoint(mlp_path)
    ref = _reference(bank, bank.split("Validation_Set"), head)
    assert result["expr_f1"] == pytest.approx(ref["expr_f1"], abs=1e-12)
    assert list(result["expr_f1_per_class"]) == list(EXPR_LABELS)
    assert np.allclose(list(result["expr_f1_per_class"].values()), ref["expr_per"], atol=1e-12)
    assert result["au_f1"] == pytest.approx(ref["au_f1"], abs=1e-12)
    assert list(result["au_f1_per_au"]) == list(AU_LABELS)
    assert np.allclose(list(result["au_f1_per_au"].values()), ref["au_per"], atol=1e-12)
    assert result["va_ccc"] == pytest.approx(ref["va_ccc"], abs=1e-9)
    assert (result["va_ccc_valence"], result["va_ccc_arousal"]) == pytest.approx(ref["va"], abs=1e-9)
    assert result["n_frames"] == ref["n"]
    # Annotated frames without a face are scored with the nearest face's prediction.
    assert result["n_filled"] == ref["filled"] and result["n_filled"]["expr"] > 0
    n_annotated = sum(int((bank.labels(n).expr >= 0).sum()) for n in bank.split("Validation_Set"))
    assert result["n_frames"]["expr"] == n_annotated
    train = evaluate_head(bank_path, mlp_path, split="Train_Set", device="cpu")
    assert train["n_frames"]["expr"] != result["n_frames"]["expr"]


def test_evaluate_temporal_head_over_whole_sequences(bank, bank_path, tmp_path):
    torch.manual_seed(3)
    # Window longer than every sequence: the head sees each person's whole present
    # sequence in one window, so its predictions are a single forward pass.
    head = TemporalHead(16, TASKS, d_model=16, dropout=0.0, window_length=200, window_stride=100,
                        backbone=bank.backbone).eval()
    path = _save(head, tmp_path / "temporal")
    result = evaluate_head(bank_path, path, device="cpu")
    ref = _reference(bank, bank.split("Validation_Set"), lambda f: _flat(head(f[None])))
    assert result["expr_f1"] == pytest.approx(ref["expr_f1"], abs=1e-12)
    assert result["au_f1"] == pytest.approx(ref["au_f1"], abs=1e-12)
    assert result["va_ccc"] == pytest.approx(ref["va_ccc"], abs=1e-5)


def _stitched_reference(head, feats, length, stride):
    """Hand-made windowed prediction of one person: plan_windows, one forward pass per
    window (batch of one, padding masked), stitch_windows of the raw scores."""
    from affstream.heads.base import HeadOutputs
    from affstream.temporal.windows import plan_windows, stitch_windows

    n = feats.shape[0]
    plan = plan_windows(n, length, stride)
    scores = {"va": [], "expr_logits": [], "au_logits": []}
    for start, valid in plan:
        x = torch.zeros(1, length, feats.shape[1])
        x[0, :valid] = feats[start:start + valid]
        mask = torch.zeros(1, length, dtype=torch.bool)
        mask[0, :valid] = True
        with torch.no_grad():
            out = head(x, mask)
        for key in scores:
            scores[key].append(getattr(out, key)[0].numpy())
    stitched = {k: torch.from_numpy(stitch_windows(np.stack(v), plan, n)) for k, v in scores.items()}
    return HeadOutputs(**stitched), plan


def test_evaluate_temporal_head_stitches_overlapping_windows(bank, bank_path, tmp_path):
    from affstream.train.evaluate import PersonOutputs, pool, predict_person, score

    length, stride = 24, 16  # shorter than every sequence (58+ present frames)
    torch.manual_seed(7)
    head = TemporalHead(16, TASKS, d_model=16, dropout=0.0, window_length=length, window_stride=stride,
                        backbone=bank.backbone).eval()
    path = _save(head, tmp_path / "temporal")
    names = bank.split("Validation_Set")
    plans, hand_made = {}, []
    for name in names:
        rows, feats = _present_feats(bank, name)
        ref, plans[name] = _stitched_reference(head, feats, length, stride)
        ref_scores = {"va": ref.va.numpy(), "expr": ref.expr_logits.numpy(), "au": ref.au_logits.numpy()}
        got = predict_person(head, bank, name)
        np.testing.assert_array_equal(got.rows, rows)
        for task in TASKS:
            np.testing.assert_allclose(got.scores[task], ref_scores[task], atol=1e-5)
        hand_made.append(PersonOutputs(name, int(bank.people[name]["n_frames"]), rows, ref_scores))
        # windowed predictions are not those of one pass over the whole sequence
        with torch.no_grad():
            whole = head(feats[None]).va[0].numpy()
        assert np.abs(whole - ref_scores["va"]).max() > 1e-3
    # several overlapping windows per person, and at least one end-aligned window
    assert all(len(plan) >= 3 for plan in plans.values())
    assert any(plan[-1][0] % stride for plan in plans.values())
    # evaluate_head scores exactly these predictions
    result = evaluate_head(bank_path, path, device="cpu")
    expected = score(pool(bank, hand_made, TASKS), TASKS, np.full(len(AU_LABELS), 0.5))
    assert result["n_frames"] == expected["n_frames"]
    for key in ("expr_f1", "au_f1"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12)
    assert result["va_ccc"] == pytest.approx(expected["va_ccc"], abs=1e-5)


def _flat(out):
    from affstream.heads.base import HeadOutputs

    return HeadOutputs(va=out.va[0], expr_logits=out.expr_logits[0], au_logits=out.au_logits[0])


def test_evaluate_only_reports_the_heads_tasks(bank, bank_path, tmp_path):
    path = _save(MLPHead(16, ("va",), width=8, backbone=bank.backbone), tmp_path / "va")
    result = evaluate_head(bank_path, path, device="cpu")
    assert "va_ccc" in result and "expr_f1" not in result and "au_f1" not in result
    assert set(result["n_frames"]) == {"va"}
    with pytest.raises(ConfigError, match="AU"):
        evaluate_head(bank_path, path, tune_thresholds=True, device="cpu")


def test_tune_thresholds_rewrites_the_card(bank, bank_path, mlp_path, tmp_path):
    shutil.copy(str(mlp_path) + ".safetensors", tmp_path / "h.safetensors")
    shutil.copy(str(mlp_path) + ".json", tmp_path / "h.json")
    weights_before = (tmp_path / "h.safetensors").read_bytes()
    plain = evaluate_head(bank_path, tmp_path / "h", device="cpu")
    # Tuned on the split it is scored on, tuning can only help there.
    tuned = evaluate_head(bank_path, tmp_path / "h", tune_thresholds=True, tune_split="Validation_Set", device="cpu")
    card = read_card(tmp_path / "h")
    assert tuned["au_thresholds_tuned_on"] == card.metrics["au_thresholds_tuned_on"] == "Validation_Set"
    assert list(tuned["au_thresholds"].values()) == pytest.approx(list(card.au_thresholds))
    assert card.au_thresholds != (0.5,) * 12
    assert tuned["au_f1"] >= plain["au_f1"]
    assert all(t >= p - 1e-12 for t, p in zip(tuned["au_f1_per_au"].values(), plain["au_f1_per_au"].values(), strict=True))
    assert (tmp_path / "h.safetensors").read_bytes() == weights_before
    assert not list(tmp_path.glob("*.tmp*"))
    # A later evaluation uses the stored thresholds.
    again = evaluate_head(bank_path, tmp_path / "h", device="cpu")
    assert again["au_f1"] == pytest.approx(tuned["au_f1"])


def test_evaluate_rejects_a_bank_of_another_backbone(bank, bank_path, tmp_path):
    path = _save(MLPHead(16, ("expr",), width=8, backbone="ViT-B-32:openai"), tmp_path / "other")
    with pytest.raises(ConfigError) as err:
        evaluate_head(bank_path, path, device="cpu")
    assert "ViT-B-32:openai" in str(err.value) and bank.backbone in str(err.value)
    wide = _save(MLPHead(24, ("expr",), width=8, backbone=bank.backbone), tmp_path / "wide")
    with pytest.raises(ConfigError, match="24-d"):
        evaluate_head(bank_path, wide, device="cpu")
    with pytest.raises(DataError, match=r"index\.json"):
        evaluate_head(tmp_path / "nowhere", path, device="cpu")
    with pytest.raises(DataError, match="Test_Set"):
        evaluate_head(bank_path, _save(MLPHead(16, ("expr",), width=8, backbone=bank.backbone), tmp_path / "e"),
                      split="Test_Set", device="cpu")


# ---------------------------------------------------------------- export


def test_nearest_present_prefers_the_earlier_frame_on_ties():
    present = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0], dtype=bool)
    assert nearest_present(present).tolist() == [1, 1, 1, 4, 4, 4, 6, 6, 6]
    assert nearest_present(np.array([1, 0, 1], dtype=bool)).tolist() == [0, 0, 2]
    assert nearest_present(np.array([0, 0, 1], dtype=bool)).tolist() == [2, 2, 2]
    assert nearest_present(np.zeros(4, dtype=bool)) is None


def _read(path):
    lines = path.read_text().splitlines()
    return lines[0], [line.split(",") for line in lines[1:]]


def test_export_writes_every_frame_and_fills_faceless_ones(bank, bank_path, mlp_path, tmp_path):
    from affstream.heads.base import load_head_checkpoint

    summary = export_abaw(bank_path, mlp_path, tmp_path / "out", device="cpu")
    names = bank.split("Validation_Set")
    n_total = sum(bank.people[n]["n_frames"] for n in names)
    n_missing = sum(int((~bank.present(n)).sum()) for n in names)
    assert n_missing > 0
    assert summary["frames"] == n_total and summary["people"] == len(names)
    assert summary["filled"] == n_missing and summary["people_without_face"] == []
    head, _ = load_head_checkpoint(mlp_path)
    files = {t: tmp_path / "out" / f for t, f in EXPORT_FILES.items()}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(EXPORT_FILES.values())
    headers = {t: _read(p)[0] for t, p in files.items()}
    assert headers["expr"] == "image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
    assert headers["au"] == "image_location,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
    assert headers["va"] == "image_location,valence,arousal"
    rows = {t: _read(p)[1] for t, p in files.items()}
    expected_locations = [f"{n}/{k:05d}.jpg" for n in names for k in range(1, bank.people[n]["n_frames"] + 1)]
    for t in TASKS:
        assert [r[0] for r in rows[t]] == expected_locations
    offset = 0
    for name in names:
        n = bank.people[name]["n_frames"]
        present = bank.present(name)
        with torch.no_grad():
            out = head(torch.from_numpy(np.asarray(bank.features(name), dtype=np.float32)))
        expr = np.array([int(r[1]) for r in rows["expr"][offset:offset + n]])
        au = np.array([[int(x) for x in r[1:]] for r in rows["au"][offset:offset + n]])
        va = np.array([[float(x) for x in r[1:]] for r in rows["va"][offset:offset + n]])
        assert np.array_equal(expr[present], out.expr_logits.numpy()[present].argmax(1))
        assert np.array_equal(au[present], (torch.sigmoid(out.au_logits).numpy()[present] >= 0.5).astype(int))
        assert np.allclose(va[present], out.va.numpy()[present], atol=1e-6)
        source = nearest_present(present)
        assert np.array_equal(expr, expr[source]) and np.array_equal(au, au[source])
        assert np.array_equal(va, va[source])
        offset += n


def test_export_people_list_single_task_and_a_faceless_person(bank, bank_path, mlp_path, tmp_path):
    work = tmp_path / "bank"
    shutil.copytree(bank_path, work)
    writer = BankWriter(work, backbone=bank.backbone, backbone_sha256=bank.backbone_sha256,
                        feature_dim=16, dtype=bank.dtype, source=bank.source)
    ghost = PersonLabels(name="ghost", video="ghost", split="Validation_Set", n_frames=7,
                         expr=unannotated("expr", 7), au=None, va=None)
    writer.add(ghost, np.zeros((7, 16), np.float32), np.zeros(7, bool))
    pair = next(n for n in bank.people if n.endswith("_left"))[: -len("_left")]
    people = [bank.split("Train_Set")[0], "ghost", pair]
    summary = export_abaw(work, mlp_path, tmp_path / "out", task="expr", people=people, device="cpu")
    assert list(summary["files"]) == ["expr"] and [p.name for p in (tmp_path / "out").iterdir()] == ["EXPR.txt"]
    assert summary["people"] == 4 and summary["people_without_face"] == ["ghost"]
    assert summary["filled_without_face"] == 7
    _, rows = _read(tmp_path / "out" / "EXPR.txt")
    order = list(dict.fromkeys(r[0].split("/")[0] for r in rows))
    assert order == [people[0], "ghost", f"{pair}_left", f"{pair}_right"]
    others = np.array([int(r[1]) for r in rows if not r[0].startswith("ghost/")])
    ghost_rows = [int(r[1]) for r in rows if r[0].startswith("ghost/")]
    assert ghost_rows == [int(np.bincount(others, minlength=8).argmax())] * 7
    with pytest.raises(DataError, match="nobody"):
        export_abaw(work, mlp_path, tmp_path / "out2", people=["nobody"], device="cpu")
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())
    va_head = _save(MLPHead(16, ("va",), width=8, backbone=bank.backbone), tmp_path / "va")
    with pytest.raises(ConfigError, match="expr"):
        export_abaw(work, va_head, tmp_path / "out3", task="expr", device="cpu")


def test_tune_thresholds_defaults_to_the_training_split(bank, bank_path, mlp_path, tmp_path):
    from affstream.heads.base import load_head_checkpoint
    from affstream.train import metrics as m
    from affstream.train.evaluate import pool, predict_people

    shutil.copy(str(mlp_path) + ".safetensors", tmp_path / "h.safetensors")
    shutil.copy(str(mlp_path) + ".json", tmp_path / "h.json")
    result = evaluate_head(bank_path, tmp_path / "h", tune_thresholds=True, device="cpu")
    assert result["split"] == "Validation_Set" and result["au_thresholds_tuned_on"] == "Train_Set"
    head, _ = load_head_checkpoint(mlp_path)
    train = pool(bank, predict_people(head, bank, bank.split("Train_Set")), ("au",))
    expected = m.tune_au_thresholds(train.truth["au"], 1 / (1 + np.exp(-train.scores["au"])))
    assert list(result["au_thresholds"].values()) == pytest.approx(list(expected), abs=1e-6)


def test_score_head_returns_the_tuned_card_without_writing_it(bank, bank_path, mlp_path, tmp_path, monkeypatch):
    from affstream.train import evaluate as ev
    from affstream.train.evaluate import score_head, write_card

    shutil.copy(str(mlp_path) + ".safetensors", tmp_path / "h.safetensors")
    shutil.copy(str(mlp_path) + ".json", tmp_path / "h.json")
    card_before = (tmp_path / "h.json").read_bytes()
    result, tuned = score_head(bank_path, tmp_path / "h", tune_thresholds=True, device="cpu")
    assert (tmp_path / "h.json").read_bytes() == card_before  # nothing written yet
    assert tuned.metrics["au_thresholds_tuned_on"] == "Train_Set"
    assert list(result["au_thresholds"].values()) == pytest.approx(list(tuned.au_thresholds))
    write_card(tuned, tmp_path / "h")
    assert read_card(tmp_path / "h").au_thresholds == tuned.au_thresholds
    assert score_head(bank_path, tmp_path / "h", device="cpu")[1] is None
    # a head without AUs is refused before anything is predicted
    va = _save(MLPHead(16, ("va",), width=8, backbone=bank.backbone), tmp_path / "va")
    monkeypatch.setattr(ev, "predict_people", lambda *a, **k: pytest.fail("predicted before the AU check"))
    with pytest.raises(ConfigError, match="needs a head that predicts AUs"):
        score_head(bank_path, va, tune_thresholds=True, device="cpu")
