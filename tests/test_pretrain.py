"""CLEF's weakly supervised contrastive pre-training (``affstream finetune pretrain``).

Losses against hand computations, the group manifest's checks, a few steps lowering the
loss, and a full run whose backbone (both towers changed) feeds a feature bank and a
CLEF text head. The model is the tiny random CLIP; the crops are tests/synth_faces.py's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from synth_faces import make_face_root

from affstream.cli import main
from affstream.embed.backbone import load_backbone
from affstream.errors import DataError
from affstream.train.face_crops import CropDataset, collate_usable
from affstream.train.pretrain import (
    PretrainConfig,
    _setup,
    batch_loss,
    image_text_loss,
    read_group_manifest,
    supcon_loss,
)

TINY = "affstream-tiny:random"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_face_root(tmp_path_factory.mktemp("faces") / "root", n_train=4, n_val=2, frames=60)


def _manifest(root, path, form="crop"):
    lines = ["crop,group,text" if form == "crop" else "person,frame,group,text"]
    for i in range(6):
        group = "funny" if i % 2 else "calm"
        text = "the person watches a funny video" if i % 2 else "the person sits calmly"
        for k in range(1, 61, 3):
            if form == "crop":
                lines.append(f"cropped_aligned/face{i:02d}/{k:05d}.jpg,{group},{text}")
            else:
                lines.append(f"face{i:02d},{k},{group},{text}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_supcon_loss_equals_hand_computed_value():
    v = F.normalize(torch.tensor([[1.0, 0.2], [0.9, 0.4], [-0.3, 1.0], [0.1, -1.0], [0.5, 0.5]]), dim=-1)
    g = torch.tensor([0, 0, 1, 1, 2])  # the last row has no positive: not an anchor
    tau = 0.5
    sim = (v @ v.T).numpy() / tau
    total, anchors = 0.0, 0
    for i in range(5):
        others = [j for j in range(5) if j != i]
        denom = math.log(sum(math.exp(sim[i, j]) for j in others))
        pos = [j for j in others if g[j] == g[i]]
        if pos:
            total += -sum(sim[i, j] - denom for j in pos) / len(pos)
            anchors += 1
    assert supcon_loss(v, g, tau).item() == pytest.approx(total / anchors, rel=1e-5)
    assert supcon_loss(v[[0, 2, 4]], torch.tensor([0, 1, 2]), tau).item() == 0.0


def test_image_text_loss_equals_hand_computed_value():
    images = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=-1)
    texts = F.normalize(torch.tensor([[1.0, 0.1], [0.2, 1.0]]), dim=-1)
    target = torch.tensor([0, 0, 1])
    scale = torch.tensor(3.0)
    logits = (scale * images @ texts.T).numpy()
    i2t = np.mean([-(logits[n, target[n]] - np.log(np.exp(logits[n]).sum())) for n in range(3)])
    t2i = []
    for t in range(2):
        col = logits[:, t]
        lse = np.log(np.exp(col).sum())
        pos = [n for n in range(3) if target[n] == t]
        t2i.append(-np.mean([col[n] - lse for n in pos]))
    assert image_text_loss(images, texts, target, scale).item() == pytest.approx((i2t + np.mean(t2i)) / 2, rel=1e-5)


def test_manifest_forms_agree_and_bad_lines_are_named(root, tmp_path):
    a = read_group_manifest(_manifest(root, tmp_path / "a.csv"), root)
    b = read_group_manifest(_manifest(root, tmp_path / "b.csv", form="person"), root)
    assert a.groups == b.groups == ("calm", "funny") and len(a.crops) == len(b.crops) == 120
    assert [p.resolve() for p in a.crops.paths] == [p.resolve() for p in b.crops.paths]
    assert a.crops.labels.tolist() == b.crops.labels.tolist()
    cases = {
        "crop,label\nx.jpg,1\n": ":1: header",
        "crop,group,text\ncropped_aligned/face00/00001.jpg,calm,\n": ":2: empty text",
        "person,frame,group,text\nface00,zero,calm,t\n": ":2: frame 'zero'",
        "crop,group,text\ncropped_aligned/face00/09999.jpg,calm,t\n": ":2: crop",
        "crop,group,text\ncropped_aligned/face00/00001.jpg,calm,t\ncropped_aligned/face00/00002.jpg,calm,u\n":
            ":3: group 'calm' has another text than on line 2",
        "crop,group,text\ncropped_aligned/face00/00001.jpg,calm,t\n": "at least two",
        "crop,group,text,text\ncropped_aligned/face00/00001.jpg,calm,t,t\n": ":1: column text appears twice",
        "crop,group,text\ncropped_aligned/face00/00001.jpg,calm,t\ncropped_aligned/face00/00002.jpg,funny,t\n":
            "the same text",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match=message.replace("(", r"\(")):
            read_group_manifest(bad, root)
    with pytest.raises(DataError, match="not found"):
        read_group_manifest(tmp_path / "none.csv", root)


def test_a_few_steps_lower_the_loss(root, tmp_path):
    run = _setup(root, _manifest(root, tmp_path / "m.csv"), PretrainConfig(), TINY, "cpu", 0)
    dataset = CropDataset(run.data.crops, run.backbone.image_size)
    images, groups, _ = collate_usable([dataset[i] for i in range(0, 120, 4)])
    with torch.no_grad():
        before = batch_loss(run, images, groups, 0)[0].item()
    optimizer = torch.optim.AdamW(run.backbone.model.parameters(), lr=1e-4)
    for _ in range(8):
        optimizer.zero_grad()
        batch_loss(run, images, groups, 0)[0].backward()
        optimizer.step()
    with torch.no_grad():
        after = batch_loss(run, images, groups, 0)[0].item()
    assert after < before - 0.05, (before, after)


def test_cli_pretrain_then_bank_and_clef_head_on_its_towers(root, tmp_path):
    manifest = _manifest(root, tmp_path / "m.csv")
    out = tmp_path / "pre"
    result = CliRunner().invoke(main, ["finetune", "pretrain", str(root), "--groups", str(manifest), "--backbone", TINY,
                                       "-o", str(out), "--epochs", "1", "--min-steps", "4", "--batch-size", "32",
                                       "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert f"--backbone affstream-tiny:{out}.safetensors" in result.stderr
    card = json.loads((tmp_path / "pre.json").read_text())
    assert card["format"] == "affstream-backbone" and card["base"] == TINY and card["meaningful"] is False
    assert card["data"]["groups"]["funny"] == {"text": "the person watches a funny video", "crops": 60}
    assert card["training"]["total_steps"] == 4 and len(card["history"]) == 1
    spec = f"affstream-tiny:{out}.safetensors"
    base, pre = load_backbone(TINY, "cpu"), load_backbone(spec, "cpu")
    x = torch.rand(2, 3, 64, 64)
    assert not torch.allclose(base.encode_images(x), pre.encode_images(x), atol=1e-4)
    assert not torch.allclose(base.encode_texts(["a face"]), pre.encode_texts(["a face"]), atol=1e-4)
    bank = tmp_path / "bank"
    made = CliRunner().invoke(main, ["features", str(root), "-o", str(bank), "--backbone", spec, "--device", "cpu"])
    assert made.exit_code == 0, made.output
    head = tmp_path / "clef"
    tuned = CliRunner().invoke(main, ["finetune", "text", "--features", str(bank), "--task", "expr", "-o", str(head),
                                      "--epochs", "1", "--min-steps", "5", "--device", "cpu"])
    assert tuned.exit_code == 0, tuned.output
    assert json.loads((tmp_path / "clef.json").read_text())["backbone"] == spec


def test_cli_pretrain_bad_manifest_is_one_line(root, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("crop,group,text\ncropped_aligned/face00/00001.jpg,calm,t\n")
    result = CliRunner().invoke(main, ["finetune", "pretrain", str(root), "--groups", str(bad), "--backbone", TINY,
                                       "-o", str(tmp_path / "o"), "--device", "cpu"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.csv" in lines[0] and "two" in lines[0]
    assert not list(tmp_path.glob("o*"))
