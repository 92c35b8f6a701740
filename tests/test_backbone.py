"""Backbone specs, loading (random, file, cached tag, offline) and embedding, on the CPU.

Only tiny or random models: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import time

import pytest
import torch

from affstream import weights
from affstream.embed import backbone as bb
from affstream.embed.backbone import Backbone, BackboneSpec, load_backbone
from affstream.errors import ConfigError, WeightsError

TINY = "affstream-tiny:random"


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone(TINY, "cpu", batch_size=64)


@pytest.fixture
def isolated_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache and affstream cache; huggingface_hub reads its cache
    path at import, so the module constant is patched too."""
    from huggingface_hub import constants, file_download

    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    if hasattr(file_download, "HF_HUB_CACHE"):  # older huggingface_hub copies it at import (seen with 0.21)
        monkeypatch.setattr(file_download, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("AFFSTREAM_CACHE", str(tmp_path / "affstream"))
    return hub


@pytest.mark.parametrize(
    "spec, arch, source, kind",
    [
        ("ViT-L-14:openai", "ViT-L-14", "openai", "pretrained"),
        ("ViT-L/14:openai", "ViT-L-14", "openai", "pretrained"),
        ("vit-b-32:laion2b-s34b-b79k", "ViT-B-32", "laion2b_s34b_b79k", "pretrained"),
        ("ViT-B-32:RANDOM", "ViT-B-32", "random", "random"),
        ("affstream-tiny:random", "affstream-tiny", "random", "random"),
        ("ViT-B-32:/data/w.safetensors", "ViT-B-32", "/data/w.safetensors", "file"),
        ("ViT-B-32:weights.bin", "ViT-B-32", "weights.bin", "file"),
    ],
)
def test_parse_normalises_and_classifies(spec, arch, source, kind):
    parsed = BackboneSpec.parse(spec)
    assert (parsed.arch, parsed.source, parsed.kind) == (arch, source, kind)
    assert str(parsed) == f"{arch}:{source}"
    assert BackboneSpec.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("nonsense", "must be ARCH:SOURCE"),
        (":openai", "must be ARCH:SOURCE"),
        ("ViT-B-32:", "must be ARCH:SOURCE"),
        ("ViT-B-33:openai", "open_clip.list_models()"),
        ("ViT-B-32:not-a-tag", "known tags: openai"),
    ],
)
def test_bad_specs_raise_config_error(spec, fragment):
    with pytest.raises(ConfigError, match="backbone spec") as info:
        BackboneSpec.parse(spec)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="precision"):
        load_backbone(TINY, precision="fp8")
    with pytest.raises(ConfigError, match="batch_size"):
        load_backbone(TINY, batch_size=0)


def test_tiny_backbone_attributes(tiny):
    assert tiny.feature_dim == 64 and tiny.image_size == 64
    assert tiny.device == torch.device("cpu") and tiny.precision == "fp32"
    assert not tiny.meaningful and tiny.sha256 is None
    assert len(tiny.mean) == 3 and len(tiny.std) == 3
    assert tiny.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert not tiny.model.training
    assert tiny.identity() == {
        "spec": TINY,
        "arch": "affstream-tiny",
        "source": "random",
        "feature_dim": 64,
        "image_size": 64,
        "sha256": None,
        "meaningful": False,
    }


def test_encode_images_normalised_deterministic_and_chunked(tiny):
    crops = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    feats = tiny.encode_images(crops)
    assert feats.shape == (5, 64) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert not torch.allclose(feats[0], feats[1])

    rng_before = torch.get_rng_state()
    again = load_backbone(TINY, batch_size=2)  # seeded init, smaller chunks
    assert torch.equal(torch.get_rng_state(), rng_before), "loading must not move the global RNG"
    assert torch.allclose(again.encode_images(crops), feats, atol=1e-5)

    empty = tiny.encode_images(torch.zeros(0, 3, 64, 64))
    assert empty.shape == (0, 64)
    with pytest.raises(ValueError, match="expected crops"):
        tiny.encode_images(torch.zeros(2, 3, 32, 32))


def test_encode_texts(tiny):
    texts = ["a photo of a smiling face.", "a photo of a frowning face.", "x"]
    emb = tiny.encode_texts(texts)
    assert emb.shape == (3, 64) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(tiny.encode_texts(texts[:1]), emb[:1], atol=1e-5)
    assert not torch.allclose(emb[0], emb[1])
    assert tiny.encode_texts([]).shape == (0, 64)


def test_local_weights_file(tiny, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("AFFSTREAM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.safetensors"
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(state, str(path))
    loaded = load_backbone(f"affstream-tiny:{path}")
    assert loaded.spec.kind == "file" and loaded.meaningful
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    crops = torch.randn(2, 3, 64, 64)
    assert torch.allclose(loaded.encode_images(crops), tiny.encode_images(crops), atol=1e-5)


def test_missing_weights_file_raises(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_backbone(f"affstream-tiny:{tmp_path / 'absent.safetensors'}")


def test_mismatched_weights_file_raises(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"bogus": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match="cannot load as open_clip weights"):
        load_backbone(f"affstream-tiny:{path}")


def test_offline_tag_fails_fast_with_instructions(isolated_hf_cache, monkeypatch):
    monkeypatch.setenv("AFFSTREAM_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        load_backbone("ViT-B-32:openai")
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert "AFFSTREAM_OFFLINE" in message
    assert "open_clip.create_model('ViT-B-32', pretrained='openai')" in message
    assert "--backbone ViT-B-32-quickgelu:/path/to/open_clip_weights" in message


def test_unreachable_hub_fails_fast(isolated_hf_cache, monkeypatch):
    monkeypatch.delenv("AFFSTREAM_OFFLINE", raising=False)
    monkeypatch.setattr(bb, "hub_unreachable_reason", lambda: "simulated: no route")
    start = time.monotonic()
    with pytest.raises(WeightsError, match="simulated: no route") as info:
        load_backbone("ViT-B-32:openai")
    assert time.monotonic() - start < 5.0
    assert "AFFSTREAM_OFFLINE=1" in str(info.value)


def test_probe_reports_a_closed_port(monkeypatch):
    from huggingface_hub import constants

    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:1")
    monkeypatch.setattr(weights, "_PROBE_TIMEOUT_S", 1.0)
    start = time.monotonic()
    reason = weights.hub_unreachable_reason()
    assert time.monotonic() - start < 3.0
    assert reason is not None and "127.0.0.1:1" in reason


def test_cached_tag_loads_offline(tiny, isolated_hf_cache, monkeypatch):
    """A tag whose weights are already in the Hugging Face cache loads without network."""
    from open_clip import pretrained
    from safetensors.torch import save_file

    monkeypatch.setitem(
        pretrained._PRETRAINED, "affstream-tiny", {"unittest": pretrained._pcfg(hf_hub="affstream/tiny-unittest/")}
    )
    weights = isolated_hf_cache.parent / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    repo = isolated_hf_cache / "models--affstream--tiny-unittest"
    commit = "0" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    weights.replace(repo / "blobs" / digest)
    (snapshot / "open_clip_model.safetensors").symlink_to(repo / "blobs" / digest)
    monkeypatch.setenv("AFFSTREAM_OFFLINE", "1")

    loaded = load_backbone("affstream-tiny:unittest")
    assert loaded.spec.kind == "pretrained" and loaded.meaningful
    assert loaded.sha256 == digest
    crops = torch.randn(2, 3, 64, 64)
    assert torch.allclose(loaded.encode_images(crops), tiny.encode_images(crops), atol=1e-5)


@pytest.mark.slow
def test_vit_b32_random_builds():
    big = load_backbone("ViT-B-32:random", batch_size=2)
    assert (big.feature_dim, big.image_size) == (512, 224)
    feats = big.encode_images(torch.zeros(1, 3, 224, 224))
    assert feats.shape == (1, 512)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(1), atol=1e-5)
