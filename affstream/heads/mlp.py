"""Per-frame MLP head (seed method 1: frozen CLIP features + MLP, trained with CVaR + SAM).

Shared trunk of ``hidden_layers`` blocks ``Linear -> BatchNorm1d -> ReLU -> Dropout``
(all ``width`` wide), then one linear output layer per task:

    expr: 8 logits          au: 12 logits          va: 2 values through tanh, in [-1, 1]

Each frame is scored on its own, so the head is causal and has no window.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..labels import TASK_WIDTHS
from .base import AffectHead, HeadCard, HeadOutputs

KIND = "mlp"
DEFAULT_WIDTH = 768
DEFAULT_DROPOUT = 0.6
DEFAULT_HIDDEN_LAYERS = 3


def _hidden_block(in_dim: int, width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout))


class MLPHead(AffectHead):
    """Multi-task per-frame MLP over CLIP features.

    feature_dim: D, width of the input features (768 for ViT-L/14).
    tasks: subset of ("expr", "au", "va"); tasks share the hidden blocks.
    width: hidden units per block (seed code: 768). dropout: drop probability (seed: 0.6).
    hidden_layers: number of hidden blocks (paper: 3-layer MLP).
    backbone: the ``ARCH:TAG`` whose features the head expects (recorded in the card).
    meaningful: pass False for heads that stay random (tests, smoke runs).

    The card is built here; the trainer records tuned AU thresholds and metrics with
    ``head.card = dataclasses.replace(head.card, ...)`` before :func:`save_head`.
    """

    def __init__(
        self,
        feature_dim: int,
        tasks: Sequence[str],
        width: int = DEFAULT_WIDTH,
        dropout: float = DEFAULT_DROPOUT,
        backbone: str = "ViT-L-14:openai",
        name: str = "mlp",
        *,
        hidden_layers: int = DEFAULT_HIDDEN_LAYERS,
        meaningful: bool = True,
    ) -> None:
        super().__init__()
        tasks = tuple(tasks)
        if feature_dim <= 0 or width <= 0 or hidden_layers < 1:
            raise ConfigError(f"MLP head '{name}': feature_dim, width and hidden_layers must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"MLP head '{name}': dropout={dropout} must lie in [0, 1)")
        self.card = HeadCard(
            name=name,
            kind=KIND,
            backbone=backbone,
            feature_dim=int(feature_dim),
            tasks=tasks,
            window_length=None,
            window_stride=None,
            causal=True,
            meaningful=meaningful,
            config={"width": int(width), "dropout": float(dropout), "hidden_layers": int(hidden_layers)},
        )
        self.card.validate(f"MLP head '{name}'")
        dims = [int(feature_dim)] + [int(width)] * hidden_layers
        self.trunk = nn.Sequential(*(_hidden_block(a, b, dropout) for a, b in zip(dims[:-1], dims[1:])))
        self.outputs = nn.ModuleDict({task: nn.Linear(int(width), TASK_WIDTHS[task]) for task in tasks})

    def _hidden(self, flat: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            return self.trunk(flat)
        # Training on padded windows: keep padding out of the BatchNorm batch statistics.
        hidden = flat.new_zeros(flat.shape[0], self.card.config["width"])
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


def build_from_card(card: HeadCard, state: dict[str, torch.Tensor]) -> MLPHead:
    """Rebuild an :class:`MLPHead` from its card and state dict (called by
    ``affstream.heads.base.load_head_checkpoint``). The card is kept as stored."""
    if card.kind != KIND or card.windowed:
        raise ConfigError(f"head '{card.name}': card kind '{card.kind}' is not a per-frame '{KIND}' head")
    config = card.config
    head = MLPHead(
        card.feature_dim,
        card.tasks,
        width=int(config.get("width", DEFAULT_WIDTH)),
        dropout=float(config.get("dropout", DEFAULT_DROPOUT)),
        backbone=card.backbone,
        name=card.name,
        hidden_layers=int(config.get("hidden_layers", DEFAULT_HIDDEN_LAYERS)),
        meaningful=card.meaningful,
    )
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:])[:300]
        raise WeightsError(f"head '{card.name}': weights do not match its card ({detail})") from None
    head.card = card
    return head
