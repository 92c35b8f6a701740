"""Feature bank: round trip, memory mapping, resumability, validation; synthetic banks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synth_affwild import AU_RULES, make_feature_bank, read_truth

from affstream.errors import DataError
from affstream.labels import AU_LABELS, EXPR_LABELS
from affstream.train.affwild import PersonLabels
from affstream.train.bank import BankWriter, FeatureBank, person_files

DIM = 8


def _person(name, n, split="Train_Set", seed=0, tasks=("expr", "au", "va")):
    rng = np.random.default_rng(seed)
    expr = rng.integers(-1, 8, size=n).astype(np.int64)
    au = rng.integers(0, 2, size=(n, 12)).astype(np.int8)
    au[1] = -1
    va = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    va[2] = np.nan
    arrays = {"expr": expr, "au": au, "va": va}
    video = name.removesuffix("_left").removesuffix("_right")
    return PersonLabels(name=name, video=video, split=split, n_frames=n,
                        **{t: (arrays[t] if t in tasks else None) for t in arrays})


def _features(n, seed=0):
    rng = np.random.default_rng(seed + 100)
    feats = rng.normal(size=(n, DIM)).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _writer(path, **changes):
    options = dict(backbone="tiny:random", backbone_sha256=None, feature_dim=DIM, source="crops")
    options.update(changes)
    return BankWriter(path, **options)


def test_round_trip(tmp_path):
    bank_dir = tmp_path / "bank"
    writer = _writer(bank_dir)
    a, b = _person("v1", 30), _person("v2_left", 20, split="Validation_Set", seed=1, tasks=("va",))
    present_a = np.ones(30, dtype=bool)
    present_a[[0, 7, 29]] = False
    feats_a = _features(30)
    feats_a[7] = np.nan  # a missing frame's garbage never reaches the bank
    writer.add(a, feats_a, present_a)
    writer.add(b, _features(20, 1), np.ones(20, dtype=bool))

    bank = FeatureBank.open(bank_dir)
    assert bank.backbone == "tiny:random" and bank.backbone_sha256 is None
    assert bank.feature_dim == DIM and bank.dtype == "float16" and bank.source == "crops"
    assert list(bank.people) == ["v1", "v2_left"] and len(bank) == 2 and "v1" in bank
    assert bank.people["v1"] == {"video": "v1", "split": "Train_Set", "n_frames": 30,
                                 "n_missing": 3, "file": "people/v1.npy"}
    assert bank.split("Train_Set") == ["v1"] and bank.split("Validation_Set") == ["v2_left"]

    feats = bank.features("v1")
    assert isinstance(feats, np.memmap) and feats.dtype == np.float16 and feats.shape == (30, DIM)
    assert not feats.flags.writeable and bank.features("v1") is feats
    np.testing.assert_array_equal(feats[~present_a], 0)
    np.testing.assert_allclose(feats[present_a], feats_a[present_a], atol=1e-3)
    np.testing.assert_array_equal(bank.present("v1"), present_a)

    labels = bank.labels("v1")
    assert (labels.name, labels.video, labels.split, labels.n_frames) == ("v1", "v1", "Train_Set", 30)
    np.testing.assert_array_equal(labels.expr, a.expr)
    np.testing.assert_array_equal(labels.au, a.au)
    np.testing.assert_array_equal(labels.va, a.va)  # NaN rows compare equal here
    assert labels.expr.dtype == np.int64 and labels.au.dtype == np.int8 and labels.va.dtype == np.float32
    only_va = bank.labels("v2_left")
    assert only_va.expr is None and only_va.au is None and only_va.video == "v2"

    index = json.loads((bank_dir / "index.json").read_text())
    assert index["format"] == "affstream-feature-bank" and index["version"] == 1
    with pytest.raises(DataError, match="no person 'v3'"):
        bank.features("v3")


def test_float32_bank_is_exact(tmp_path):
    writer = _writer(tmp_path, dtype="float32")
    feats = _features(5)
    writer.add(_person("v", 5), feats, np.ones(5, dtype=bool))
    np.testing.assert_array_equal(FeatureBank.open(tmp_path).features("v"), feats)


def test_resume_skips_done_and_redoes_interrupted(tmp_path):
    writer = _writer(tmp_path)
    writer.add(_person("done", 10), _features(10), np.ones(10, dtype=bool))
    # an interrupted person: its feature file got written under a temp name, no index entry
    leftover = tmp_path / "people" / "half.npy.tmp-12345"
    leftover.write_bytes(b"partial")
    again = _writer(tmp_path)
    assert again.has("done") and not again.has("half")
    assert not leftover.exists()
    again.add(_person("half", 12), _features(12), np.ones(12, dtype=bool))
    bank = FeatureBank.open(tmp_path)
    assert list(bank.people) == ["done", "half"] and bank.features("half").shape == (12, DIM)
    # a listed person whose file vanished is not complete
    (tmp_path / person_files("done")[1]).unlink()
    assert not _writer(tmp_path).has("done")


def test_mismatched_settings_are_rejected(tmp_path):
    _writer(tmp_path, backbone="ViT-B-32:openai")
    with pytest.raises(DataError, match="built with backbone 'ViT-B-32:openai', not 'ViT-L-14:openai'"):
        _writer(tmp_path, backbone="ViT-L-14:openai")
    with pytest.raises(DataError, match="feature_dim 8, this run 16"):
        _writer(tmp_path, backbone="ViT-B-32:openai", feature_dim=16)
    with pytest.raises(DataError, match="dtype"):
        _writer(tmp_path, backbone="ViT-B-32:openai", dtype="float32")
    with pytest.raises(DataError, match="source"):
        _writer(tmp_path, backbone="ViT-B-32:openai", source="videos")


def test_add_validates_shapes(tmp_path):
    writer = _writer(tmp_path)
    with pytest.raises(DataError, match=r"features of 'v' have shape \(9, 8\), expected \(10, 8\)"):
        writer.add(_person("v", 10), _features(9), np.ones(10, dtype=bool))
    with pytest.raises(DataError, match="present flags"):
        writer.add(_person("v", 10), _features(10), np.ones(9, dtype=bool))
    bad = _features(10)
    bad[3] = np.inf
    with pytest.raises(DataError, match="NaN or infinity"):
        writer.add(_person("v", 10), bad, np.ones(10, dtype=bool))
    with pytest.raises(DataError, match="cannot be stored"):
        writer.add(_person("../v", 10), _features(10), np.ones(10, dtype=bool))
    assert FeatureBank.open(tmp_path).people == {}


def test_open_errors(tmp_path):
    with pytest.raises(DataError, match="not a feature bank"):
        FeatureBank.open(tmp_path)
    (tmp_path / "index.json").write_text("{broken")
    with pytest.raises(DataError, match="unreadable feature bank index"):
        FeatureBank.open(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not an affstream-feature-bank index"):
        FeatureBank.open(tmp_path)
    (tmp_path / "index.json").unlink()
    _writer(tmp_path).add(_person("v", 4), _features(4), np.ones(4, dtype=bool))
    (tmp_path / "people" / "v.labels.npz").unlink()
    with pytest.raises(DataError, match=r"v\.labels\.npz: file of 'v' missing"):
        FeatureBank.open(tmp_path)


# --------------------------------------------------------------------------- synthetic bank


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_feature_bank(tmp_path_factory.mktemp("synth") / "bank", n_people=12, seed=3)


def _pooled(bank, task):
    values = [getattr(bank.labels(n), task) for n in bank.people]
    return np.concatenate(values)


def test_synthetic_bank_structure(synth):
    bank = FeatureBank.open(synth)
    assert len(bank) == 12 and bank.feature_dim == 32
    assert len(bank.split("Train_Set")) >= 7 and len(bank.split("Validation_Set")) >= 3
    assert "synth011_left" in bank and bank.people["synth011_right"]["video"] == "synth011"
    for name, entry in bank.people.items():
        assert 300 <= entry["n_frames"] <= 900
        feats, present = np.asarray(bank.features(name), dtype=np.float32), bank.present(name)
        np.testing.assert_allclose(np.linalg.norm(feats[present], axis=1), 1, atol=2e-3)
        np.testing.assert_array_equal(feats[~present], 0)
    present = np.concatenate([bank.present(n) for n in bank.people])
    assert 0.01 < 1 - present.mean() < 0.08
    expr = _pooled(bank, "expr")
    assert 0.02 < (expr == -1).mean() < 0.10
    assert np.isnan(_pooled(bank, "va")).all(axis=1).mean() > 0.02


def test_synthetic_labels_follow_the_rules(synth):
    bank = FeatureBank.open(synth)
    expr, au, va = (_pooled(bank, t) for t in ("expr", "au", "va"))
    counts = np.bincount(expr[expr >= 0], minlength=8)
    assert counts.argmax() == EXPR_LABELS.index("Neutral")
    assert counts[EXPR_LABELS.index("Neutral")] > 4 * counts[EXPR_LABELS.index("Fear")]
    happy = (expr == EXPR_LABELS.index("Happiness")) & (au >= 0).all(axis=1)
    neutral = (expr == 0) & (au >= 0).all(axis=1)
    for name in AU_RULES["Happiness"]:
        k = AU_LABELS.index(name)
        assert au[happy, k].mean() > 0.6 and au[neutral, k].mean() < 0.2
    annotated = ~np.isnan(va).any(axis=1) & happy
    assert va[annotated, 0].mean() > 0.4
    # features carry the class: nearest prototype beats chance by far
    truth = read_truth(synth)
    hits = []
    for name in bank.people:
        feats, labels = np.asarray(bank.features(name), np.float32), bank.labels(name).expr
        keep = bank.present(name) & (labels >= 0)
        hits.append(np.argmax(feats[keep] @ truth["prototypes"].T, axis=1) == labels[keep])
    assert np.concatenate(hits).mean() > 0.5


def test_synthetic_bank_is_deterministic_and_temporally_smooth(tmp_path):
    a = make_feature_bank(tmp_path / "a", n_people=2, frames=200, seed=7, tasks=("expr",))
    b = make_feature_bank(tmp_path / "b", n_people=2, frames=200, seed=7, tasks=("expr",))
    ba, bb = FeatureBank.open(a), FeatureBank.open(b)
    for name in ba.people:
        np.testing.assert_array_equal(ba.features(name), bb.features(name))
        labels = ba.labels(name)
        assert labels.au is None and labels.va is None
        changes = np.count_nonzero(np.diff(labels.expr[labels.expr >= 0]))
        assert changes < 200 / 10
    rough = FeatureBank.open(make_feature_bank(tmp_path / "c", n_people=2, frames=200, seed=7,
                                               smooth=False, unannotated_frac=0))
    expr = rough.labels(rough.split("Train_Set")[0]).expr
    assert np.count_nonzero(np.diff(expr)) > 50


# --------------------------------------------------------------------------- index validation

_BAD_INDEX = [
    # (change to the index, dotted field named, words of the problem)
    (lambda i: i["people"]["v"].update(n_frames="4"), "people.v.n_frames", "integer >= 0, got '4' (a string)"),
    (lambda i: i["people"]["v"].update(n_frames=-1), "people.v.n_frames", "integer >= 0, got -1"),
    (lambda i: i["people"]["v"].update(n_frames=4.0), "people.v.n_frames", "got 4.0 (a number)"),
    (lambda i: i["people"]["v"].update(n_frames=True), "people.v.n_frames", "(a boolean)"),
    (lambda i: i["people"]["v"].update(n_missing=5), "people.v.n_missing", "from 0 to n_frames (4)"),
    (lambda i: i["people"]["v"].update(n_missing=None), "people.v.n_missing", "got None (null)"),
    (lambda i: i["people"]["v"].update(split="Test"), "people.v.split", "Train_Set, Validation_Set, Test_Set"),
    (lambda i: i["people"]["v"].update(split=["Train_Set"]), "people.v.split", "(a list)"),
    (lambda i: i["people"]["v"].update(video=7), "people.v.video", "non-empty string"),
    (lambda i: i["people"]["v"].update(file="../../../etc/passwd"), "people.v.file", "must be 'people/v.npy'"),
    (lambda i: i["people"]["v"].update(file="/abs/v.npy"), "people.v.file", "must be 'people/v.npy'"),
    (lambda i: i["people"]["v"].update(n_frames_source="guess"), "people.v.n_frames_source", "video, crops"),
    (lambda i: i["people"]["v"].pop("split"), "people.v.split", "is missing"),
    (lambda i: i["people"].update(v=[1, 2]), "people.v", "must be an object"),
    (lambda i: i["people"].update({"../x": i["people"]["v"]}), "people.../x", "path separator"),
    (lambda i: i.update(people=[]), "people", "must be an object"),
    (lambda i: i.update(feature_dim="8"), "feature_dim", "integer from 1 to"),
    (lambda i: i.update(feature_dim=True), "feature_dim", "(a boolean)"),
    (lambda i: i.update(version="1"), "version", "'1' (a string) is not supported"),
    (lambda i: i.update(version=True), "version", "True (a boolean) is not supported"),
    (lambda i: i.update(dtype=["float16"]), "dtype", "float16, float32"),
    (lambda i: i.update(source=None), "source", "crops, videos"),
    (lambda i: i.update(backbone=""), "backbone", "non-empty string"),
    (lambda i: i.update(backbone_sha256=12), "backbone_sha256", "sha256 hex digest"),
]


@pytest.mark.parametrize(("change", "field", "words"), _BAD_INDEX, ids=[b[1] + f"-{k}" for k, b in enumerate(_BAD_INDEX)])
def test_index_is_validated_field_by_field(tmp_path, change, field, words):
    _writer(tmp_path).add(_person("v", 4), _features(4), np.ones(4, dtype=bool))
    index_path = tmp_path / "index.json"
    index = json.loads(index_path.read_text())
    change(index)
    index_path.write_text(json.dumps(index))
    for opening in (lambda: FeatureBank.open(tmp_path), lambda: _writer(tmp_path)):
        with pytest.raises(DataError) as info:
            opening()
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"{index_path}: {field} ") and words in message, message
        assert message.endswith("rebuild the bank with 'affstream features'")


def test_string_frame_count_no_longer_gives_a_self_contradicting_message(tmp_path):
    _writer(tmp_path).add(_person("v", 4), _features(4), np.ones(4, dtype=bool))
    index = json.loads((tmp_path / "index.json").read_text())
    index["people"]["v"]["n_frames"] = "4"
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"people\.v\.n_frames must be an integer >= 0, got '4' \(a string\)"):
        FeatureBank.open(tmp_path)


def test_index_that_is_not_json_is_one_line(tmp_path):
    _writer(tmp_path)
    (tmp_path / "index.json").write_text("[" * 100_000)  # nesting deep enough for a RecursionError
    with pytest.raises(DataError, match="unreadable feature bank index") as info:
        FeatureBank.open(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "index.json").write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="unreadable feature bank index"):
        FeatureBank.open(tmp_path)


def test_valid_index_with_a_test_person_and_a_sha(tmp_path):
    writer = _writer(tmp_path, backbone_sha256="ab" * 32)
    test = PersonLabels(name="t", video="t", split="Test_Set", n_frames=3, expr=None, au=None, va=None)
    writer.add(test, _features(3), np.ones(3, dtype=bool), {"n_frames_source": "crops"})
    bank = FeatureBank.open(tmp_path)
    assert bank.split("Test_Set") == ["t"] and bank.backbone_sha256 == "ab" * 32


def test_a_person_that_cannot_be_written_leaves_no_file(tmp_path):
    from affstream.errors import OutputError

    writer = _writer(tmp_path)
    writer.add(_person("done", 4), _features(4), np.ones(4, dtype=bool))
    (tmp_path / person_files("v")[2]).mkdir()  # the third file cannot be created
    with pytest.raises(OutputError, match=r"v\.labels\.npz"):
        writer.add(_person("v", 4), _features(4), np.ones(4, dtype=bool))
    people = sorted(p.name for p in (tmp_path / "people").iterdir())
    assert people == ["done.labels.npz", "done.npy", "done.present.npy", "v.labels.npz"]
    assert list(FeatureBank.open(tmp_path).people) == ["done"]


def test_writer_refuses_an_unwritable_folder(tmp_path):
    from affstream.errors import OutputError

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match=r"afile/bank: cannot create this folder, '.*afile' is a file"):
        _writer(afile / "bank")
    (tmp_path / "bank").mkdir()
    (tmp_path / "bank" / "people").write_text("x")
    with pytest.raises(OutputError, match=r"people: exists and is not a folder"):
        _writer(tmp_path / "bank")
    assert not (tmp_path / "bank" / "index.json").exists()
