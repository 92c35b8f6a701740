"""What every head shares: its card, its outputs, and loading from a checkpoint.

A head maps CLIP features to affect outputs. Per-frame heads take ``(N, D)``;
windowed (temporal) heads take ``(B, T, D)`` plus a ``(B, T)`` validity mask. Both
return :class:`HeadOutputs` of raw scores, which :func:`to_prediction` turns into
probabilities on the host.

A checkpoint is two files side by side: ``NAME.safetensors`` (the state dict) and
``NAME.json`` (the :class:`HeadCard`). Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..files import atomic_path, atomic_write_text, sha256_file
from ..labels import AU_LABELS, EXPR_LABELS
from ..records import Prediction

CARD_VERSION = 1

# kind -> "module:function" building a head from (card, state_dict). Modules are
# imported only when a checkpoint of that kind is loaded.
HEAD_BUILDERS: dict[str, str] = {
    "mlp": "affstream.heads.mlp:build_from_card",
    "temporal": "affstream.heads.temporal:build_from_card",
    "text": "affstream.heads.text:build_from_card",
}


@dataclass(frozen=True)
class HeadCard:
    """Identity and contract of a head, stored as JSON beside its weights.

    backbone:      the ``ARCH:TAG`` spec whose features the head expects.
    feature_dim:   D, width of those features.
    tasks:         subset of ("expr", "au", "va") the head predicts.
    au_thresholds: per-AU probability threshold for the ``AUxx_c`` presence columns.
    window_length / window_stride: frames per window and hop for temporal heads;
                   None for per-frame heads.
    causal:        True if a frame's output depends only on itself and earlier frames.
    meaningful:    False for heads built on random weights (smoke runs, tests).
    config:        the head's hyper-parameters (architecture, training), free-form.
    metrics:       validation metrics recorded at training time, free-form.
    """

    name: str
    kind: str
    backbone: str
    feature_dim: int
    tasks: tuple[str, ...]
    expr_labels: tuple[str, ...] = EXPR_LABELS
    au_labels: tuple[str, ...] = AU_LABELS
    au_thresholds: tuple[float, ...] = (0.5,) * len(AU_LABELS)
    window_length: int | None = None
    window_stride: int | None = None
    causal: bool = False
    meaningful: bool = True
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: int = CARD_VERSION

    @property
    def windowed(self) -> bool:
        return self.window_length is not None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "head card") -> "HeadCard":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"{source}: unknown card field(s) {sorted(unknown)}")
        try:
            values = dict(data)
            for key in ("tasks", "expr_labels", "au_labels", "au_thresholds"):
                if key in values:
                    values[key] = tuple(values[key])
            card = cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{source}: invalid head card ({exc})") from None
        card.validate(source)
        return card

    def validate(self, source: str = "head card") -> None:
        if not set(self.tasks) <= {"expr", "au", "va"} or not self.tasks:
            raise ConfigError(f"{source}: tasks must be a non-empty subset of expr, au, va")
        if tuple(self.expr_labels) != EXPR_LABELS or tuple(self.au_labels) != AU_LABELS:
            raise ConfigError(f"{source}: label names differ from affstream's label spaces")
        if len(self.au_thresholds) != len(AU_LABELS):
            raise ConfigError(f"{source}: au_thresholds needs {len(AU_LABELS)} values")
        if (self.window_length is None) != (self.window_stride is None):
            raise ConfigError(f"{source}: give both window_length and window_stride, or neither")
        if self.window_length is not None and not 0 < self.window_stride <= self.window_length:
            raise ConfigError(f"{source}: need 0 < window_stride <= window_length")


@dataclass(frozen=True, eq=False)
class HeadOutputs:
    """Raw head scores, on the head's device, leading shape (N,) or (B, T).

    va:          (..., 2) valence, arousal in [-1, 1].
    expr_logits: (..., 8) unnormalised class scores.
    au_logits:   (..., 12) per-AU logits (sigmoid gives the probability).
    """

    va: torch.Tensor | None = None
    expr_logits: torch.Tensor | None = None
    au_logits: torch.Tensor | None = None


class AffectHead(nn.Module):
    """Base class: subclasses set ``self.card`` and implement ``forward``.

    forward(features, mask=None) -> HeadOutputs
        features: (N, D) for per-frame heads, (B, T, D) for windowed heads, float32.
        mask:     (B, T) bool, True on real frames (windowed heads only).
    """

    card: HeadCard

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOutputs:
        raise NotImplementedError


def to_prediction(outputs: HeadOutputs) -> Prediction:
    """Flatten leading dims and move to the host as probabilities (one sync per call)."""

    def host(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().reshape(-1, t.shape[-1]).cpu().numpy()

    va = host(outputs.va.clamp(-1.0, 1.0)) if outputs.va is not None else None
    expr = host(outputs.expr_logits.float().softmax(-1)) if outputs.expr_logits is not None else None
    au = host(outputs.au_logits.float().sigmoid()) if outputs.au_logits is not None else None
    return Prediction(
        valence=None if va is None else va[:, 0].copy(),
        arousal=None if va is None else va[:, 1].copy(),
        expr_probs=expr,
        au_probs=au,
    )


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, card) paths for a checkpoint given as either file or its stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_head(head: AffectHead, path: str | Path) -> Path:
    """Write ``head`` as safetensors + JSON card, each atomically; returns the weights path.

    The weights are published first and the card last: a card that does not fit the
    weights beside it is refused at load time (``build_from_card`` checks the shapes).
    """
    from safetensors.torch import save_file

    weights, card_path = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"affstream_card_version": str(CARD_VERSION)})
    atomic_write_text(card_path, head.card.to_json() + "\n")
    return weights


def read_card(path: str | Path) -> HeadCard:
    _, card_path = checkpoint_paths(path)
    if not card_path.is_file():
        raise WeightsError(f"{card_path}: head card not found (a head is NAME.safetensors + NAME.json)")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{card_path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{card_path}: a head card must be a JSON object")
    return HeadCard.from_dict(data, str(card_path))


def load_head_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[AffectHead, str]:
    """Load a head from ``NAME.safetensors`` + ``NAME.json``; returns (head, sha256)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, _ = checkpoint_paths(path)
    card = read_card(path)
    if not weights.is_file():
        raise WeightsError(f"{weights}: head weights not found")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{weights}: not a readable safetensors file ({exc})") from None
    builder = HEAD_BUILDERS.get(card.kind)
    if builder is None:
        raise ConfigError(f"{weights}: unknown head kind '{card.kind}' (known: {sorted(HEAD_BUILDERS)})")
    module_name, func_name = builder.split(":")
    build = getattr(importlib.import_module(module_name), func_name)
    head = build(card, state)
    return head.to(device).eval(), sha256_file(weights)
