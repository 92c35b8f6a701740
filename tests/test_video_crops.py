"""Face crops extracted from videos through affstream's own pipeline (real decoding,
real MTCNN, the smoke preset's tiny backbone on CPU), in the organizers' crop layout."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from synth_affwild import clip_frames, corrupt_annotation, make_affwild_root

from affstream.errors import ConfigError
from affstream.train.bank import FeatureBank
from affstream.train.features import build_feature_bank, numbered_crops
from affstream.train.video_crops import COMPLETE_MARKER, TRACKS_DIR, extract_crops

TINY = "affstream-tiny:random"
FRAMES = 12
BLANK = (4, 5, 6)  # frames of vid01 without a face
SHORT = 2  # vid01's annotation is this many frames shorter than its video (within tolerance)
OPTIONS = {"pipeline": "smoke", "backbone": TINY, "device": "cpu"}


def _write_video_with_blank_frames(target, n, blank):
    """vid01 again (the single_face clip at 320x180) with grey frames at ``blank``."""
    import av
    from PIL import Image

    frames = clip_frames("single_face", n)
    with av.open(str(target), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for k in range(1, n + 1):
            image = np.asarray(Image.fromarray(frames[(k - 1) % len(frames)]).resize((320, 180)))
            if k in blank:
                image = np.full_like(image, 128)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """vid01 (one person, faceless frames 4-6, annotation 2 frames short), vid02_left and
    vid02_right (two people side by side)."""
    path = make_affwild_root(tmp_path_factory.mktemp("video_crops") / "root", n_people=3, frames=FRAMES,
                             with_crops=False, with_videos=True)
    _write_video_with_blank_frames(path / "videos" / "vid01.mp4", FRAMES, BLANK)
    corrupt_annotation(path, "vid01", "expr", "short", drop=SHORT)
    return path


@pytest.fixture(scope="module")
def extracted(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("crops") / "OUT"
    calls = []
    summary = extract_crops(root, out, progress=lambda *args: calls.append(args), **OPTIONS)
    return out, summary, calls


def _tree(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_crops_are_written_where_the_videos_source_finds_the_person(root, extracted, tmp_path):
    from PIL import Image

    out, summary, calls = extracted
    n_frames = {"vid01": FRAMES - SHORT, "vid02_left": FRAMES, "vid02_right": FRAMES}
    expected_crops = FRAMES - SHORT - len(BLANK) + 2 * FRAMES
    assert summary == {"people": 3, "skipped_existing": 0, "failed": {}, "crops": expected_crops,
                       "frames": sum(n_frames.values()), "videos": 2}
    assert calls == [("vid01", 1, 2), ("vid02", 2, 2)]
    assert not (out / TRACKS_DIR).exists()
    assert sorted(p.name for p in (out / "cropped_aligned").iterdir()) == sorted(n_frames)

    build_feature_bank(root, tmp_path / "bank", source="videos", tasks=("expr",), batch_size=16, **OPTIONS)
    bank = FeatureBank.open(tmp_path / "bank")
    for name, n in n_frames.items():
        folder = out / "cropped_aligned" / name
        crops = numbered_crops(folder)
        assert list(crops) == (np.flatnonzero(bank.present(name)) + 1).tolist(), name
        assert all(1 <= k <= n for k in crops)
        for path in crops.values():
            with Image.open(path) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
        assert (folder / COMPLETE_MARKER).is_file()
    assert sorted(numbered_crops(out / "cropped_aligned" / "vid01")) == [
        k for k in range(1, FRAMES - SHORT + 1) if k not in BLANK]


def test_left_and_right_crops_show_their_own_side(root, extracted):
    """vid02's left half is the single_face clip, the right half another clip: each
    person's crops look like their own side, not the other's."""
    from PIL import Image

    out = extracted[0]

    def mean_crop(name):
        folder = out / "cropped_aligned" / name
        return np.mean([np.asarray(Image.open(p), dtype=np.float32) for p in numbered_crops(folder).values()], 0)

    solo, left, right = mean_crop("vid01"), mean_crop("vid02_left"), mean_crop("vid02_right")
    assert np.abs(solo - left).mean() < np.abs(solo - right).mean() / 2


def test_second_call_skips_everything_and_writes_nothing(root, extracted):
    out = extracted[0]
    before = _tree(out)
    calls = []
    summary = extract_crops(root, out, progress=lambda *args: calls.append(args), **OPTIONS)
    assert summary == {"people": 0, "skipped_existing": 3, "failed": {}, "crops": 0, "frames": 0, "videos": 0}
    assert calls == [("vid01", 1, 2), ("vid02", 2, 2)]
    assert _tree(out) == before


def test_interrupted_video_is_redone_from_scratch(root, extracted, tmp_path):
    out = tmp_path / "OUT"
    shutil.copytree(extracted[0], out)
    # killed while vid02 was being extracted: its staging folder half written, its
    # people not published yet
    for name in ("vid02_left", "vid02_right"):
        shutil.rmtree(out / "cropped_aligned" / name)
    stale = out / TRACKS_DIR / "vid02" / "tracks" / "7"
    stale.mkdir(parents=True)
    (stale / "00001.jpg").write_bytes(b"half a crop")
    (out / "cropped_aligned" / "vid02_left").mkdir()  # an empty folder is no obstacle
    summary = extract_crops(root, out, **OPTIONS)
    assert (summary["people"], summary["skipped_existing"], summary["videos"]) == (2, 1, 1)
    assert summary["crops"] == 2 * FRAMES and summary["failed"] == {}
    assert not (out / TRACKS_DIR).exists()
    redone = {k: v[1] for k, v in _tree(out).items()}
    assert redone == {k: v[1] for k, v in _tree(extracted[0]).items()}  # byte for byte


def test_a_failing_video_fails_only_its_people(root, tmp_path):
    broken = tmp_path / "root"
    shutil.copytree(root, broken)
    video = broken / "videos" / "vid02.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # truncated: unreadable
    train = broken / "EXPR_Recognition_Challenge" / "Train_Set"
    shutil.copy(train / "vid01.txt", train / "vid09.txt")  # annotated, but no video
    out = tmp_path / "OUT"
    summary = extract_crops(broken, out, **OPTIONS)
    assert (summary["people"], summary["crops"]) == (1, FRAMES - SHORT - len(BLANK))
    assert set(summary["failed"]) == {"vid02_left", "vid02_right", "vid09"}
    assert summary["failed"]["vid02_left"].startswith(f"{video}: not a readable video")
    assert "no video file for 'vid09'" in summary["failed"]["vid09"]
    assert sorted(p.name for p in (out / "cropped_aligned").iterdir()) == ["vid01"]
    assert not (out / TRACKS_DIR).exists()


def test_annotation_longer_than_the_video_fails_that_person(root, tmp_path):
    broken = tmp_path / "root"
    shutil.copytree(root, broken)
    corrupt_annotation(broken, "vid02_right", "expr", "short", drop=5)
    summary = extract_crops(broken, tmp_path / "OUT", splits=("Validation_Set",), **OPTIONS)
    assert summary["people"] == 1 and list(summary["failed"]) == ["vid02_right"]
    message = summary["failed"]["vid02_right"]
    assert f"{FRAMES - 5} annotated frames but {broken / 'videos' / 'vid02.mp4'} decodes to {FRAMES}" in message
    assert not (tmp_path / "OUT" / "cropped_aligned" / "vid02_right").exists()


def test_output_root_must_not_be_the_dataset_root(root, tmp_path):
    with pytest.raises(ConfigError, match="is the dataset root") as info:
        extract_crops(root, root, **OPTIONS)
    assert str(info.value).startswith(f"output folder {root} is the dataset root {root};")
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    with pytest.raises(ConfigError, match=f"output folder {link} is the dataset root {root};"):
        extract_crops(root, link, **OPTIONS)
    with pytest.raises(ConfigError, match="JPEG quality"):
        extract_crops(root, tmp_path / "OUT", jpeg_quality=0, **OPTIONS)
    assert not (tmp_path / "OUT").exists()


def test_iter_face_crops_are_the_backbones_input(root):
    import torch

    from affstream.api import resolve_config
    from affstream.pipeline import load_stages
    from affstream.pipeline.offline import iter_face_crops, iter_face_features

    stages = load_stages(resolve_config("smoke", device="cpu"), with_head=False)
    video = root / "videos" / "vid02.mp4"
    crops = list(iter_face_crops(video, stages))
    feats = list(iter_face_features(video, stages))
    assert [f.frame_index for f, _ in crops] == [f.frame_index for f, _ in feats] == list(range(1, FRAMES + 1))
    backbone = stages.backbone
    for (faces, images), (same_faces, features) in zip(crops, feats, strict=True):
        assert [t.track_id for t in faces.faces] == [t.track_id for t in same_faces.faces]
        assert images.dtype == np.uint8 and images.shape == (len(faces.faces), 64, 64, 3)
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
        std = torch.tensor(backbone.std).view(1, 3, 1, 1)
        again = backbone.encode_images((batch - mean) / std).cpu().numpy()
        np.testing.assert_allclose(again, features, atol=2e-2)  # only rounding to uint8 differs
