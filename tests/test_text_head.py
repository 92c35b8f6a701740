"""Zero-shot text head on the tiny random backbone: prompts, outputs, cache, checkpoints."""

from __future__ import annotations

import copy
import hashlib
import shutil
import tomllib

import pytest
import torch

from affstream.embed.backbone import Backbone, load_backbone
from affstream.errors import ConfigError, WeightsError
from affstream.heads import text as text_module
from affstream.heads.base import load_head_checkpoint, save_head, to_prediction
from affstream.heads.circumplex import circumplex_coords, va_from_probs
from affstream.heads.text import PROMPT_DIR, TextHead, build_from_card, load_prompts, zero_shot_head
from affstream.labels import AU_LABELS, EXPR_LABELS


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("affstream-tiny:random", "cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("AFFSTREAM_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory) -> TextHead:
    """One head for the read-only tests (building costs a text-encoder pass)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AFFSTREAM_CACHE", str(tmp_path_factory.mktemp("module-cache")))
        return zero_shot_head(tiny)


@pytest.fixture
def head(built) -> TextHead:
    """A private copy, free to modify."""
    return copy.deepcopy(built)


def features(n: int, dim: int = 64, seed: int = 0) -> torch.Tensor:
    feats = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(feats, dim=-1)


def test_prompt_files_cover_every_label():
    expr = tomllib.loads((PROMPT_DIR / "expressions.toml").read_text(encoding="utf-8"))
    aus = tomllib.loads((PROMPT_DIR / "action_units.toml").read_text(encoding="utf-8"))
    assert 5 <= len(expr["templates"]) <= 8
    assert list(expr["classes"]) == list(EXPR_LABELS)
    assert list(aus["units"]) == list(AU_LABELS)
    assert aus["units"]["AU12"]["facs_name"] == "Lip Corner Puller"
    prompts = load_prompts()
    assert len(prompts.expr) == 8 and len(prompts.au_pos) == 12 and len(prompts.au_neg) == 12
    happiness = prompts.expr[EXPR_LABELS.index("Happiness")]
    assert len(happiness) == len(expr["templates"]) * len(expr["classes"]["Happiness"]["descriptions"])
    assert "a photo of a face with a smile with raised cheeks." in happiness
    au6 = AU_LABELS.index("AU6")
    assert len(prompts.au_pos[au6]) == len(aus["templates"]) * (1 + len(aus["units"]["AU6"]["positive"]))
    assert all("{}" not in p for group in prompts.expr + prompts.au_pos + prompts.au_neg for p in group)


def test_outputs_per_frame_and_windowed(head):
    out = head(features(6))
    assert out.expr_logits.shape == (6, 8) and out.au_logits.shape == (6, 12) and out.va.shape == (6, 2)
    pred = to_prediction(out)
    assert pred.expr_probs.sum(axis=1) == pytest.approx([1.0] * 6, abs=1e-5)
    assert ((pred.au_probs >= 0) & (pred.au_probs <= 1)).all()
    assert (abs(pred.valence) <= 1).all() and (abs(pred.arousal) <= 1).all()
    expected_va = out.expr_logits.softmax(-1) @ circumplex_coords()
    assert torch.allclose(out.va, expected_va, atol=1e-6)

    windowed = head(features(6).view(2, 3, 64), mask=torch.ones(2, 3, dtype=torch.bool))
    assert windowed.expr_logits.shape == (2, 3, 8) and windowed.va.shape == (2, 3, 2)
    assert torch.allclose(windowed.expr_logits.reshape(6, 8), out.expr_logits, atol=1e-5)


def test_logits_are_scaled_cosines(head):
    feats = features(4)
    out = head(feats * 3.0)  # scale-invariant: features are re-normalised
    scale = head.logit_scale.exp()
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's init temperature
    assert torch.allclose(out.expr_logits, scale * feats @ head.expr_text.T, atol=1e-4)
    assert torch.allclose(out.au_logits, scale * (feats @ head.au_pos.T - feats @ head.au_neg.T), atol=1e-4)
    # A face embedding equal to a class text embedding is classified as that class, and
    # one equal to an AU's "present" embedding scores that AU as present.
    assert head(head.expr_text).expr_logits.argmax(-1).tolist() == list(range(8))
    assert (torch.diagonal(head(head.au_pos).au_logits) > 0).all()
    assert (torch.diagonal(head(head.au_neg).au_logits) < 0).all()


def test_class_embedding_is_the_normalised_prompt_mean(tiny, head):
    prompts = load_prompts()
    k = EXPR_LABELS.index("Sadness")
    manual = torch.nn.functional.normalize(tiny.encode_texts(prompts.expr[k]).mean(0), dim=0)
    assert torch.allclose(head.expr_text[k], manual, atol=1e-5)
    assert torch.allclose(head.expr_text.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert not torch.allclose(head.au_pos, head.au_neg)


def test_card_records_identity(tiny, head):
    card = head.card
    assert (card.name, card.kind, card.backbone, card.feature_dim) == ("zeroshot", "text", "affstream-tiny:random", 64)
    assert card.tasks == ("expr", "au", "va") and not card.meaningful and not card.windowed
    shas = card.config["prompt_sha256"]
    assert shas["expressions.toml"] == hashlib.sha256((PROMPT_DIR / "expressions.toml").read_bytes()).hexdigest()
    assert shas["action_units.toml"] == hashlib.sha256((PROMPT_DIR / "action_units.toml").read_bytes()).hexdigest()
    assert card.config["va_mapping"]["coords"]["Neutral"] == [0.0, 0.0]
    card.validate()


def test_cache_is_written_then_reused(tiny, cache, monkeypatch):
    first = zero_shot_head(tiny)
    files = list((cache / "text").glob("affstream-tiny-random-*.safetensors"))
    assert len(files) == 1

    def no_text_encoder(texts):
        raise AssertionError("the text encoder must not run when the cache is warm")

    monkeypatch.setattr(tiny, "encode_texts", no_text_encoder)
    second = zero_shot_head(tiny)
    for name in ("expr_text", "au_pos", "au_neg"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert second.logit_scale.item() == pytest.approx(first.logit_scale.item())


def test_changed_prompts_change_the_cache_key(tiny, built, cache, tmp_path):
    custom = tmp_path / "prompts"
    shutil.copytree(PROMPT_DIR, custom)
    text = (custom / "expressions.toml").read_text(encoding="utf-8")
    (custom / "expressions.toml").write_text(text.replace("a smile with raised cheeks", "a beaming smile"), encoding="utf-8")
    changed = zero_shot_head(tiny, prompt_dir=custom)
    files = list((cache / "text").glob("*.safetensors"))
    assert len(files) == 1
    default_name = text_module._cache_path(tiny, text_module._cache_key(tiny, load_prompts())).name
    assert files[0].name != default_name
    assert changed.card.config["prompt_sha256"] != built.card.config["prompt_sha256"]
    k = EXPR_LABELS.index("Happiness")
    assert not torch.allclose(changed.expr_text[k], built.expr_text[k])
    assert torch.allclose(changed.expr_text[0], built.expr_text[0])


def test_broken_prompt_files_raise_config_error(tiny, cache, tmp_path):
    custom = tmp_path / "prompts"
    shutil.copytree(PROMPT_DIR, custom)
    text = (custom / "action_units.toml").read_text(encoding="utf-8")
    (custom / "action_units.toml").write_text(text.replace("[units.AU26]", "[units.AU27]"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"action_units\.toml.*AU26"):
        zero_shot_head(tiny, prompt_dir=custom)
    (custom / "expressions.toml").write_text("templates = ['no slot']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="exactly one"):
        load_prompts(custom)


def test_checkpoint_round_trip(head, tmp_path):
    with torch.no_grad():
        head.logit_scale.fill_(3.0)  # as if fine-tuned
    save_head(head, tmp_path / "text_head")
    loaded, sha = load_head_checkpoint(tmp_path / "text_head.safetensors")
    assert isinstance(loaded, TextHead) and len(sha) == 64
    assert loaded.card == head.card
    feats = features(5, seed=4)
    a, b = head(feats), loaded(feats)
    for name in ("expr_logits", "au_logits", "va"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_build_from_card_rejects_incomplete_state(head):
    state = {k: v for k, v in head.state_dict().items() if k != "au_neg"}
    with pytest.raises(WeightsError, match="au_neg"):
        build_from_card(head.card, state)
    bad = dict(head.state_dict())
    bad["expr_text"] = torch.zeros(8, 32)
    with pytest.raises(WeightsError, match="does not match"):
        build_from_card(head.card, bad)


def test_circumplex_placement():
    coords = circumplex_coords()
    label = {name: coords[i] for i, name in enumerate(EXPR_LABELS)}
    assert coords.shape == (8, 2) and coords.abs().max() <= 1.0
    assert label["Neutral"].tolist() == [0.0, 0.0] and label["Other"].tolist() == [0.0, 0.0]
    assert label["Happiness"][0] > 0.5 and label["Sadness"][1] < 0
    assert all(label[name][0] < 0 for name in ("Anger", "Disgust", "Fear", "Sadness"))
    assert all(label[name][1] > 0.5 for name in ("Anger", "Fear", "Surprise"))
    one_hot = torch.eye(8)
    assert torch.allclose(va_from_probs(one_hot), coords)
    assert torch.allclose(va_from_probs(torch.full((1, 8), 1 / 8)), coords.mean(0, keepdim=True))
