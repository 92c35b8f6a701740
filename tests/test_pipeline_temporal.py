"""annotate with a windowed (temporal) head: streaming windows inside the pipeline give
exactly the offline plan/stitch result, one prediction per face per frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from two_faces import make_two_face_clip

import affstream
from affstream.api import iter_face_features, resolve_config
from affstream.heads.base import save_head
from affstream.heads.temporal import TemporalHead
from affstream.pipeline import load_stages
from affstream.pipeline.predict import pack_outputs, unpack_scores
from affstream.temporal.windows import gather_windows, plan_windows, stitch_windows

LENGTH, STRIDE = 16, 10


@pytest.fixture(scope="module")
def temporal_setup(tmp_path_factory):
    base = load_stages(resolve_config("smoke", device="cpu"))
    torch.manual_seed(0)
    head = TemporalHead(base.backbone.feature_dim, ("va", "expr", "au"), d_model=32, n_layers=1, n_heads=2,
                        window_length=LENGTH, window_stride=STRIDE, backbone=str(base.backbone.spec),
                        meaningful=False).eval()
    path = save_head(head, tmp_path_factory.mktemp("heads") / "temporal")
    stages = load_stages(resolve_config("smoke", device="cpu", head=str(path)), backbone=base.backbone)
    return base, stages, head


def offline_prediction(head, feats: np.ndarray):
    """Plan, run and stitch one whole track offline."""
    plan = plan_windows(len(feats), LENGTH, STRIDE)
    windows, mask = gather_windows(feats, plan, LENGTH)
    with torch.inference_mode():
        out = head(torch.from_numpy(windows).float(), torch.from_numpy(mask))
    scores = pack_outputs(out, head.card.tasks).numpy()
    return unpack_scores(stitch_windows(scores, plan, len(feats)).astype(np.float32), head.card.tasks)


def test_temporal_head_rows_equal_offline_stitching(single_face_mp4, temporal_setup):
    base, stages, head = temporal_setup
    rows = list(affstream.annotate(single_face_mp4, stages=stages))
    assert [r.frame_index for r in rows] == list(range(1, 73))
    assert all(r.success and r.expr_probs is not None and r.au_probs is not None for r in rows)
    feats = np.concatenate([f for _, f in iter_face_features(single_face_mp4, stages=base)])
    expected = offline_prediction(head, feats)
    np.testing.assert_allclose([r.valence for r in rows], expected.valence, atol=1e-5)
    np.testing.assert_allclose(np.stack([r.expr_probs for r in rows]), expected.expr_probs, atol=1e-5)
    np.testing.assert_allclose(np.stack([r.au_probs for r in rows]), expected.au_probs, atol=1e-5)


def test_temporal_head_two_tracks_every_face_gets_one_row(tmp_path, temporal_setup):
    _, stages, _ = temporal_setup
    clip = make_two_face_clip(tmp_path / "two.mp4", frames=37)
    run = affstream.annotate(clip, stages=stages)
    rows = list(run)
    assert len(rows) == 74
    assert sorted({(r.frame_index, r.track_id) for r in rows}) == [(k, t) for k in range(1, 38) for t in (0, 1)]
    assert run.report().head["window_length"] == LENGTH


def test_head_from_another_backbone_is_refused(single_face_jpg, tmp_path, temporal_setup):
    from affstream.errors import ConfigError

    base, _, _ = temporal_setup
    head = TemporalHead(512, ("expr",), d_model=32, n_layers=1, n_heads=2, backbone="ViT-B-32:openai")
    path = save_head(head, tmp_path / "other")
    with pytest.raises(ConfigError, match="ViT-B-32:openai"):
        load_stages(resolve_config("smoke", device="cpu", head=str(path)), backbone=base.backbone)


def test_mlp_head_in_annotate_uses_its_card(single_face_mp4, tmp_path, temporal_setup):
    import dataclasses

    from affstream.heads.mlp import MLPHead

    base, _, _ = temporal_setup
    torch.manual_seed(1)
    head = MLPHead(base.backbone.feature_dim, ("au",), width=16, dropout=0.0, backbone=str(base.backbone.spec),
                   meaningful=False).eval()
    head.card = dataclasses.replace(head.card, au_thresholds=(0.0,) * 6 + (1.0,) * 6)
    path = save_head(head, tmp_path / "mlp")
    stages = load_stages(resolve_config("smoke", device="cpu", head=str(path)), backbone=base.backbone)
    rows = list(affstream.annotate(single_face_mp4, stages=stages))
    assert len(rows) == 72
    assert all(r.expr_probs is None and r.valence is None for r in rows)  # AU-only head
    present = np.stack([r.au_present for r in rows])
    assert present[:, :6].all() and not present[:, 6:].any()  # thresholds read from the card
    feats = np.concatenate([f for _, f in iter_face_features(single_face_mp4, stages=base)])
    with torch.inference_mode():
        expected = torch.sigmoid(head(torch.from_numpy(feats)).au_logits).numpy()
    np.testing.assert_allclose(np.stack([r.au_probs for r in rows]), expected, atol=1e-5)
