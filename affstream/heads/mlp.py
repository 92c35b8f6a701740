"""Per-frame MLP head (seed method 1: frozen CLIP features + MLP, trained with CVaR + SAM).

Shared trunk of ``hidden_layers`` blocks ``Linear -> BatchNorm1d -> ReLU -> Dropout``
(all ``width`` wide), then one linear output layer per task:

    expr: 8 logits          au: 12 logits          va: 2 values through tanh, in [-1, 1]

Each frame is scored on its own, so the head is causal and has no window.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..labels import TASK_WIDTHS
from ..validate import check_int, check_number
from .base import MAX_FEATURE_DIM, AffectHead, HeadCard, HeadOutputs, check_param_count, state_dict_mismatch

KIND = "mlp"
DEFAULT_WIDTH = 768
DEFAULT_DROPOUT = 0.6
DEFAULT_HIDDEN_LAYERS = 3
MAX_WIDTH = 16384
MAX_HIDDEN_LAYERS = 64


def _checked(values: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """The three dims fields of ``values``, type- and range-checked; errors start with
    ``where`` (the card's source) and name the field after ``prefix`` ("config.")."""
    return {
        "width": check_int(values["width"], prefix + "width", 1, MAX_WIDTH, where=where, brackets=True),
        "dropout": check_number(values["dropout"], prefix + "dropout", 0.0, 1.0, where=where, hi_open=True),
        "hidden_layers": check_int(values["hidden_layers"], prefix + "hidden_layers", 1, MAX_HIDDEN_LAYERS,
                                   where=where, brackets=True),
    }


@dataclass(frozen=True)
class MLPDims:
    """Architecture of an :class:`MLPHead`, stored in the card's ``config`` under the same keys.

    width:         hidden units per block, 1..16384 (seed code: 768).
    dropout:       drop probability, in [0, 1) (seed code: 0.6).
    hidden_layers: number of hidden blocks, 1..64 (paper: a 3-layer MLP).

    Construction checks every field (ConfigError), so a dims object is always buildable.
    """

    width: int = DEFAULT_WIDTH
    dropout: float = DEFAULT_DROPOUT
    hidden_layers: int = DEFAULT_HIDDEN_LAYERS

    def __post_init__(self) -> None:
        for key, value in _checked(dataclasses.asdict(self), "MLPDims").items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> MLPDims:
        """Dims from a card's ``config`` (untrusted). Missing keys take the defaults (older
        cards); keys that are not dims (training settings) are ignored. Raises a one-line
        ConfigError naming ``source`` and the field, e.g. ``config.hidden_layers``."""
        if not isinstance(config, dict):
            raise ConfigError(f"{source}: config must be a JSON object")
        values = {f.name: config.get(f.name, f.default) for f in dataclasses.fields(cls)}
        return cls(**_checked(values, source, "config."))

    def to_config(self) -> dict[str, Any]:
        """The card ``config`` entries for these dims."""
        return {"width": self.width, "dropout": self.dropout, "hidden_layers": self.hidden_layers}

    def param_count(self, feature_dim: int, tasks: Sequence[str]) -> int:
        """Parameters and buffers of the head these dims build (computed, nothing allocated)."""
        w = self.width
        trunk = feature_dim * w + (self.hidden_layers - 1) * w * w + self.hidden_layers * 5 * w
        return trunk + sum((w + 1) * TASK_WIDTHS.get(task, 0) for task in tasks)


def _hidden_block(in_dim: int, width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout))


class MLPHead(AffectHead):
    """Multi-task per-frame MLP over CLIP features.

    feature_dim: D, width of the input features (768 for ViT-L/14), 1..16384.
    tasks: distinct names among ("expr", "au", "va"); tasks share the hidden blocks.
    width, dropout, hidden_layers: the architecture (see :class:`MLPDims`; None = default);
    or pass ``dims`` instead of all three.
    backbone: the ``ARCH:TAG`` whose features the head expects (recorded in the card).
    meaningful: pass False for heads that stay random (tests, smoke runs).

    Everything is checked (ConfigError), including the estimated size, before a module
    is allocated. The card is built here; the trainer records tuned AU thresholds and
    metrics with ``head.card = dataclasses.replace(head.card, ...)`` before :func:`save_head`.
    """

    def __init__(
        self,
        feature_dim: int,
        tasks: Sequence[str],
        width: int | None = None,
        dropout: float | None = None,
        backbone: str = "ViT-L-14:openai",
        name: str = "mlp",
        *,
        hidden_layers: int | None = None,
        meaningful: bool = True,
        dims: MLPDims | None = None,
    ) -> None:
        super().__init__()
        source = f"MLP head '{name}'"
        given = {"width": width, "dropout": dropout, "hidden_layers": hidden_layers}
        if dims is None:
            dims = MLPDims.from_config({k: v for k, v in given.items() if v is not None}, source)
        elif not isinstance(dims, MLPDims) or any(v is not None for v in given.values()):
            raise TypeError("MLPHead: pass dims (an MLPDims) or width/dropout/hidden_layers, not both")
        self.dims = dims
        self.card = HeadCard(
            name=name,
            kind=KIND,
            backbone=backbone,
            feature_dim=check_int(feature_dim, "feature_dim", 1, MAX_FEATURE_DIM, where=source, brackets=True),
            tasks=tuple(tasks),
            window_length=None,
            window_stride=None,
            causal=True,
            meaningful=meaningful,
            config=dims.to_config(),
        )
        self.card.validate(source)
        check_param_count(dims.param_count(self.card.feature_dim, self.card.tasks), source, "width or hidden_layers")
        sizes = [self.card.feature_dim] + [dims.width] * dims.hidden_layers
        self.trunk = nn.Sequential(*(_hidden_block(a, b, dims.dropout) for a, b in itertools.pairwise(sizes)))
        self.outputs = nn.ModuleDict({task: nn.Linear(dims.width, TASK_WIDTHS[task]) for task in self.card.tasks})

    def _hidden(self, flat: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            return self.trunk(flat)
        # Training on padded windows: keep padding out of the BatchNorm batch statistics.
        hidden = flat.new_zeros(flat.shape[0], self.dims.width)
        hidden[rows] = self.trunk(flat[rows])
        return hidden

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOutputs:
        """features: (N, D) or (B, T, D) float. mask: optional (B, T) / (N,) bool, True on
        real frames; used only in training mode (so padding does not enter BatchNorm
        statistics); in eval mode every row is scored independently anyway.

        Returns HeadOutputs with leading shape (N,) or (B, T): expr_logits (..., 8),
        au_logits (..., 12), va (..., 2) in [-1, 1]; tasks the head lacks are None.
        """
        if features.ndim not in (2, 3) or features.shape[-1] != self.card.feature_dim:
            raise ConfigError(
                f"MLP head '{self.card.name}' expects ({self.card.feature_dim},)-d features from "
                f"{self.card.backbone}, got shape {tuple(features.shape)}; use the matching backbone"
            )
        lead = features.shape[:-1]
        weight = self.trunk[0][0].weight
        flat = features.reshape(-1, features.shape[-1]).to(dtype=weight.dtype)
        rows = mask.reshape(-1).to(torch.bool) if (mask is not None and self.training) else None
        hidden = self._hidden(flat, rows)
        out = {task: layer(hidden).reshape(*lead, -1) for task, layer in self.outputs.items()}
        return HeadOutputs(
            va=torch.tanh(out["va"]) if "va" in out else None,
            expr_logits=out.get("expr"),
            au_logits=out.get("au"),
        )


def check_card(card: HeadCard, source: str) -> MLPDims:
    """Check that ``card`` describes a buildable per-frame MLP head, before any weights are
    read or modules built; returns its dims. Raises a one-line ConfigError naming ``source``."""
    card.validate(source)
    if card.kind != KIND:
        raise ConfigError(f"{source}: kind: card kind '{card.kind}' is not a per-frame '{KIND}' head")
    if card.windowed:
        raise ConfigError(f"{source}: window_length: an '{KIND}' head is per-frame; set window_length "
                          "and window_stride to null")
    dims = MLPDims.from_config(card.config, source)
    check_param_count(dims.param_count(card.feature_dim, card.tasks), source, "config.width or config.hidden_layers")
    return dims


def build_from_card(card: HeadCard, state: dict[str, torch.Tensor], *, source: str | None = None) -> MLPHead:
    """Rebuild an :class:`MLPHead` from its card and state dict (called by
    ``affstream.heads.base.load_head_checkpoint``). The card is kept as stored, extra
    ``config`` keys included. ``source`` names the card in errors."""
    source = source or f"head '{card.name}'"
    dims = check_card(card, source)
    head = MLPHead(
        card.feature_dim,
        card.tasks,
        backbone=card.backbone,
        name=card.name,
        meaningful=card.meaningful,
        dims=dims,
    )
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{source}: weights do not match its card ({state_dict_mismatch(exc)})") from None
    head.card = card
    return head
