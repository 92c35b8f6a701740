"""Temporal head (seed method 2): per-frame CLIP features -> TCN -> Transformer -> MLP.

Runs on windows of one track (see :mod:`affstream.temporal.windows`):

    features (B, T, D) --Linear--> (B, T, d_model)            input projection
      --> residual blocks of dilated 1-D convolutions          TCN, 'same' length
      --> + sinusoidal positional encoding                     position in the window
      --> nn.TransformerEncoder (pre-norm, batch_first)        self-attention in the window
      --> per-task MLP                                         VA (2, tanh), EXPR (8), AU (12)

Padding never reaches a real frame: padded positions are zeroed before every
convolution, and attention ignores padded keys. Causal heads (``causal=True``) pad
their convolutions on the left only and mask attention to earlier positions, so
the output at ``t`` depends on frames ``<= t`` only.

The positional encoding is the fixed sinusoidal one (no parameters, any T): the
window length is a card setting, and a window's frames keep their relative
positions whatever T is.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, WeightsError
from ..temporal.windows import DEFAULT_WINDOW_LENGTH, DEFAULT_WINDOW_STRIDE
from ..labels import TASK_WIDTHS
from .base import AffectHead, HeadCard, HeadOutputs

_ARCH_KEYS = ("d_model", "tcn_dilations", "kernel_size", "n_layers", "n_heads", "dropout")


class TCNBlock(nn.Module):
    """Residual block: LayerNorm -> dilated conv -> GELU -> dropout -> dilated conv
    -> dropout, added to the input. (B, T, C) -> (B, T, C), same length."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float, causal: bool) -> None:
        super().__init__()
        span = dilation * (kernel_size - 1)
        self.pad = (span, 0) if causal else (span // 2, span - span // 2)
        self.norm = nn.LayerNorm(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.dropout = nn.Dropout(dropout)

    def _conv(self, conv: nn.Conv1d, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # Zero padded frames first so they add nothing to their real neighbours.
        x = (x * keep).transpose(1, 2)
        return conv(F.pad(x, self.pad)).transpose(1, 2)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C); keep: (B, T, 1) float, 1 on real frames, 0 on padding."""
        h = self.dropout(F.gelu(self._conv(self.conv1, self.norm(x), keep)))
        h = self.dropout(self._conv(self.conv2, h, keep))
        return (x + h) * keep


def sinusoidal_encoding(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(length, dim) fixed positional encoding: sin/cos pairs at geometric frequencies."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(length, dim, device=device, dtype=torch.float32)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq)
    return enc.to(dtype)


class TemporalHead(AffectHead):
    """TCN + Transformer head over windows of per-frame features.

    forward(features (B, T, D) float, mask (B, T) bool True=real or None=all real)
    -> HeadOutputs with (B, T, 2) va in [-1, 1], (B, T, 8) expr logits and
    (B, T, 12) AU logits for the tasks in ``card.tasks`` (others None). Outputs at
    padded positions are meaningless.
    """

    def __init__(
        self,
        feature_dim: int,
        tasks: tuple[str, ...] | list[str],
        *,
        d_model: int = 256,
        tcn_dilations: tuple[int, ...] = (1, 2, 4, 8),
        kernel_size: int = 3,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.3,
        window_length: int = DEFAULT_WINDOW_LENGTH,
        window_stride: int = DEFAULT_WINDOW_STRIDE,
        causal: bool = False,
        backbone: str = "ViT-L-14:openai",
        name: str = "temporal",
        meaningful: bool = True,
    ) -> None:
        super().__init__()
        tasks = tuple(tasks)
        _check_arch(feature_dim, tasks, d_model, tuple(tcn_dilations), kernel_size, n_layers, n_heads, dropout)
        self.card = HeadCard(
            name=name,
            kind="temporal",
            backbone=backbone,
            feature_dim=int(feature_dim),
            tasks=tasks,
            window_length=int(window_length),
            window_stride=int(window_stride),
            causal=bool(causal),
            meaningful=meaningful,
            config={
                "d_model": int(d_model),
                "tcn_dilations": [int(d) for d in tcn_dilations],
                "kernel_size": int(kernel_size),
                "n_layers": int(n_layers),
                "n_heads": int(n_heads),
                "dropout": float(dropout),
                "positional_encoding": "sinusoidal",
            },
        )
        self.card.validate(f"temporal head '{name}'")
        self.causal = bool(causal)
        self.n_heads = int(n_heads)
        self.proj = nn.Linear(feature_dim, d_model)
        self.tcn = nn.ModuleList(
            TCNBlock(d_model, kernel_size, int(d), dropout, self.causal) for d in tcn_dilations
        )
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=2 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.outputs = nn.ModuleDict(
            {
                task: nn.Sequential(
                    nn.Linear(d_model, d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, TASK_WIDTHS[task])
                )
                for task in tasks
            }
        )

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOutputs:
        if features.dim() != 3:
            raise ValueError(
                f"TemporalHead takes windows (B, T, D), got shape {tuple(features.shape)}; "
                "cut per-frame features into windows with affstream.temporal.windows"
            )
        batch, length, dim = features.shape
        if dim != self.card.feature_dim:
            raise ValueError(f"TemporalHead expects feature width {self.card.feature_dim}, got {dim}")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=features.device)
        elif mask.shape != (batch, length):
            raise ValueError(f"mask must be (B, T) = {(batch, length)}, got {tuple(mask.shape)}")
        mask = mask.to(device=features.device, dtype=torch.bool)
        keep = mask[..., None].to(self.proj.weight.dtype)
        # where(), not a product: garbage padding may hold inf or NaN.
        x = torch.where(mask[..., None], features, torch.zeros((), dtype=features.dtype, device=features.device))
        x = self.proj(x.to(self.proj.weight.dtype)) * keep
        for block in self.tcn:
            x = block(x, keep)
        x = x + sinusoidal_encoding(length, x.shape[-1], x.device, x.dtype)
        x = self._attend(x, mask)
        heads = {task: module(x) for task, module in self.outputs.items()}
        return HeadOutputs(
            va=torch.tanh(heads["va"]) if "va" in heads else None,
            expr_logits=heads.get("expr"),
            au_logits=heads.get("au"),
        )

    def _attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Transformer over (B, T, d_model); padded keys never attended to."""
        if not self.causal:
            # A window with no real frame would give all-masked rows (NaN); let it
            # attend to its own padding: its outputs are ignored anyway.
            empty = ~mask.any(dim=1, keepdim=True)
            return self.encoder(x, src_key_padding_mask=~(mask | empty))
        length = x.shape[1]
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=1)
        blocked = future[None] | ~mask[:, None, :]
        # Every query may see itself, so no row is fully masked (leading padding).
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=x.device)[None]
        blocked = blocked.repeat_interleave(self.n_heads, dim=0)
        return self.encoder(x, mask=blocked)


def _check_arch(
    feature_dim: int,
    tasks: tuple[str, ...],
    d_model: int,
    dilations: tuple[int, ...],
    kernel_size: int,
    n_layers: int,
    n_heads: int,
    dropout: float,
) -> None:
    if feature_dim < 1 or d_model < 1:
        raise ConfigError(f"temporal head: feature_dim {feature_dim} and d_model {d_model} must be positive")
    if not tasks or len(set(tasks)) != len(tasks) or not set(tasks) <= set(TASK_WIDTHS):
        raise ConfigError(f"temporal head: tasks {tasks} must be distinct names among va, expr, au")
    if d_model % 2 or d_model % n_heads:
        raise ConfigError(f"temporal head: d_model {d_model} must be even and divisible by n_heads {n_heads}")
    if kernel_size < 1 or n_layers < 1 or n_heads < 1 or any(d < 1 for d in dilations):
        raise ConfigError("temporal head: kernel_size, n_layers, n_heads and dilations must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"temporal head: dropout {dropout} must be in [0, 1)")


def build_from_card(card: HeadCard, state: dict[str, torch.Tensor]) -> TemporalHead:
    """Rebuild a head from its card and state dict (used by ``load_head_checkpoint``)."""
    if card.kind != "temporal":
        raise ConfigError(f"head '{card.name}': kind '{card.kind}' is not a temporal head")
    if not card.windowed:
        raise ConfigError(f"head '{card.name}': a temporal head card needs window_length and window_stride")
    missing = [key for key in _ARCH_KEYS if key not in card.config]
    if missing:
        raise ConfigError(f"head '{card.name}': card config lacks {missing}")
    arch: dict[str, Any] = {key: card.config[key] for key in _ARCH_KEYS}
    arch["tcn_dilations"] = tuple(arch["tcn_dilations"])
    head = TemporalHead(
        card.feature_dim,
        card.tasks,
        window_length=card.window_length,
        window_stride=card.window_stride,
        causal=card.causal,
        backbone=card.backbone,
        name=card.name,
        meaningful=card.meaningful,
        **arch,
    )
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"head '{card.name}': weights do not match its card ({first})") from None
    head.card = card
    return head
