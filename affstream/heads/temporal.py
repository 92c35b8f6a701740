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

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, WeightsError
from ..labels import TASK_WIDTHS
from ..temporal.windows import DEFAULT_WINDOW_LENGTH, DEFAULT_WINDOW_STRIDE
from ..validate import check_choice, check_int, check_number, check_sequence, refused
from .base import MAX_FEATURE_DIM, MAX_WINDOW_LENGTH, AffectHead, HeadCard, HeadOutputs, check_param_count, state_dict_mismatch

KIND = "temporal"
POSITIONAL_ENCODING = "sinusoidal"
MAX_D_MODEL = 4096
MAX_LAYERS = 64
MAX_HEADS = 64
MAX_KERNEL_SIZE = 31
MAX_DILATION = 1024
MAX_TCN_BLOCKS = 16


def _checked(values: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """The dims fields of ``values``, type- and range-checked; errors start with ``where``
    (the card's source) and name the field after ``prefix`` ("config.")."""

    def integer(key: str, lo: int, hi: int) -> int:
        return check_int(values[key], prefix + key, lo, hi, where=where, brackets=True)

    checked = {
        "d_model": integer("d_model", 2, MAX_D_MODEL),
        "tcn_dilations": check_sequence(
            values["tcn_dilations"], prefix + "tcn_dilations",
            functools.partial(check_int, lo=1, hi=MAX_DILATION, brackets=True),
            length=range(MAX_TCN_BLOCKS + 1), where=where,
            allowed=f"a list of at most {MAX_TCN_BLOCKS} integers in [1, {MAX_DILATION}]",
        ),
        "kernel_size": integer("kernel_size", 1, MAX_KERNEL_SIZE),
        "n_layers": integer("n_layers", 1, MAX_LAYERS),
        "n_heads": integer("n_heads", 1, MAX_HEADS),
        "dropout": check_number(values["dropout"], prefix + "dropout", 0.0, 1.0, where=where, hi_open=True),
    }
    d_model, n_heads = checked["d_model"], checked["n_heads"]
    if d_model % 2 or d_model % n_heads:
        raise refused(d_model, prefix + "d_model", f"even and divisible by n_heads ({n_heads})", where=where)
    return checked


@dataclass(frozen=True)
class TemporalDims:
    """Architecture of a :class:`TemporalHead`, stored in the card's ``config`` under the
    same keys (plus ``"positional_encoding": "sinusoidal"``, the only encoding there is).

    d_model:       channels of the TCN and Transformer, even, <= 4096, divisible by n_heads.
    tcn_dilations: one residual TCN block per dilation; at most 16, each 1..1024.
    kernel_size:   convolution width, 1..31.
    n_layers:      Transformer encoder layers, 1..64.
    n_heads:       attention heads, 1..64.
    dropout:       drop probability, in [0, 1).

    Construction checks every field (ConfigError), so a dims object is always buildable.
    """

    d_model: int = 256
    tcn_dilations: tuple[int, ...] = (1, 2, 4, 8)
    kernel_size: int = 3
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.3

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in _checked(values, "TemporalDims").items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> TemporalDims:
        """Dims from a card's ``config`` (untrusted). Every dims key is required; keys that
        are not dims (training settings) are ignored; ``positional_encoding``, if given,
        must be "sinusoidal". Raises a one-line ConfigError naming ``source`` and the
        field, e.g. ``config.n_heads``."""
        if not isinstance(config, dict):
            raise ConfigError(f"{source}: config must be a JSON object")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in config]
        if missing:
            raise ConfigError(f"{source}: config.{missing[0]} is missing (a temporal card's config "
                              f"needs {', '.join(names)})")
        check_choice(config.get("positional_encoding", POSITIONAL_ENCODING), "config.positional_encoding",
                     (POSITIONAL_ENCODING,), where=source)
        return cls(**_checked(config, source, "config."))

    def to_config(self) -> dict[str, Any]:
        """The card ``config`` entries for these dims (dilations as a JSON list)."""
        return {
            "d_model": self.d_model,
            "tcn_dilations": list(self.tcn_dilations),
            "kernel_size": self.kernel_size,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "dropout": self.dropout,
            "positional_encoding": POSITIONAL_ENCODING,
        }

    def param_count(self, feature_dim: int, tasks: Sequence[str]) -> int:
        """Parameters of the head these dims build (computed, nothing allocated)."""
        d, k = self.d_model, self.kernel_size
        proj = feature_dim * d + d
        tcn = len(self.tcn_dilations) * (2 * (d * d * k + d) + 2 * d)
        layer = (3 * d * d + 3 * d) + (d * d + d) + (2 * d * d + 2 * d) + (2 * d * d + d) + 4 * d
        outputs = sum(d * d + d + (d + 1) * TASK_WIDTHS.get(task, 0) for task in tasks)
        return proj + tcn + self.n_layers * layer + 2 * d + outputs


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
        d_model: int | None = None,
        tcn_dilations: Sequence[int] | None = None,
        kernel_size: int | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
        dropout: float | None = None,
        dims: TemporalDims | None = None,
        window_length: int = DEFAULT_WINDOW_LENGTH,
        window_stride: int = DEFAULT_WINDOW_STRIDE,
        causal: bool = False,
        backbone: str = "ViT-L-14:openai",
        name: str = "temporal",
        meaningful: bool = True,
    ) -> None:
        """Architecture: d_model .. dropout (see :class:`TemporalDims`; None = default), or
        ``dims`` instead of all six. Everything is checked (ConfigError), including the
        estimated size, before a module is allocated."""
        super().__init__()
        source = f"temporal head '{name}'"
        given = {"d_model": d_model, "tcn_dilations": tcn_dilations, "kernel_size": kernel_size,
                 "n_layers": n_layers, "n_heads": n_heads, "dropout": dropout}
        if dims is None:
            defaults = TemporalDims().to_config()
            dims = TemporalDims.from_config(
                {**defaults, **{k: v for k, v in given.items() if v is not None}}, source
            )
        elif not isinstance(dims, TemporalDims) or any(v is not None for v in given.values()):
            raise TypeError("TemporalHead: pass dims (a TemporalDims) or d_model..dropout, not both")
        self.dims = dims
        self.card = HeadCard(
            name=name,
            kind=KIND,
            backbone=backbone,
            feature_dim=check_int(feature_dim, "feature_dim", 1, MAX_FEATURE_DIM, where=source, brackets=True),
            tasks=tuple(tasks),
            window_length=check_int(window_length, "window_length", 1, MAX_WINDOW_LENGTH, where=source, brackets=True),
            window_stride=check_int(window_stride, "window_stride", 1, MAX_WINDOW_LENGTH, where=source, brackets=True),
            causal=causal,
            meaningful=meaningful,
            config=dims.to_config(),
        )
        self.card.validate(source)
        check_param_count(dims.param_count(self.card.feature_dim, self.card.tasks), source,
                          "d_model, n_layers or the number of tcn_dilations")
        self.causal = bool(causal)
        self.n_heads = dims.n_heads
        d = dims.d_model
        self.proj = nn.Linear(self.card.feature_dim, d)
        self.tcn = nn.ModuleList(
            TCNBlock(d, dims.kernel_size, dilation, dims.dropout, self.causal) for dilation in dims.tcn_dilations
        )
        layer = nn.TransformerEncoderLayer(
            d,
            dims.n_heads,
            dim_feedforward=2 * d,
            dropout=dims.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, dims.n_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )
        self.outputs = nn.ModuleDict(
            {
                task: nn.Sequential(
                    nn.Linear(d, d), nn.GELU(), nn.Dropout(dims.dropout), nn.Linear(d, TASK_WIDTHS[task])
                )
                for task in self.card.tasks
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


def check_card(card: HeadCard, source: str) -> TemporalDims:
    """Check that ``card`` describes a buildable temporal head, before any weights are read
    or modules built; returns its dims. Raises a one-line ConfigError naming ``source``."""
    card.validate(source)
    if card.kind != KIND:
        raise ConfigError(f"{source}: kind: card kind '{card.kind}' is not a '{KIND}' head")
    if not card.windowed:
        raise ConfigError(f"{source}: window_length: a temporal head card needs window_length and window_stride")
    dims = TemporalDims.from_config(card.config, source)
    check_param_count(dims.param_count(card.feature_dim, card.tasks), source,
                      "config.d_model, config.n_layers or the number of config.tcn_dilations")
    return dims


def build_from_card(card: HeadCard, state: dict[str, torch.Tensor], *, source: str | None = None) -> TemporalHead:
    """Rebuild a head from its card and state dict (used by ``load_head_checkpoint``).
    The card is kept as stored, extra ``config`` keys included. ``source`` names the card
    in errors."""
    source = source or f"head '{card.name}'"
    dims = check_card(card, source)
    head = TemporalHead(
        card.feature_dim,
        card.tasks,
        dims=dims,
        window_length=card.window_length,
        window_stride=card.window_stride,
        causal=card.causal,
        backbone=card.backbone,
        name=card.name,
        meaningful=card.meaningful,
    )
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{source}: weights do not match its card ({state_dict_mismatch(exc)})") from None
    head.card = card
    return head
