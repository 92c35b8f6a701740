"""Seeded golden outputs of every head kind, to 5e-6 + 1e-5 relative (float32 across CPUs), on the
tiny random backbone.

Two levels, both pinned by files in ``tests/golden/heads/``:

* head level: each head's raw outputs on fixed, seeded features (per-frame (N, D) for the
  MLP and text heads, (B, T, D) windows with padding for the temporal heads);
* pipeline level: the rows ``annotate`` gives on the real clip ``single_face.mp4`` (and on a
  synthetic two-face clip for the temporal head, whose windows then run per track).

The head checkpoints are committed (``*.safetensors`` + card), so the goldens do not depend
on how a head is constructed, and an old card keeps loading. Regenerate after an intended
change with ``AFFSTREAM_REGEN_GOLDEN=1 python -m pytest tests/test_golden_heads.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from two_faces import make_two_face_clip

import affstream
from affstream.api import resolve_config
from affstream.heads.base import load_head_checkpoint, save_head
from affstream.pipeline import load_stages

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOLDEN = Path(__file__).parent / "golden" / "heads"
REGEN = os.environ.get("AFFSTREAM_REGEN_GOLDEN") == "1"
# float32 results differ by a few ulps between CPU instruction sets (torch's AVX2 and AVX-512
# kernels sum in another order). Measured on an AMD EPYC (AVX2) against goldens written on
# another machine: at most 1.3e-6 absolute on logits (an AU logit is a difference of two
# similarities of magnitude ~1, so its error is absolute) and 1.9e-7 relative on box
# pixels (~300, 3e-5 px). A change of behaviour moves values by orders of magnitude more.
ATOL = 5e-6
RTOL = 1e-5
HEADS = ("mlp", "temporal", "temporal_causal")  # committed checkpoints; "zeroshot" is built


def _make_heads(dim: int, spec: str) -> None:
    """Write the seeded head checkpoints (only when regenerating)."""
    from affstream.heads.mlp import MLPHead
    from affstream.heads.temporal import TemporalHead

    torch.manual_seed(11)
    mlp = MLPHead(dim, ("va", "expr", "au"), width=16, dropout=0.1, backbone=spec, name="golden-mlp",
                  meaningful=False).eval()
    save_head(mlp, GOLDEN / "mlp")
    for causal in (False, True):
        torch.manual_seed(12 + causal)
        head = TemporalHead(dim, ("va", "expr", "au"), d_model=32, n_layers=1, n_heads=2, dropout=0.1,
                            window_length=24, window_stride=16, causal=causal, backbone=spec,
                            name="golden-temporal" + ("-causal" if causal else ""), meaningful=False).eval()
        save_head(head, GOLDEN / ("temporal_causal" if causal else "temporal"))


@pytest.fixture(scope="module")
def base():
    stages = load_stages(resolve_config("smoke", device="cpu"))
    if REGEN:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        _make_heads(stages.backbone.feature_dim, str(stages.backbone.spec))
    return stages


def _stages_for(base, name: str):
    head = "zeroshot" if name == "zeroshot" else str(GOLDEN / name)
    return load_stages(resolve_config("smoke", device="cpu", head=head), backbone=base.backbone)


def _features(dim: int, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(*shape, dim, generator=gen)
    return feats / feats.norm(dim=-1, keepdim=True)


def _outputs_to_lists(out) -> dict:
    return {name: (None if value is None else value.double().tolist())
            for name, value in (("va", out.va), ("expr_logits", out.expr_logits), ("au_logits", out.au_logits))}


def _rows_to_lists(rows) -> list[dict]:
    def vec(value):
        return None if value is None else [float(v) for v in value]

    return [
        {
            "frame": int(r.frame_index), "time_s": float(r.time_s), "face_id": int(r.track_id),
            "success": bool(r.success), "confidence": float(r.confidence), "box_xyxy": vec(r.box_xyxy),
            "valence": None if r.valence is None else float(r.valence),
            "arousal": None if r.arousal is None else float(r.arousal),
            "expression": r.expression, "expr_probs": vec(r.expr_probs), "au_probs": vec(r.au_probs),
            "au_present": None if r.au_present is None else [bool(v) for v in r.au_present],
        }
        for r in rows
    ]


def _check(name: str, actual) -> None:
    path = GOLDEN / f"{name}.json"
    if REGEN:
        path.write_text(json.dumps(actual, indent=1) + "\n", encoding="utf-8")
    expected = json.loads(path.read_text(encoding="utf-8"))
    _assert_close(actual, expected, name)


def _assert_close(actual, expected, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: length"
        if expected and all(isinstance(v, float) for v in expected):
            np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=RTOL, err_msg=where)
        else:
            for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
                _assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(actual, (int, float)) and abs(actual - expected) <= ATOL + RTOL * abs(expected), \
            f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("name", ("zeroshot", *HEADS))
def test_head_outputs_match_golden(base, name):
    head = _stages_for(base, name).head
    dim = base.backbone.feature_dim
    with torch.inference_mode():
        if head.card.windowed:
            mask = torch.ones(2, 24, dtype=torch.bool)
            mask[1, 17:] = False  # a short, padded window
            out = head(_features(dim, (2, 24)), mask)
        else:
            out = head(_features(dim, (40,)))
    _check(f"outputs_{name}", _outputs_to_lists(out))


@pytest.mark.parametrize("name", ("zeroshot", *HEADS))
def test_annotate_rows_match_golden(base, single_face_mp4, name):
    rows = list(affstream.annotate(single_face_mp4, stages=_stages_for(base, name)))
    _check(f"rows_{name}", _rows_to_lists(rows))


def test_temporal_two_tracks_match_golden(base, tmp_path):
    clip = make_two_face_clip(tmp_path / "two.mp4", frames=45)
    rows = list(affstream.annotate(clip, stages=_stages_for(base, "temporal")))
    assert {r.track_id for r in rows} == {0, 1}
    _check("rows_temporal_two_faces", _rows_to_lists(rows))


def test_committed_checkpoints_load(base):
    for name in HEADS:
        head, sha = load_head_checkpoint(GOLDEN / name)
        assert not head.card.meaningful and len(sha) == 64
