"""Unannotated test-set people: feature bank entries (``--test-list``) and ABAW export."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media import write_cfr_clip
from synth_affwild import DATA, make_affwild_root, read_manifest, write_test_crops

from affstream.cli import main
from affstream.errors import DataError, SourceError
from affstream.heads.base import save_head
from affstream.heads.mlp import MLPHead
from affstream.io import iter_frames
from affstream.records import DecodeStats, Detection, FrameFaces, TrackedFace
from affstream.train.bank import FeatureBank
from affstream.train.export import EXPORT_FILES, export_abaw
from affstream.train.features import build_feature_bank, count_video_frames

TINY = "affstream-tiny:random"
TASKS = ("expr", "au", "va")
# name -> (crop frames written, frames of its video or None, expected n_frames, source)
TEST_PEOPLE = {
    "tst01": ([1, 2, 3, 5, 6, 7, 8, 9, 10], None, 10, "crops"),
    "tst02_left": ([1, 2, 4, 5, 6, 7, 8, 9], 14, 14, "video"),
}
HEADERS = {
    "expr": "image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
    "au": "image_location,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26",
    "va": "image_location,valence,arousal",
}
VALUE = {"expr": r"[0-7]", "au": r"[01](,[01]){11}", "va": r"-?[01]\.\d{6},-?[01]\.\d{6}"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = make_affwild_root(tmp_path_factory.mktemp("testset") / "root", n_people=3, frames=12, seed=3)
    for name, (frames, video_frames, _, _) in TEST_PEOPLE.items():
        write_test_crops(path, name, frames, clip="wolfgang" if name.endswith("_left") else "single_face")
        if video_frames is not None:
            (path / "videos").mkdir(exist_ok=True)
            write_cfr_clip(path / "videos" / f"{name.removesuffix('_left')}.mp4", frames=video_frames)
    return path


@pytest.fixture(scope="module")
def listing(root):
    path = root.parent / "test_videos.txt"
    path.write_text("# ABAW test set\ntst01\ntst02_left.txt\n\ntst01\n")
    return path


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def built(root, listing):
    out = root.parent / "FEATURES"
    records = _Records()
    logger = logging.getLogger("affstream")
    logger.addHandler(records)
    try:
        summary = build_feature_bank(root, out, backbone=TINY, device="cpu", batch_size=16, test_list=listing)
    finally:
        logger.removeHandler(records)
    return out, summary, records.messages


@pytest.fixture(scope="module")
def head_path(built, tmp_path_factory):
    bank = FeatureBank.open(built[0])
    torch.manual_seed(5)
    head = MLPHead(bank.feature_dim, TASKS, width=8, dropout=0.1, backbone=bank.backbone, name="mlp")
    path = tmp_path_factory.mktemp("head") / "head"
    save_head(head.eval(), path)
    return path


def _missing(frames, n):
    return [k for k in range(1, n + 1) if k not in frames]


def test_test_people_are_stored_unlabelled_with_their_frame_counts(built, root):
    out, summary, messages = built
    manifest = read_manifest(root)
    assert summary["people"] == 3 + 2 and summary["done"] == 5 and summary["failed"] == {}
    bank = FeatureBank.open(out)
    assert bank.split("Test_Set") == sorted(TEST_PEOPLE)
    for name, entry in manifest.items():  # annotated people as before
        assert bank.people[name]["split"] == entry["split"] and "n_frames_source" not in bank.people[name]
    for name, (frames, _, n_frames, origin) in TEST_PEOPLE.items():
        entry = bank.people[name]
        assert (entry["split"], entry["n_frames"], entry["n_frames_source"]) == ("Test_Set", n_frames, origin)
        assert entry["video"] == name.removesuffix("_left")
        present = bank.present(name)
        assert (np.flatnonzero(~present) + 1).tolist() == _missing(frames, n_frames)
        assert entry["n_missing"] == n_frames - len(frames)
        feats = np.asarray(bank.features(name), dtype=np.float32)
        np.testing.assert_allclose(np.linalg.norm(feats[present], axis=1), 1, atol=2e-3)
        labels = bank.labels(name)
        assert labels.tasks == () and labels.split == "Test_Set"
    assert summary["frames"] == 3 * 12 + 10 + 14
    warned = [m for m in messages if "tst01" in m and "last crop" in m]
    assert warned and "cannot be known without the video" in warned[0]
    assert not any("tst02_left" in m and "last crop" in m for m in messages)


def test_test_people_are_resumed(built, root, listing, tmp_path):
    out = tmp_path / "FEATURES"
    shutil.copytree(built[0], out)
    index = json.loads((out / "index.json").read_text())
    del index["people"]["tst01"]  # as if the run was killed while writing tst01
    (out / "index.json").write_text(json.dumps(index))
    (out / "people" / "tst01.npy").unlink()
    summary = build_feature_bank(root, out, backbone=TINY, device="cpu", test_list=listing)
    assert (summary["done"], summary["skipped"], summary["frames"]) == (1, 4, 10)
    bank = FeatureBank.open(out)
    np.testing.assert_array_equal(bank.features("tst01"), FeatureBank.open(built[0]).features("tst01"))
    assert bank.people["tst01"]["n_frames_source"] == "crops"


def test_frame_count_is_the_decoded_count(root, tmp_path):
    for path in (root / "videos" / "tst02.mp4", DATA / "single_face.mp4"):
        stats = DecodeStats()
        decoded = sum(1 for _ in iter_frames(path, stats=stats))
        assert count_video_frames(path) == decoded and decoded in (14, 72)
    (tmp_path / "notes.mp4").write_text("not a video\n")
    with pytest.raises(SourceError, match=r"notes\.mp4"):
        count_video_frames(tmp_path / "notes.mp4")


def test_unusable_test_people_fail_alone(root, tmp_path):
    work = tmp_path / "root"
    shutil.copytree(root, work)
    (work / "cropped_aligned" / "empty").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("tst01\nempty\nnowhere\n")
    summary = build_feature_bank(work, tmp_path / "out", backbone=TINY, device="cpu", test_list=listing,
                                 splits=("Train_Set",))
    assert summary["done"] == 2 and set(summary["failed"]) == {"empty", "nowhere"}
    assert "frame count is unknown" in summary["failed"]["empty"]
    assert "no crop folder 'nowhere'" in summary["failed"]["nowhere"]


def test_an_annotated_person_in_the_test_list_is_refused(root, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("tst01\nvid02_left\n")
    with pytest.raises(DataError, match=r"'vid02_left' is listed as a test person but is annotated in Validation_Set"):
        build_feature_bank(root, tmp_path / "out", backbone=TINY, device="cpu", test_list=listing)
    assert not (tmp_path / "out").exists()


def _read(path):
    lines = path.read_text().splitlines()
    return lines[0], lines[1:]


def test_export_writes_every_frame_of_every_test_person(built, head_path, listing, tmp_path):
    out = built[0]
    bank = FeatureBank.open(out)
    summary = export_abaw(out, head_path, tmp_path / "sub", split="Test_Set", device="cpu")
    n_missing = sum(n - len(frames) for frames, _, n, _ in TEST_PEOPLE.values())
    assert summary["people"] == 2 and summary["frames"] == 10 + 14
    assert summary["filled"] == n_missing == 1 + 6 and summary["people_without_face"] == []
    assert summary["n_frames_from_crops"] == ["tst01"]
    expected = [f"{name}/{k:05d}.jpg" for name, (_, _, n, _) in TEST_PEOPLE.items() for k in range(1, n + 1)]
    for task, file in EXPORT_FILES.items():
        path = tmp_path / "sub" / file
        assert path.read_text().endswith("\n") and "\r" not in path.read_text()
        header, rows = _read(path)
        assert header == HEADERS[task]
        assert [r.split(",", 1)[0] for r in rows] == expected
        pattern = re.compile(rf"^[a-z0-9_]+/\d{{5}}\.jpg,{VALUE[task]}$")
        assert all(pattern.match(r) for r in rows), [r for r in rows if not pattern.match(r)][:3]
    # a faceless frame repeats its nearest frame with a face: tst02_left 3 <- 2, 10..14 <- 9
    _, rows = _read(tmp_path / "sub" / "VA.txt")
    values = {r.split(",", 1)[0]: r.split(",", 1)[1] for r in rows}
    assert values["tst02_left/00003.jpg"] == values["tst02_left/00002.jpg"]
    assert {values[f"tst02_left/{k:05d}.jpg"] for k in range(10, 15)} == {values["tst02_left/00009.jpg"]}
    # the same people through a list of names give the same files
    from affstream.train.affwild import read_video_list

    export_abaw(out, head_path, tmp_path / "sub2", people=read_video_list(listing), device="cpu")
    for file in EXPORT_FILES.values():
        assert (tmp_path / "sub2" / file).read_text() == (tmp_path / "sub" / file).read_text()
    assert bank.split("Test_Set") == sorted(TEST_PEOPLE)


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_cli_features_test_list_then_export(root, listing, head_path, tmp_path):
    out = tmp_path / "FEATURES"
    result = CliRunner().invoke(main, ["features", str(root), "-o", str(out), "--backbone", TINY, "--device", "cpu",
                                       "--batch-size", "16", "--test-list", str(listing)])
    assert result.exit_code == 0, result.output
    assert "5 people written" in result.stderr and result.stdout == ""
    bank = FeatureBank.open(out)
    assert {n: bank.people[n]["n_frames"] for n in bank.split("Test_Set")} == {"tst01": 10, "tst02_left": 14}
    result = CliRunner().invoke(main, ["export-abaw", "--features", str(out), "--head", str(head_path), "-o",
                                       str(tmp_path / "sub"), "--split", "Test_Set", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header, rows = _read(tmp_path / "sub" / "EXPR.txt")
    assert header == HEADERS["expr"] and len(rows) == 24
    assert "7 frame(s) without a face filled" in result.stderr
    assert "exported up to their last crop only" in result.stderr and "tst01" in result.stderr
    conflict = tmp_path / "conflict.txt"
    conflict.write_text("vid01\n")
    result = CliRunner().invoke(main, ["features", str(root), "-o", str(tmp_path / "F2"), "--backbone", TINY,
                                       "--device", "cpu", "--test-list", str(conflict)])
    assert result.exit_code == 2 and "'vid01' is listed as a test person" in _error_line(result)
    assert not (tmp_path / "F2").exists()


# --------------------------------------------------------------------------- videos source


def _fake_face_features(frames_per_video, faceless):
    """A pipeline stand-in: ``frames_per_video[video]`` frames; each frame has two faces
    (x = 100 and 500, features tagged (frame, x)) except the frames in ``faceless``."""

    def fake(video_path, *, pipeline, backbone, device):
        for k in range(1, frames_per_video[video_path.stem] + 1):
            xs = [] if k in faceless else [100, 500]
            faces = tuple(TrackedFace(frame_index=k, time_s=k / 25, track_id=t, detection=Detection(
                box_xyxy=np.array([x - 20, 30, x + 20, 70 + t], np.float32), score=0.9,
                landmarks=np.zeros((5, 2), np.float32))) for t, x in enumerate(xs))
            feats = np.zeros((len(xs), backbone.feature_dim), np.float32)
            for i, x in enumerate(xs):
                feats[i, :2] = (k, x)
            yield FrameFaces(frame_index=k, time_s=k / 25, faces=faces), feats

    return fake


def test_videos_source_counts_every_decoded_frame(tmp_path):
    root = tmp_path / "root"  # a test-only root: no annotation folders at all
    (root / "videos").mkdir(parents=True)
    for video in ("solo", "pair"):
        (root / "videos" / f"{video}.mp4").write_bytes(b"")  # never opened by the fake
    listing = tmp_path / "list.txt"
    listing.write_text("solo\npair_left\npair_right\n")
    fake = _fake_face_features({"solo": 9, "pair": 7}, faceless={3, 9})
    summary = build_feature_bank(root, tmp_path / "out", backbone=TINY, device="cpu", source="videos",
                                 test_list=listing, face_features_fn=fake)
    assert summary["done"] == 3 and summary["failed"] == {}
    bank = FeatureBank.open(tmp_path / "out")
    expected = {"solo": (9, 500), "pair_left": (7, 100), "pair_right": (7, 500)}
    for name, (n, x) in expected.items():
        entry = bank.people[name]
        assert (entry["split"], entry["n_frames"], entry["n_frames_source"]) == ("Test_Set", n, "video")
        present = bank.present(name)
        assert (np.flatnonzero(~present) + 1).tolist() == [k for k in (3, 9) if k <= n]
        feats = np.asarray(bank.features(name), dtype=np.float32)[present]
        np.testing.assert_array_equal(feats[:, 0], np.flatnonzero(present) + 1)  # row k-1 is frame k
        np.testing.assert_array_equal(feats[:, 1], x)


def test_export_to_an_unwritable_folder_is_refused_before_predicting(built, head_path, tmp_path, monkeypatch):
    from affstream.errors import OutputError
    from affstream.train import export as export_module

    monkeypatch.setattr(export_module, "predict_person", lambda *a, **k: pytest.fail("predicted for an unwritable output"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match=r"'.*afile' is a file, not a folder; choose another output path"):
        export_abaw(built[0], head_path, afile / "sub", split="Test_Set", device="cpu")
    (tmp_path / "sub" / "EXPR.txt").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"EXPR\.txt: is a folder"):
        export_abaw(built[0], head_path, tmp_path / "sub", task="expr", split="Test_Set", device="cpu")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["EXPR.txt"]
