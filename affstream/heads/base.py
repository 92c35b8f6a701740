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
import functools
import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, WeightsError, first_line
from ..files import atomic_path, atomic_write_text, sha256_file
from ..labels import AU_LABELS, EXPR_LABELS, TASKS
from ..records import Prediction
from ..validate import check_bool, check_choice, check_int, check_number, check_sequence, check_str, interval, refused, show

CARD_VERSION = 1

# kind -> "module:function" building a head from (card, state_dict, source=...). Modules
# are imported only when a checkpoint of that kind is loaded. A module may also define
# ``check_card(card, source)``, run before the weights are read (see load_head_checkpoint).
HEAD_BUILDERS: dict[str, str] = {
    "mlp": "affstream.heads.mlp:build_from_card",
    "temporal": "affstream.heads.temporal:build_from_card",
    "text": "affstream.heads.text:build_from_card",
}

# Bounds on what an untrusted card or weights file may ask for; all are checked before
# anything is allocated.
MAX_FEATURE_DIM = 16384
MAX_WINDOW_LENGTH = 100_000
MAX_PARAMS = 500_000_000
"""Largest head (estimated parameter count) a card may describe."""
MAX_CARD_BYTES = 4 * 1024 * 1024
MAX_NAME_CHARS = 200
MAX_WEIGHTS_BYTES = 4 * MAX_PARAMS + (1 << 20)
"""Largest tensor data a head's safetensors file may hold (MAX_PARAMS float32 values)."""
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 10_000
WEIGHT_DTYPES: dict[str, int] = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "BOOL": 1}
"""safetensors dtypes a head's weights may use, with their item size in bytes."""


# ----------------------------------------------------------------------------- field checks
# Fields are checked with the primitives of affstream.validate, as are the heads' dims:
# ``where`` is the card's source, ``name`` the dotted field. Integer ranges are written as
# intervals, ``[1, 64]``, like the numbers' ones (``brackets=True``).

_CARD_TEXT = {"nonempty": True, "printable": True, "max_chars": MAX_NAME_CHARS}
"""What a card's name and backbone must be: one printable line of 1..200 characters."""


def check_param_count(count: int, source: str, hint: str) -> None:
    """Refuse a head whose estimated parameter count exceeds :data:`MAX_PARAMS`."""
    if count > MAX_PARAMS:
        raise ConfigError(
            f"{source}: config describes a head of about {count:,} parameters, more than the "
            f"{MAX_PARAMS:,} allowed; reduce {hint}"
        )


@dataclass(frozen=True)
class HeadCard:
    """Identity and contract of a head, stored as JSON beside its weights.

    backbone:      the ``ARCH:TAG`` spec whose features the head expects.
    feature_dim:   D, width of those features.
    tasks:         distinct names among ("expr", "au", "va") the head predicts.
    au_thresholds: per-AU probability threshold for the ``AUxx_c`` presence columns.
    window_length / window_stride: frames per window and hop for temporal heads;
                   None for per-frame heads.
    causal:        True if a frame's output depends only on itself and earlier frames.
    meaningful:    False for heads built on random weights (smoke runs, tests).
    config:        the head's hyper-parameters: its architecture (read by the head's dims
                   dataclass, e.g. ``MLPDims``) plus any extra keys (training settings),
                   kept as they are.
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
    def from_dict(cls, data: dict[str, Any], source: str = "head card") -> HeadCard:
        """Check and build a card from its JSON object (untrusted input).

        Raises a one-line ConfigError naming ``source`` and the offending field.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a head card must be a JSON object")
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        unknown = sorted(str(key) for key in data if key not in names)
        if unknown:
            listed = ", ".join(show(key, 30, as_repr=True) for key in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise ConfigError(f"{source}: unknown card field(s) {listed}; known: {', '.join(sorted(names))}")
        required = [f.name for f in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"{source}: {missing[0]} is missing (a card needs {', '.join(required)})")
        values = dict(data)
        for key in ("tasks", "expr_labels", "au_labels", "au_thresholds"):
            if isinstance(values.get(key), list):  # anything else is refused by validate
                values[key] = tuple(values[key])
        card = cls(**values)
        card.validate(source)
        return card

    def validate(self, source: str = "head card") -> None:
        """Check every field's type and range; a one-line ConfigError names the first bad one."""
        check_str(self.name, "name", where=source, **_CARD_TEXT)
        check_choice(self.kind, "kind", sorted(HEAD_BUILDERS), where=source)
        check_str(self.backbone, "backbone", where=source, **_CARD_TEXT)
        check_int(self.feature_dim, "feature_dim", 1, MAX_FEATURE_DIM, where=source, brackets=True)
        if type(self.version) is not int or self.version != CARD_VERSION:
            raise refused(self.version, "version", f"{CARD_VERSION} (the card format this affstream reads)", where=source)
        self._validate_tasks(source)
        for key, expected in (("expr_labels", EXPR_LABELS), ("au_labels", AU_LABELS)):
            labels = getattr(self, key)
            if not isinstance(labels, (tuple, list)) or tuple(labels) != expected:
                raise ConfigError(f"{source}: {key} must be exactly {list(expected)} (affstream's label space)")
        check_sequence(
            self.au_thresholds, "au_thresholds", functools.partial(check_number, lo=0.0, hi=1.0),
            length=len(AU_LABELS), where=source,
            allowed=f"a list of {len(AU_LABELS)} numbers in {interval(0, 1)} (one per AU: {', '.join(AU_LABELS)})",
        )
        self._validate_window(source)
        check_bool(self.causal, "causal", where=source)
        check_bool(self.meaningful, "meaningful", where=source)
        for key in ("config", "metrics"):
            if not isinstance(getattr(self, key), dict):
                raise refused(getattr(self, key), key, "a JSON object", where=source)

    def _validate_tasks(self, source: str) -> None:
        allowed = f"a non-empty list of distinct task names among {', '.join(TASKS)}"
        given = list(self.tasks) if isinstance(self.tasks, tuple) else self.tasks  # shown as the card's list
        tasks = check_sequence(given, "tasks", functools.partial(check_choice, options=TASKS),
                               length=range(1, len(TASKS) + 1), where=source, allowed=allowed)
        for i, task in enumerate(tasks):
            if task in tasks[:i]:
                raise ConfigError(f"{source}: tasks[{i}]: {task!r} is listed twice; tasks must be {allowed}")

    def _validate_window(self, source: str) -> None:
        length, stride = self.window_length, self.window_stride
        if (length is None) != (stride is None):
            raise ConfigError(
                f"{source}: {'window_stride' if stride is None else 'window_length'} is null: give both "
                "window_length and window_stride (temporal heads), or neither (per-frame heads)"
            )
        if length is not None:
            length = check_int(length, "window_length", 1, MAX_WINDOW_LENGTH, where=source, brackets=True)
            check_int(stride, "window_stride", 1, length, where=source,
                      allowed=f"an integer with 0 < window_stride <= window_length ({length})")


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


def state_dict_mismatch(exc: BaseException, limit: int = 300) -> str:
    """What ``load_state_dict(strict=True)`` complained about, on one line: torch's
    first line only names the module, the missing/unexpected keys and shapes follow."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return (" ".join(lines[1:]) or (lines[0] if lines else type(exc).__name__))[:limit]


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
    # append, never replace: "expr.v2" is the stem of "expr.v2.safetensors"
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


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
    """Read and check ``NAME.json`` (untrusted input): ConfigError for a bad card."""
    _, card_path = checkpoint_paths(path)
    if not card_path.is_file():
        raise WeightsError(f"{card_path}: head card not found (a head is NAME.safetensors + NAME.json)")
    size = card_path.stat().st_size
    if size > MAX_CARD_BYTES:
        raise ConfigError(f"{card_path}: {size:,} bytes is too large for a head card (at most {MAX_CARD_BYTES:,})")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{card_path}: not valid JSON ({first_line(exc, 200)})") from None
    return HeadCard.from_dict(data, str(card_path))


def check_safetensors(path: Path) -> None:
    """Check a safetensors file's header before any tensor is read.

    Reads only the 8-byte header length and the JSON header: every tensor must have an
    allowed dtype (:data:`WEIGHT_DTYPES`), a shape of non-negative ints whose byte size
    matches its offsets, the tensors must tile the data section exactly (so the file is
    neither truncated nor padded), and the whole must stay within :data:`MAX_TENSORS`
    tensors and :data:`MAX_WEIGHTS_BYTES` bytes. Raises a one-line WeightsError.
    """
    size = path.stat().st_size
    if size > 8 + MAX_HEADER_BYTES + MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{path}: {size:,} bytes is too large for head weights (at most {MAX_WEIGHTS_BYTES:,} of data)")
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"{path}: not a safetensors file ({size} bytes, shorter than its header)")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise WeightsError(
                f"{path}: not a safetensors file or truncated (header of {length:,} bytes, file of {size:,})"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WeightsError(f"{path}: not a safetensors file (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise WeightsError(f"{path}: {len(header):,} tensors is too many for a head (at most {MAX_TENSORS:,})")
    spans = sorted(_tensor_span(path, name, entry) for name, entry in header.items())
    data = size - 8 - length
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise WeightsError(f"{path}: tensor {show(name)} starts at byte {begin:,}, expected {end:,}")
        end = stop
    if end > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{path}: {end:,} bytes of tensors is too large for a head (at most {MAX_WEIGHTS_BYTES:,})")
    if end != data:
        state = "truncated" if end > data else "padded"
        raise WeightsError(f"{path}: {state} safetensors file (tensors need {end:,} data bytes, file has {data:,})")


def _tensor_span(path: Path, name: str, entry: Any) -> tuple[int, int, str]:
    """(begin, end, name) of one header entry, after checking its dtype, shape and offsets."""
    where = f"{path}: tensor {show(name)}"
    if not isinstance(entry, dict):
        raise WeightsError(f"{where}: header entry is not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in WEIGHT_DTYPES:
        raise WeightsError(f"{where}: dtype {show(dtype)} is not one of {', '.join(WEIGHT_DTYPES)}")

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 53

    if not isinstance(shape, list) or len(shape) > 8 or not all(map(count, shape)):
        raise WeightsError(f"{where}: shape {show(shape)} is not a list of at most 8 sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(count, offsets)):
        raise WeightsError(f"{where}: data_offsets {show(offsets)} is not a [begin, end] pair")
    nbytes = math.prod(shape) * WEIGHT_DTYPES[dtype]
    begin, end = offsets
    if end - begin != nbytes:
        raise WeightsError(f"{where}: shape {shape} of {dtype} needs {nbytes:,} bytes, offsets give {end - begin:,}")
    return begin, end, name


def load_head_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[AffectHead, str]:
    """Load a head from ``NAME.safetensors`` + ``NAME.json``; returns (head, sha256).

    Both files are untrusted: the card is checked (fields, then the head's dims and its
    estimated size, via the kind's ``check_card``) and so is the weights file's header,
    before any tensor is read or any module built. ConfigError for a bad card,
    WeightsError for missing, malformed or mismatching weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, card_path = checkpoint_paths(path)
    card = read_card(path)
    module_name, func_name = HEAD_BUILDERS[card.kind].split(":")  # kind checked by read_card
    module = importlib.import_module(module_name)
    check_card = getattr(module, "check_card", None)
    if check_card is not None:
        check_card(card, str(card_path))
    if not weights.is_file():
        raise WeightsError(f"{weights}: head weights not found")
    check_safetensors(weights)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{weights}: not a readable safetensors file ({first_line(exc, 200)})") from None
    head = getattr(module, func_name)(card, state, source=str(card_path))
    return head.to(device).eval(), sha256_file(weights)
