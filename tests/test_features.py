"""Building a feature bank from an Aff-Wild2-format root, from crops and from videos."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib

import numpy as np
import pytest
from synth_affwild import make_affwild_root, read_manifest

from affstream.errors import ConfigError, DataError
from affstream.records import Detection, FrameFaces, TrackedFace
from affstream.train.affwild import scan_affwild
from affstream.train.bank import BankWriter, FeatureBank
from affstream.train.features import build_feature_bank, find_crop_dir
from affstream.train.person_tracks import TrackBoxes, choose_tracks

TINY = "affstream-tiny:random"
FRAMES = 24


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_affwild_root(tmp_path_factory.mktemp("features") / "root", n_people=4, frames=FRAMES)


@pytest.fixture(scope="module")
def built(pristine, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "FEATURES"
    calls = []
    summary = build_feature_bank(pristine, out, backbone=TINY, device="cpu", batch_size=16,
                                 progress=lambda *args: calls.append(args))
    return out, summary, calls


@pytest.fixture(scope="module")
def tiny():
    from affstream.embed.backbone import load_backbone

    return load_backbone(TINY, "cpu", batch_size=16, precision="fp32")


def _direct_features(backbone, folder, frames):
    """Reference embedding of crops, preprocessed here independently of the library."""
    import torch
    from PIL import Image

    size = backbone.image_size
    images = [np.asarray(Image.open(folder / f"{k:05d}.jpg").convert("RGB")
                         .resize((size, size), Image.Resampling.BICUBIC)) for k in frames]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return backbone.encode_images(((batch - mean) / std).to(backbone.device)).float().cpu().numpy()


def test_crops_give_one_row_per_annotated_frame(built, pristine):
    out, summary, calls = built
    manifest = read_manifest(pristine)
    assert summary == {"people": 4, "done": 4, "skipped": 0, "failed": {},
                       "frames": 4 * FRAMES, "missing": 12, "unreadable": {}}
    assert [c[0] for c in calls] == sorted(manifest) and [c[1:] for c in calls][-1] == (4, 4)
    bank = FeatureBank.open(out)
    assert bank.backbone == TINY and bank.source == "crops" and bank.dtype == "float16"
    for name, entry in manifest.items():
        present = bank.present(name)
        assert bank.features(name).shape == (FRAMES, bank.feature_dim)
        np.testing.assert_array_equal(np.flatnonzero(~present) + 1, entry["deleted"])
        assert bank.people[name]["n_missing"] == len(entry["deleted"])
        labels = bank.labels(name)
        assert labels.split == entry["split"] and labels.video == entry["video"]
        np.testing.assert_array_equal(labels.expr, entry["labels"]["expr"])
        np.testing.assert_array_equal(labels.au, entry["labels"]["au"])


def test_rows_are_the_embeddings_of_their_own_frames(built, pristine, tiny):
    out, _, _ = built
    bank = FeatureBank.open(out)
    for name in ("vid02", "vid03_left"):
        present = bank.present(name)
        frames = np.flatnonzero(present) + 1
        expected = _direct_features(tiny, pristine / "cropped_aligned" / name, frames)
        stored = np.asarray(bank.features(name), dtype=np.float32)[present]
        np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1, atol=2e-3)
        np.testing.assert_allclose(stored, expected, atol=1e-3)  # float16 storage
        # each row is closest to its own frame's embedding: a shift by one would show
        distances = np.linalg.norm(stored[:, None] - expected[None], axis=2)
        np.testing.assert_array_equal(distances.argmin(axis=1), np.arange(len(frames)))
        assert np.all(np.abs(bank.features(name)[~present]) == 0)


def test_second_build_skips_and_interrupted_person_is_redone(built, pristine, tmp_path):
    out = tmp_path / "FEATURES"
    shutil.copytree(built[0], out)
    summary = build_feature_bank(pristine, out, backbone=TINY, device="cpu")
    assert (summary["done"], summary["skipped"], summary["frames"]) == (0, 4, 0)
    # simulate a run killed while writing vid02: temp file present, index entry absent
    index = json.loads((out / "index.json").read_text())
    del index["people"]["vid02"]
    (out / "index.json").write_text(json.dumps(index))
    (out / "people" / "vid02.npy").rename(out / "people" / "vid02.npy.tmp-999")
    summary = build_feature_bank(pristine, out, backbone=TINY, device="cpu")
    assert (summary["done"], summary["skipped"], summary["frames"]) == (1, 3, FRAMES)
    assert not list((out / "people").glob("*.tmp-*"))
    bank = FeatureBank.open(out)
    np.testing.assert_array_equal(bank.features("vid02"), FeatureBank.open(built[0]).features("vid02"))


def test_bank_of_another_backbone_is_refused(pristine, tmp_path):
    BankWriter(tmp_path, backbone="ViT-B-32:openai", backbone_sha256=None, feature_dim=64, source="crops")
    with pytest.raises(DataError, match="'ViT-B-32:openai', not 'affstream-tiny:random'"):
        build_feature_bank(pristine, tmp_path, backbone=TINY, device="cpu")


def test_missing_crop_folder_fails_that_person_only(pristine, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(pristine, root)
    shutil.rmtree(root / "cropped_aligned" / "vid01")
    summary = build_feature_bank(root, tmp_path / "out", backbone=TINY, device="cpu",
                                 tasks=("expr",), splits=("Train_Set",))
    assert summary["people"] == 3 and summary["done"] == 2
    assert list(summary["failed"]) == ["vid01"] and "no crop folder 'vid01'" in summary["failed"]["vid01"]
    assert FeatureBank.open(tmp_path / "out").labels("vid03_left").va is None


def test_unreadable_crop_is_a_missing_frame(pristine, tmp_path, caplog):
    root = tmp_path / "root"
    shutil.copytree(pristine, root)
    deleted = read_manifest(root)["vid02"]["deleted"]
    broken = next(k for k in range(1, FRAMES + 1) if k not in deleted)
    (root / "cropped_aligned" / "vid02" / f"{broken:05d}.jpg").write_bytes(b"not a jpeg")
    (root / "cropped_aligned" / "vid02" / "notes.txt").write_text("ignored")
    with caplog.at_level("WARNING", logger="affstream"):
        summary = build_feature_bank(root, tmp_path / "out", backbone=TINY, device="cpu",
                                     splits=("Validation_Set",), batch_size=5)
    assert summary["done"] == 1 and summary["missing"] == len(deleted) + 1
    missing = np.flatnonzero(~FeatureBank.open(tmp_path / "out").present("vid02")) + 1
    assert list(missing) == sorted(deleted + [broken])
    assert any("unreadable crop" in r.getMessage() for r in caplog.records)
    assert summary["unreadable"] == {"vid02": 1}


def _png(width, height, body=b""):
    """A PNG whose header declares width x height (8-bit RGB) and whose IDAT holds ``body``."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def test_decompression_bomb_and_other_bad_crops_are_missing_frames(pristine, tmp_path, caplog):
    root = tmp_path / "root"
    shutil.copytree(pristine, root)
    folder = root / "cropped_aligned" / "vid02"
    deleted = read_manifest(root)["vid02"]["deleted"]
    kept = [k for k in range(1, FRAMES + 1) if k not in deleted]
    bomb, wide, cut = kept[:3]
    (folder / f"{bomb:05d}.jpg").write_bytes(_png(30000, 30000))  # Pillow: DecompressionBombError
    (folder / f"{wide:05d}.jpg").write_bytes(_png(5000, 8))  # decodable, but no face crop
    sample = (folder / f"{cut:05d}.jpg").read_bytes()
    (folder / f"{cut:05d}.jpg").write_bytes(sample[: len(sample) // 2])  # truncated JPEG body
    with caplog.at_level("WARNING", logger="affstream"):
        summary = build_feature_bank(root, tmp_path / "out", backbone=TINY, device="cpu", batch_size=4)
    assert summary["done"] == 4 and summary["failed"] == {}  # the run went on with everyone
    assert summary["unreadable"] == {"vid02": 3}
    missing = np.flatnonzero(~FeatureBank.open(tmp_path / "out").present("vid02")) + 1
    assert list(missing) == sorted(deleted + [bomb, wide, cut])
    messages = [r.getMessage() for r in caplog.records]
    for frame, words in ((bomb, "30000x30000 pixels"), (wide, "5000x8 pixels"), (cut, "cannot decode")):
        assert any(f"{folder / f'{frame:05d}.jpg'}: unreadable crop (" in m and words in m for m in messages), messages
    assert all("\n" not in m for m in messages)


def test_crop_size_reads_the_header_only(pristine, tmp_path):
    from PIL import Image

    from affstream.train.features import MAX_CROP_SIDE, crop_size

    real = next((pristine / "cropped_aligned" / "vid01").glob("*.jpg"))
    assert crop_size(real) == Image.open(real).size
    png = tmp_path / "a.png"
    Image.new("RGB", (7, 5)).save(png)
    assert crop_size(png) == (7, 5)
    progressive = tmp_path / "p.jpg"
    Image.new("RGB", (9, 4)).save(progressive, progressive=True, exif=b"Exif\x00\x00" + bytes(64))
    assert crop_size(progressive) == (9, 4)
    cases = {
        "bomb.png": (_png(30000, 30000), "30000x30000 pixels"),
        "edge.png": (_png(MAX_CROP_SIDE + 1, 1), f"at most {MAX_CROP_SIDE}x{MAX_CROP_SIDE}"),
        "zero.png": (_png(0, 10), "0x10 pixels"),
        "short.png": (_png(10, 10)[:20], "truncated or corrupt PNG header"),
        "text.jpg": (b"not an image", "not a JPEG or PNG image"),
        "empty.jpg": (b"", "not a JPEG or PNG image"),
        "cut.jpg": (real.read_bytes()[:40], "truncated JPEG header"),
        "nosof.jpg": (b"\xff\xd8\xff\xd9", "no frame header"),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=re.escape(words)) as info:
            crop_size(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: unreadable crop (")


def test_person_without_a_usable_crop_fails_alone(pristine, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(pristine, root)
    for crop in (root / "cropped_aligned" / "vid01").glob("*.jpg"):
        crop.write_bytes(_png(30000, 30000))
    summary = build_feature_bank(root, tmp_path / "out", backbone=TINY, device="cpu", tasks=("expr",),
                                 splits=("Train_Set",))
    assert summary["done"] == 2 and list(summary["failed"]) == ["vid01"]
    message = summary["failed"]["vid01"]
    assert f"of {root / 'cropped_aligned' / 'vid01'} can be used" in message and "30000x30000" in message
    assert "vid01" not in FeatureBank.open(tmp_path / "out")


def test_crop_folder_falls_back_to_the_video_name_for_one_person_only(pristine, tmp_path):
    people = scan_affwild(pristine)
    root = tmp_path
    (root / "cropped_aligned" / "vid01").mkdir(parents=True)
    assert find_crop_dir(root, people["vid01"]) == root / "cropped_aligned" / "vid01"
    assert find_crop_dir(root, people["vid02"]) is None
    # a person of a two-person video never takes the video's folder
    (root / "cropped_aligned" / "vid03").mkdir()
    for name in ("vid03_left", "vid03_right"):
        with pytest.raises(DataError, match=f"cropped_aligned/{name}: no crop folder for '{name}'"):
            find_crop_dir(root, people[name])
    (root / "cropped_aligned" / "vid03_left").mkdir()
    assert find_crop_dir(root, people["vid03_left"]) == root / "cropped_aligned" / "vid03_left"


def test_two_person_video_with_only_a_video_crop_folder_fails_both(pristine, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(pristine, root)
    crops = root / "cropped_aligned"
    (crops / "vid03_left").rename(crops / "vid03")
    shutil.rmtree(crops / "vid03_right")
    summary = build_feature_bank(root, tmp_path / "out", backbone=TINY, device="cpu", tasks=("expr",),
                                 splits=("Train_Set",))
    assert summary["done"] == 1 and set(summary["failed"]) == {"vid03_left", "vid03_right"}
    for name in ("vid03_left", "vid03_right"):
        assert f"{crops / name}: no crop folder for '{name}'" in summary["failed"][name]
    bank = FeatureBank.open(tmp_path / "out")
    assert "vid01" in bank and "vid03_left" not in bank and "vid03_right" not in bank


def test_crops_beyond_the_annotation_fail_that_person(pristine, tmp_path, caplog):
    root = tmp_path / "root"
    shutil.copytree(pristine, root)
    folder = root / "cropped_aligned" / "vid01"
    sample = next(folder.glob("*.jpg"))
    shutil.copy(sample, folder / f"{FRAMES + 2:05d}.jpg")  # within the tolerance: ignored
    with caplog.at_level("WARNING", logger="affstream"):
        summary = build_feature_bank(root, tmp_path / "ok", backbone=TINY, device="cpu", tasks=("expr",),
                                     splits=("Train_Set",))
    assert summary["failed"] == {} and FeatureBank.open(tmp_path / "ok").features("vid01").shape[0] == FRAMES
    assert any("1 crops outside frames 1..24 ignored" in r.getMessage() for r in caplog.records)
    shutil.copy(sample, folder / f"{FRAMES + 3:05d}.jpg")
    summary = build_feature_bank(root, tmp_path / "bad", backbone=TINY, device="cpu", tasks=("expr",),
                                 splits=("Train_Set",))
    assert summary["done"] == 2 and list(summary["failed"]) == ["vid01"]
    message = summary["failed"]["vid01"]
    annotation = root / "EXPR_Recognition_Challenge" / "Train_Set" / "vid01.txt"
    assert message.startswith(f"{folder}: largest crop number {FRAMES + 3} but {annotation} has {FRAMES} frame lines")
    assert "(3 more, tolerance 2)" in message


def test_bad_options(pristine, tmp_path):
    with pytest.raises(ConfigError, match="unknown feature source 'frames'"):
        build_feature_bank(pristine, tmp_path, source="frames")
    with pytest.raises(DataError, match="no annotation folders"):
        build_feature_bank(tmp_path, tmp_path / "out", backbone=TINY)


# --------------------------------------------------------------------------- videos source


def _face(frame, x_centre, half, track):
    box = np.array([x_centre - half, 50 - half, x_centre + half, 50 + half], dtype=np.float32)
    det = Detection(box_xyxy=box, score=0.99, landmarks=np.zeros((5, 2), np.float32))
    return TrackedFace(frame_index=frame, time_s=frame / 25, track_id=track, detection=det)


def _scene(video, k):
    """(x_centre, half size, track id) of each face the fake pipeline 'detects' in frame k.

    vid01, one person (track 0 at x=300, lost after frame 12 and picked up again as
    track 2 at x=310): no face in frame 5; a larger face (track 1) passes in frames
    8-10; a small face far away (track 3) while the person is not detected, 13-15.
    vid03, two people: left track 0 (x=100), continued as track 2 (x=130, then 90);
    right track 1 (x=500, 470, 520); a small face at the far right (track 3) in 15-.
    """
    if video == "vid01":
        faces = [] if k == 5 else [(300, 40, 0)] if k <= 12 else [(560, 20, 3)] if k <= 15 else [(310, 40, 2)]
        return faces + [(50, 60, 1)] if 8 <= k <= 10 else faces
    if k <= 6:
        return [(500, 30, 1), (100, 30, 0)]
    if k <= 9:
        return [(470, 30, 1)]
    if k <= 11:
        return []
    if k <= 14:
        return [(130, 30, 2)]
    return [(620, 15, 3), (520, 30, 1), (90, 25, 2)]


def make_fake_face_features(seen, n_frames):
    """Each face's 'feature' encodes (frame, x centre) so the test can see who was picked."""

    def fake(video_path, *, pipeline, backbone, device):
        video = video_path.stem
        seen.append((video_path.name, pipeline, backbone.feature_dim, device))
        for k in range(1, n_frames.get(video, FRAMES) + 1):
            scene = _scene(video, k)
            faces = tuple(_face(k, x, h, t) for x, h, t in scene)
            feats = np.zeros((len(faces), backbone.feature_dim), dtype=np.float32)
            for i, (x, _, _) in enumerate(scene):
                feats[i, :2] = (k, x)
            yield FrameFaces(frame_index=k, time_s=k / 25, faces=faces), feats

    return fake


def _expected(spans):
    """(n,) x centre per frame from {(first, last) 1-based frames: x}; -1 elsewhere."""
    out = np.full(FRAMES, -1.0)
    for (first, last), x in spans.items():
        out[first - 1:last] = x
    return out


def test_videos_source_picks_the_annotated_person_by_track(pristine, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(pristine, root)
    (root / "videos").mkdir()
    for video in ("vid01", "vid02", "vid03"):
        (root / "videos" / f"{video}.mp4").write_bytes(b"")  # never opened by the fake
    seen = []
    summary = build_feature_bank(root, tmp_path / "out", backbone=TINY, device="cpu", source="videos",
                                 pipeline="smoke", face_features_fn=make_fake_face_features(seen, {"vid02": FRAMES - 10}))
    assert sorted(seen) == [(f"{v}.mp4", "smoke", 64, "cpu") for v in ("vid01", "vid02", "vid03")]
    assert summary["done"] == 3 and list(summary["failed"]) == ["vid02"]
    message = summary["failed"]["vid02"]
    assert f"{FRAMES} annotated frames" in message and f"decodes to {FRAMES - 10} frames" in message

    bank = FeatureBank.open(tmp_path / "out")
    assert bank.source == "videos" and "vid02" not in bank
    frames = np.arange(1, FRAMES + 1)

    def picked(name):
        feats = np.asarray(bank.features(name), dtype=np.float32)
        present = bank.present(name)
        np.testing.assert_array_equal(feats[present, 0], frames[present])  # never shifted
        return np.where(present, feats[:, 1], -1)

    # a per-frame rule would give frames 8-10 to the larger passing face and 13-15 to
    # the only face then; the person's two tracks are chained, the others never taken
    np.testing.assert_array_equal(picked("vid01"), _expected({(1, 4): 300, (6, 12): 300, (16, 24): 310}))
    # the rightmost face of 15- is a small third track: right stays with track 1
    np.testing.assert_array_equal(picked("vid03_left"), _expected({(1, 6): 100, (12, 14): 130, (15, 24): 90}))
    np.testing.assert_array_equal(picked("vid03_right"), _expected({(1, 6): 500, (7, 9): 470, (15, 24): 520}))


def test_videos_source_reports_a_missing_video(pristine, tmp_path):
    summary = build_feature_bank(pristine, tmp_path / "out", backbone=TINY, device="cpu", source="videos",
                                 tasks=("va",), face_features_fn=make_fake_face_features([], {}))
    assert summary["done"] == 0 and set(summary["failed"]) == {"vid01", "vid02", "vid03_left", "vid03_right"}
    assert "no video file for 'vid03'" in summary["failed"]["vid03_left"]


def _track(first, last, x, half=30.0):
    """A track at rows first..last (inclusive) with a square box of side 2*half
    centred at x (a number or one per row), y = 50."""
    rows = np.arange(first, last + 1)
    xs = np.broadcast_to(np.asarray(x, dtype=np.float64), rows.shape)
    boxes = np.stack([xs - half, np.full_like(xs, 50 - half), xs + half, np.full_like(xs, 50 + half)], axis=1)
    return TrackBoxes(rows, boxes)


def test_choose_tracks_single_person_rules():
    # a person broken into five pieces, each less dominant than a long-lived small
    # face in the background, still wins as one chain
    poster = _track(0, 99, 600, half=10)  # dominance 100 * 400 = 40000
    pieces = {1 + i: _track(10 * i, 10 * i + 9, 300 + 5 * i) for i in range(5)}  # 10 * 3600 each
    tracks = {0: poster, **pieces}
    assert poster.dominance == 40000 and pieces[1].dominance == 36000
    assert sorted(choose_tracks(tracks, [None])[None]) == [1, 2, 3, 4, 5]
    # no continuation when sizes differ by more than 2x, the boxes are far apart, or
    # the two tracks overlap in time (even by one frame)
    assert choose_tracks({0: _track(0, 9, 300), 1: _track(10, 10, 300, half=61)}, [None]) == {None: [0]}
    assert choose_tracks({0: _track(0, 9, 300), 1: _track(10, 10, 300, half=59)}, [None]) == {None: [0, 1]}
    assert choose_tracks({0: _track(0, 9, 300), 1: _track(10, 12, 300 + 91)}, [None]) == {None: [0]}
    assert choose_tracks({0: _track(0, 9, 300), 1: _track(10, 12, 300 + 89)}, [None]) == {None: [0, 1]}
    assert choose_tracks({0: _track(0, 9, 300), 1: _track(9, 12, 300)}, [None]) == {None: [0]}
    # a piece before the chosen track joins through its last box
    assert choose_tracks({0: _track(5, 20, 300), 1: _track(0, 3, 310)}, [None]) == {None: [0, 1]}
    assert choose_tracks({}, [None, "left"]) == {None: [], "left": []}


def test_choose_tracks_two_people_rules():
    tracks = {
        0: _track(0, 49, 500),                       # right person
        1: _track(0, 19, 100),                       # left person ...
        2: _track(30, 49, 120),                      # ... picked up again
        3: _track(20, 22, 700, half=60),             # a large face passing by, beside the right person
        4: _track(25, 28, 480),                      # fits right? overlaps track 0 -> no
        5: _track(23, 27, 110),                      # fits left between 1 and 2
    }
    assert choose_tracks(tracks, ["left", "right"]) == {"left": [1, 2, 5], "right": [0]}
    assert choose_tracks(tracks, ["right"]) == {"right": [0]}
    # left / right by mean centre x over the shared frames, whatever the track ids
    swapped = {0: _track(0, 9, 100), 1: _track(0, 9, 500)}
    assert choose_tracks(swapped, ["left", "right"]) == {"left": [0], "right": [1]}
    # never two faces at once: the two people cannot be told apart
    assert choose_tracks({0: _track(0, 9, 100), 1: _track(10, 19, 500)}, ["left", "right", None]) == {
        None: [0], "left": [], "right": []}


def test_synthetic_videos_decode_to_the_annotated_length(tmp_path):
    import av

    root = make_affwild_root(tmp_path / "root", n_people=3, frames=12, with_crops=False, with_videos=True)
    assert sorted(p.name for p in (root / "videos").iterdir()) == ["vid01.mp4", "vid02.mp4"]
    for video, width in (("vid01", 320), ("vid02", 640)):
        with av.open(str(root / "videos" / f"{video}.mp4")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 12 and frames[0].shape == (180, width, 3)
    assert set(scan_affwild(root)) == {"vid01", "vid02_left", "vid02_right"}
