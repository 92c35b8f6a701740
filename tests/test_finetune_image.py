"""Fine-tuning the CLIP image encoder (seed method 2, first stage) and using the result.

The encoder is the tiny random CLIP (``affstream-tiny:random``, open_clip with
``pretrained=None``); the data are synthetic Aff-Wild2-format face crops whose
expression is a small mark over the mouth (tests/synth_faces.py): a frozen random
encoder's features hardly show it, an encoder trained on the labels learns to.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from synth_faces import glyphs, make_face_root

from affstream.cli import main
from affstream.embed.backbone import load_backbone
from affstream.embed.card import read_backbone_card
from affstream.errors import ConfigError, DataError, WeightsError
from affstream.train.encoder import EncoderClassifier, chunks, finetune_image, sample_order
from affstream.train.face_crops import CropDataset, FaceAugment, collate_usable, index_crops

TINY = "affstream-tiny:random"


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def face_root(tmp_path_factory):
    return make_face_root(tmp_path_factory.mktemp("faces") / "root")


@pytest.fixture(scope="module")
def tuned(face_root, tmp_path_factory):
    """``affstream finetune image`` with every option at its default (on the CPU)."""
    out = tmp_path_factory.mktemp("tuned") / "expr_tiny"
    result = _invoke("finetune", "image", face_root, "--backbone", TINY, "--task", "expr", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "best epoch" in result.stderr and f"--backbone affstream-tiny:{out}.safetensors" in result.stderr
    return out


def _bank_f1(root, backbone: str, folder) -> float:
    """EXPR F1 on Validation_Set of the default MLP head trained on ``backbone``'s features."""
    bank, head = folder / "bank", folder / "head"
    assert _invoke("features", root, "-o", bank, "--backbone", backbone, "--device", "cpu").exit_code == 0
    trained = _invoke("train", "--features", bank, "--task", "expr", "--head", "mlp", "-o", head, "--device", "cpu")
    assert trained.exit_code == 0, trained.output
    evaluated = _invoke("evaluate", "--features", bank, "--head", head, "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    return json.loads(evaluated.stdout)["expr_f1"]


def test_fine_tuned_encoder_gives_clearly_better_features_than_the_frozen_one(face_root, tuned, tmp_path):
    (tmp_path / "frozen").mkdir()
    (tmp_path / "tuned").mkdir()
    frozen = _bank_f1(face_root, TINY, tmp_path / "frozen")
    fine = _bank_f1(face_root, f"affstream-tiny:{tuned}.safetensors", tmp_path / "tuned")
    print(f"EXPR F1 of the default MLP head: frozen encoder {frozen:.3f}, fine-tuned {fine:.3f}")
    assert fine >= frozen + 0.15, (frozen, fine)
    assert fine > 0.5, (frozen, fine)


def test_backbone_card_records_base_training_data_and_metrics(tuned):
    card = read_backbone_card(f"{tuned}.safetensors")
    assert card["format"] == "affstream-backbone" and card["arch"] == "affstream-tiny" and card["base"] == TINY
    assert card["meaningful"] is False  # a random base stays meaningless
    training = card["training"]
    assert training["lr"] == 1e-4 and training["batch_size"] == 256 and training["epochs"] == 3
    assert training["total_steps"] >= 200 and training["precision_used"] == "fp32" and training["device"] == "cpu"
    assert training["grad_checkpointing"] is True and "head_lr" in training["differs_from_paper"]
    data = card["data"]
    assert data["train_people"] == 6 and data["val_people"] == 3 and data["train_crops"] > 1000
    assert sum(data["train_class_counts"].values()) == data["train_crops"]
    assert 0 < card["metrics"]["expr_f1"] <= 1 and card["metrics"]["split"] == "Validation_Set"
    assert len(card["history"]) == 3
    assert not (tuned.parent / f"{tuned.name}.resume").exists()
    weights, card_file = tuned.parent / f"{tuned.name}.safetensors", tuned.parent / f"{tuned.name}.json"
    assert weights.stat().st_mode & 0o777 == card_file.stat().st_mode & 0o777  # not left 0600 by safetensors


def test_checkpoint_loads_through_backbone_spec_and_differs_from_the_base(tuned, face_root):
    base = load_backbone(TINY, "cpu")
    fine = load_backbone(f"affstream-tiny:{tuned}.safetensors", "cpu")
    assert fine.card is not None and fine.identity()["fine_tuned_from"] == TINY and not fine.meaningful
    crops = torch.rand(4, 3, 64, 64)
    assert not torch.allclose(base.encode_images(crops), fine.encode_images(crops), atol=1e-3)
    # the text tower is kept as it was: prompts embed identically
    assert torch.allclose(base.encode_texts(["a photo of a face"]), fine.encode_texts(["a photo of a face"]))
    with pytest.raises(WeightsError, match="affstream-tiny"):
        load_backbone(f"ViT-B-32:{tuned}.safetensors", "cpu")


def test_annotate_with_the_fine_tuned_backbone_and_a_head_trained_on_its_features(tuned, face_root, tmp_path,
                                                                                    single_face_mp4):
    spec = f"affstream-tiny:{tuned}.safetensors"
    bank, head = tmp_path / "bank", tmp_path / "head"
    assert _invoke("features", face_root, "-o", bank, "--backbone", spec, "--device", "cpu").exit_code == 0
    assert _invoke("train", "--features", bank, "--task", "expr", "-o", head, "--min-steps", "20", "--epochs", "2",
                   "--device", "cpu").exit_code == 0
    result = _invoke("annotate", single_face_mp4, "-o", tmp_path / "ann", "--pipeline", "smoke", "--backbone", spec,
                     "--head", head, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(next((tmp_path / "ann").glob("*.json")).read_text())
    assert json.dumps(report).count("fine_tuned_from") >= 1
    rows = next((tmp_path / "ann").glob("*.csv")).read_text().splitlines()
    assert len(rows) > 10
    wrong = _invoke("annotate", single_face_mp4, "-o", tmp_path / "ann2", "--pipeline", "smoke", "--backbone", TINY,
                    "--head", head, "--device", "cpu")
    assert wrong.exit_code != 0 and spec in wrong.stderr


# --------------------------------------------------------------------------- pieces


def test_sample_order_is_a_permutation_per_pass_and_resumable():
    whole = sample_order(10, 3, 0, 35)
    for p in range(3):
        assert sorted(whole[10 * p : 10 * p + 10]) == list(range(10))
    assert not np.array_equal(whole[:10], whole[10:20])
    assert np.array_equal(sample_order(10, 3, 17, 11), whole[17:28])
    assert not np.array_equal(sample_order(10, 4, 0, 10), whole[:10])


def test_micro_batches_never_leave_a_single_crop():
    assert chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunks(9, 4) == [(0, 4), (4, 9)]
    assert chunks(3, 8) == [(0, 3)]
    assert chunks(1, 8) == [(0, 1)]


def test_accumulated_micro_batch_gradient_equals_the_whole_batch():
    torch.manual_seed(0)
    backbone = load_backbone(TINY, "cpu")
    visual = backbone.model.visual
    for p in visual.parameters():
        p.requires_grad_(True)
    model = EncoderClassifier(visual, 64, 32, 8, 0.0).eval()  # eval: batch norm uses its running statistics
    x, y = torch.randn(10, 3, 64, 64), torch.randint(0, 8, (10,))
    w = torch.rand(8) + 0.5
    model.zero_grad()
    F.cross_entropy(model(x), y, weight=w).backward()
    whole = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    for start, stop in chunks(10, 4):
        (F.cross_entropy(model(x[start:stop]), y[start:stop], weight=w, reduction="sum") / w[y].sum()).backward()
    parts = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(whole, parts, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_face_augmentation_is_seeded_keeps_shape_and_mirrors_symmetric_marks(face_root):
    index = index_crops(face_root, "Train_Set")
    images, _labels, dropped = collate_usable([CropDataset(index, 64)[i] for i in range(16)])
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 64, 64) and dropped == []
    aug = FaceAugment(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    a = aug(images, torch.Generator().manual_seed(1))
    b = aug(images, torch.Generator().manual_seed(1))
    c = aug(images, torch.Generator().manual_seed(2))
    assert a.shape == (16, 3, 64, 64) and a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= -2.0 - 1e-5 and float(a.max()) <= 2.0 + 1e-5  # clamped to [0, 1] before normalising
    plain = aug.normalize(images)
    assert torch.allclose(plain, (images.float() / 255 - 0.5) / 0.25)
    g = glyphs()
    assert np.array_equal(g, g[:, :, ::-1]) and len({m.tobytes() for m in g}) == 8


def test_index_crops_skips_unlabelled_frames_and_keeps_every_kth(face_root):
    index = index_crops(face_root, "Train_Set")
    assert (index.labels >= 0).all() and len(index.people) == 6 and len(index) < 6 * 200
    sparse = index_crops(face_root, "Train_Set", frame_step=5)
    assert len(index) / 5 - 12 <= len(sparse) <= len(index) / 5 + 12
    with pytest.raises(DataError, match="expressions only"):
        index_crops(face_root, "Train_Set", "au")


def test_resumed_run_equals_an_uninterrupted_one(face_root, tmp_path):
    options = dict(backbone=TINY, epochs=2, min_steps=6, batch_size=32, save_every=2, device="cpu", workers=0,
                   val_frames=64)
    finetune_image(face_root, out=tmp_path / "whole", **options)

    class Stop(Exception):
        pass

    def stop_after_four(event):
        if event["event"] == "step" and event["epoch"] == 1 and event["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        finetune_image(face_root, out=tmp_path / "cut", progress=stop_after_four, **options)
    assert (tmp_path / "cut.resume" / "state.json").is_file() and not (tmp_path / "cut.safetensors").exists()
    with pytest.raises(ConfigError, match="--resume"):
        finetune_image(face_root, out=tmp_path / "cut", **options)
    with pytest.raises(ConfigError, match="lr"):
        finetune_image(face_root, out=tmp_path / "cut", resume=True, **{**options, "lr": 1e-3})
    import shutil

    other = tmp_path / "other_root"
    shutil.copytree(face_root, other)
    with pytest.raises(ConfigError, match="root"):
        finetune_image(other, out=tmp_path / "cut", resume=True, **options)
    summary = finetune_image(face_root, out=tmp_path / "cut", resume=True, **options)
    assert summary["resumed_from"] == 2
    from safetensors.torch import load_file

    whole, cut = load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "cut.safetensors"))
    assert whole.keys() == cut.keys()
    for key in whole:
        assert torch.equal(whole[key], cut[key]), key


def test_unreadable_crop_is_dropped_and_counted(face_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(face_root, root)
    victim = sorted((root / "cropped_aligned" / "face00").glob("*.jpg"))[10]
    victim.write_bytes(victim.read_bytes()[:200])
    summary = finetune_image(root, backbone=TINY, out=tmp_path / "bb", epochs=1, min_steps=2, batch_size=600,
                             device="cpu", workers=0, val_frames=32)
    card = json.loads((tmp_path / "bb.json").read_text())
    assert summary["total_steps"] >= 2 and card["data"]["unreadable_crops_dropped"] >= 1


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, face_root):
    missing = _invoke("finetune", "image", tmp_path / "nowhere", "--backbone", TINY, "-o", tmp_path / "o", "--device", "cpu")
    assert missing.exit_code == 2 and "nowhere" in _error_line(missing)
    bare = tmp_path / "bare"
    (bare / "EXPR_Recognition_Challenge" / "Train_Set").mkdir(parents=True)
    for f in (face_root / "EXPR_Recognition_Challenge" / "Train_Set").iterdir():
        (bare / "EXPR_Recognition_Challenge" / "Train_Set" / f.name).write_text(f.read_text())
    no_crops = _invoke("finetune", "image", bare, "--backbone", TINY, "-o", tmp_path / "o", "--device", "cpu")
    assert no_crops.exit_code == 2 and "no labelled crops" in _error_line(no_crops)
    spec = _invoke("finetune", "image", face_root, "--backbone", "NoSuchNet:random", "-o", tmp_path / "o")
    assert spec.exit_code == 2 and "NoSuchNet" in _error_line(spec)
    bf16 = _invoke("finetune", "image", face_root, "--backbone", TINY, "-o", tmp_path / "o", "--device", "cpu",
                   "--precision", "bf16")
    assert bf16.exit_code == 2 and "bf16" in _error_line(bf16)
    assert not list(tmp_path.glob("o*"))


def test_stream_and_corpus_accept_the_fine_tuned_backbone(tuned, tmp_path, single_face_mp4):
    spec = f"affstream-tiny:{tuned}.safetensors"
    streamed = _invoke("stream", single_face_mp4, "-o", tmp_path / "live", "--pipeline", "smoke", "--backbone", spec,
                       "--max-frames", "20", "--quiet", "--device", "cpu")
    assert streamed.exit_code == 0, streamed.output
    report = json.loads(next((tmp_path / "live").glob("*.json")).read_text())
    assert "fine_tuned_from" in json.dumps(report)
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(single_face_mp4.read_bytes())
    corpus = _invoke("corpus", videos, "-o", tmp_path / "corpus", "--pipeline", "smoke", "--backbone", spec, "--device",
                     "cpu")
    assert corpus.exit_code == 0, corpus.output
    assert "fine_tuned_from" in (tmp_path / "corpus" / "a.json").read_text()


def test_finetune_from_videos_extracts_crops_once_and_trains_on_them(tmp_path):
    from synth_affwild import make_affwild_root

    root = make_affwild_root(tmp_path / "root", n_people=3, frames=30, with_crops=False, with_videos=True)
    out = tmp_path / "bb"
    args = ("finetune", "image", root, "--source", "videos", "--backbone", TINY, "-o", out, "--epochs", "1",
            "--min-steps", "3", "--batch-size", "16", "--workers", "0", "--device", "cpu")
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    crops = tmp_path / "bb.crops" / "cropped_aligned"
    people = sorted(p.name for p in crops.iterdir())
    assert people == ["vid01", "vid02_left", "vid02_right"]
    first = {p: p.stat().st_mtime_ns for p in crops.rglob("*.jpg")}
    assert len(first) > 40
    card = read_backbone_card(f"{out}.safetensors")
    assert card["data"]["source"] == "videos" and card["data"]["crops_dir"] == str(tmp_path / "bb.crops")
    assert card["data"]["train_people"] + card["data"]["val_people"] == 3
    (tmp_path / "bb.safetensors").unlink()
    (tmp_path / "bb.json").unlink()
    again = _invoke(*args)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in crops.rglob("*.jpg")} == first  # reused, not extracted again
    assert not list(root.rglob("cropped_aligned"))  # never written into the dataset root


def test_every_crop_unreadable_is_an_error_and_writes_nothing(face_root, tmp_path):
    import shutil

    root = tmp_path / "dead"
    shutil.copytree(face_root, root)
    for crop in (root / "cropped_aligned").rglob("*.jpg"):
        crop.write_bytes(b"")
    result = _invoke("finetune", "image", root, "--backbone", TINY, "-o", tmp_path / "o", "--device", "cpu",
                     "--workers", "0", "--min-steps", "2", "--batch-size", "16", "--epochs", "1")
    assert result.exit_code == 2
    assert "no training step" in result.stderr.splitlines()[-1] and result.stderr.count("Traceback") == 0
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.json").exists()


def test_divergence_stops_with_a_message(face_root, tmp_path):
    with pytest.raises(ConfigError, match="diverged"):
        finetune_image(face_root, backbone=TINY, out=tmp_path / "o", epochs=1, min_steps=20, batch_size=16,
                       lr=1e4, head_lr=1e4, device="cpu", workers=0, val_frames=16)
    assert not (tmp_path / "o.safetensors").exists()


def test_output_never_replaces_the_base_weights_and_cards_are_required(tuned, face_root, tmp_path):
    import shutil

    base = tmp_path / "base.safetensors"
    shutil.copy(f"{tuned}.safetensors", base)
    shutil.copy(f"{tuned}.json", tmp_path / "base.json")
    before = base.read_bytes()
    result = _invoke("finetune", "image", face_root, "--backbone", f"affstream-tiny:{base}", "-o", tmp_path / "base",
                     "--device", "cpu")
    assert result.exit_code == 2 and "replace the input" in _error_line(result) and base.read_bytes() == before
    (tmp_path / "base.json").write_text('{"format": "affstream-backbone", "ver')
    with pytest.raises(WeightsError, match="unreadable backbone card"):
        load_backbone(f"affstream-tiny:{base}", "cpu")
    (tmp_path / "base.json").unlink()
    with pytest.raises(WeightsError, match=r"card .* is missing"):
        load_backbone(f"affstream-tiny:{base}", "cpu")


def test_checkpoint_names_append_their_suffix():
    from affstream.embed.card import backbone_paths
    from affstream.heads.base import checkpoint_paths

    for fn in (backbone_paths, checkpoint_paths):
        assert [p.name for p in fn("dir/vitl_expr.v2")] == ["vitl_expr.v2.safetensors", "vitl_expr.v2.json"]
        assert [p.name for p in fn("dir/vitl_expr.safetensors")] == ["vitl_expr.safetensors", "vitl_expr.json"]
        assert [p.name for p in fn("dir/vitl_expr")] == ["vitl_expr.safetensors", "vitl_expr.json"]


def test_foreign_weights_error_says_which_keys_do_not_fit(tmp_path):
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(WeightsError, match=r"missing key\(s\), e\.g\. .*1 unexpected key\(s\), e\.g\. foo"):
        load_backbone(f"affstream-tiny:{tmp_path / 'foreign.safetensors'}", "cpu")


def test_a_side_person_without_its_own_crop_folder_is_skipped_not_fatal(face_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(face_root, root)
    val = root / "EXPR_Recognition_Challenge" / "Validation_Set"
    shutil.copy(val / "face08.txt", val / "vid9_left.txt")
    index = index_crops(root, "Validation_Set")
    assert "vid9_left" in index.skipped and len(index.people) == 3
