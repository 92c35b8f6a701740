"""The training commands end to end through click: features, train, evaluate, export-abaw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from synth_affwild import make_affwild_root, make_feature_bank, read_manifest

from affstream.cli import main
from affstream.heads.base import read_card, save_head
from affstream.heads.mlp import MLPHead
from affstream.train.bank import FeatureBank

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    return make_feature_bank(tmp_path_factory.mktemp("bank") / "bank", n_people=5, frames=(60, 90), dim=16, seed=2)


@pytest.fixture(scope="module")
def head_path(bank_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("head") / "head"
    result = CliRunner().invoke(main, [
        "train", "--features", str(bank_path), "--task", "all", "--head", "mlp", "-o", str(out),
        "--epochs", "2", "--width", "16", "--dropout", "0.1", "--batch-size", "16", "--seed", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out, result


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    return lines[0]


def test_train_writes_a_head_and_reports_epochs(head_path, bank_path):
    out, result = head_path
    card = read_card(out)
    assert card.tasks == ("expr", "au", "va") and card.config["training"]["epochs"] == 2
    assert card.backbone == FeatureBank.open(bank_path).backbone
    assert "epoch 1/2" in result.stderr and "epoch 2/2" in result.stderr and "expr_f1=" in result.stderr
    assert result.stdout == ""


def test_evaluate_prints_one_json_object(head_path, bank_path):
    out, _ = head_path
    result = CliRunner().invoke(main, ["evaluate", "--features", str(bank_path), "--head", str(out) + ".safetensors",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    assert {"expr_f1", "au_f1", "va_ccc", "expr_f1_per_class", "au_f1_per_au", "va_ccc_valence", "va_ccc_arousal",
            "n_frames"} <= set(data)
    assert data["split"] == "Validation_Set"
    assert data["expr_f1"] == pytest.approx(read_card(out).metrics["expr_f1"])
    assert len(result.stdout.strip().splitlines()) == 1


def test_evaluate_errors_exit_2_with_one_line(head_path, bank_path, tmp_path):
    torch.manual_seed(0)
    other = tmp_path / "other"
    save_head(MLPHead(16, ("expr",), width=8, backbone="ViT-B-32:openai"), other)
    result = CliRunner().invoke(main, ["evaluate", "--features", str(bank_path), "--head", str(other), "--device", "cpu"])
    assert result.exit_code == 2 and result.stdout == ""
    line = _error_line(result)
    assert "ViT-B-32:openai" in line and "synthetic:seed2" in line
    result = CliRunner().invoke(main, ["evaluate", "--features", str(tmp_path / "missing"), "--head", str(head_path[0])])
    assert result.exit_code == 2 and result.stdout == ""
    assert "index.json" in _error_line(result)


def test_train_rejects_options_of_the_other_head(bank_path, tmp_path):
    result = CliRunner().invoke(main, ["train", "--features", str(bank_path), "--task", "expr", "--head", "mlp",
                                       "--window", "10", "-o", str(tmp_path / "h"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "window_length" in _error_line(result)
    assert not (tmp_path / "h.safetensors").exists()


def test_export_abaw_with_a_list_file(head_path, bank_path, tmp_path):
    bank = FeatureBank.open(bank_path)
    names = bank.split("Train_Set")[:2]
    listing = tmp_path / "test_set.txt"
    listing.write_text("\n".join(names) + "\n")
    result = CliRunner().invoke(main, ["export-abaw", "--features", str(bank_path), "--head", str(head_path[0]),
                                       "-o", str(tmp_path / "sub"), "--task", "au", "--list", str(listing),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "sub" / "AU.txt").read_text().splitlines()
    assert lines[0].startswith("image_location,AU1,")
    assert len(lines) - 1 == sum(bank.people[n]["n_frames"] for n in names)
    missing = sum(int((~bank.present(n)).sum()) for n in names)
    assert f"{missing} frame(s) without a face filled" in result.stderr
    assert result.stdout == ""
    result = CliRunner().invoke(main, ["export-abaw", "--features", str(bank_path), "--head", str(head_path[0]),
                                       "-o", str(tmp_path / "sub2"), "--list", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2 and "nope.txt" in _error_line(result)


def test_features_command_builds_a_bank(tmp_path):
    root = make_affwild_root(tmp_path / "root", n_people=3, frames=10, seed=1)
    out = tmp_path / "features"
    args = ["features", str(root), "-o", str(out), "--backbone", "affstream-tiny:random", "--device", "cpu",
            "--batch-size", "8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    bank = FeatureBank.open(out)
    manifest = read_manifest(root)
    assert set(bank.people) == set(manifest)
    for name, entry in manifest.items():
        present = bank.present(name)
        assert np.flatnonzero(~present).tolist() == [k - 1 for k in entry["deleted"]]
    assert "3 people written" in result.stderr and result.stdout == ""
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 people written, 3 already there" in again.stderr
    bad = CliRunner().invoke(main, ["features", str(tmp_path / "no_root"), "-o", str(tmp_path / "f2"),
                                    "--backbone", "affstream-tiny:random", "--device", "cpu"])
    assert bad.exit_code == 2 and "no_root" in _error_line(bad)


def test_features_command_keeps_going_past_a_decompression_bomb(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    root = make_affwild_root(tmp_path / "root", n_people=3, frames=10, seed=1)
    manifest = read_manifest(root)
    name = sorted(manifest)[0]
    frame = next(k for k in range(1, 11) if k not in manifest[name]["deleted"])
    bomb = root / "cropped_aligned" / name / f"{frame:05d}.jpg"
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    out = tmp_path / "features"
    result = CliRunner().invoke(main, ["features", str(root), "-o", str(out), "--backbone", "affstream-tiny:random",
                                       "--device", "cpu", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "3 people written" in result.stderr
    unwrapped = "".join(result.stderr.split())  # the log handler wraps long lines
    assert f"{bomb}:unreadablecrop(itsheaderdeclares30000x30000pixels" in unwrapped
    assert f"1 crop(s) could not be used and are missing frames (see the warnings above): {name} (1)" in result.stderr
    assert not FeatureBank.open(out).present(name)[frame - 1]


def test_a_bank_index_with_a_string_frame_count_is_one_line(bank_path, tmp_path):
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(bank_path, bank)
    index = json.loads((bank / "index.json").read_text())
    name = sorted(index["people"])[0]
    index["people"][name]["n_frames"] = str(index["people"][name]["n_frames"])
    (bank / "index.json").write_text(json.dumps(index))
    result = CliRunner().invoke(main, ["train", "--features", str(bank), "--task", "expr", "-o", str(tmp_path / "h"),
                                       "--device", "cpu"])
    assert result.exit_code == 2
    line = _error_line(result)
    assert f"{bank / 'index.json'}: people.{name}.n_frames must be an integer >= 0" in line
    assert not (tmp_path / "h.safetensors").exists()
