"""Configuration: one frozen dataclass per stage, gathered in :class:`PipelineConfig`.

Presets are TOML files in ``pipelines/`` (shipped in the wheel). A preset names only
what it changes; everything else keeps the defaults below. The CLI's options override
a preset field by field (``PipelineConfig.with_overrides``).

Checking. Every option carries a :class:`_Rule` (its type and range) in its field's
metadata, and :class:`PipelineConfig` checks all of them when it is constructed, so
no invalid ``PipelineConfig`` can exist: :func:`load_pipeline` and
:meth:`PipelineConfig.with_overrides` (both build one) refuse a bad value before any
model is loaded, with a one-line :class:`~affstream.errors.ConfigError` that names the
dotted option and what it allows, e.g. ``track.iou_min must be a number in (0, 1],
got 0``; for a file the message starts with its path. The stage dataclasses are plain
records and do not check themselves (code that builds one directly, such as a unit
test of one stage, keeps the stage's own checks).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import shipped_dir

# ------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class _Rule:
    """What one option allows.

    allowed: the words that complete "<option> must be ...".
    test:    True when a value is allowed (for a tuple: when it has the right length).
    item:    for a tuple, the rule each element must meet (named ``option[i]``).
    """

    allowed: str
    test: Callable[[Any], bool]
    item: _Rule | None = None

    def check(self, name: str, value: Any) -> None:
        if not self.test(value):
            raise ConfigError(f"{name} must be {self.allowed}, got {_show(value)}")
        if self.item is not None:
            for i, element in enumerate(value):
                self.item.check(f"{name}[{i}]", element)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    return _is_int(value) or math.isfinite(value)


def _integer(lo: int, hi: int, *, special: int | None = None, meaning: str = "") -> _Rule:
    """An integer in lo..hi, or ``special`` (which means ``meaning``)."""
    allowed = f"an integer in {lo}..{hi}"
    if special is not None:
        allowed = f"{special} ({meaning}) or {allowed}"
    return _Rule(allowed, lambda v: _is_int(v) and (lo <= v <= hi or v == special))


def _number(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> _Rule:
    """A finite int or float between lo and hi; an open end excludes the bound itself."""
    allowed = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def test(v: Any) -> bool:
        return _is_real(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return _Rule(allowed, test)


def _numbers(length: int, item: _Rule) -> _Rule:
    """A tuple (a list in TOML) of exactly ``length`` values, each meeting ``item``."""
    each = item.allowed.removeprefix("a number ")
    allowed = f"a list of {length} numbers (a tuple in Python), each {each}"
    return _Rule(allowed, lambda v: isinstance(v, tuple) and len(v) == length, item=item)


def _text(allowed: str = "a string", test: Callable[[str], bool] = lambda s: True) -> _Rule:
    """A str for which ``test`` holds."""
    return _Rule(allowed, lambda v: isinstance(v, str) and test(v))


def _choice(*options: str) -> _Rule:
    """One of ``options`` (letter case ignored, as the code that reads it does)."""
    return _text(f"one of {', '.join(options)}", lambda s: s.strip().lower() in options)


def _option(default: Any, rule: _Rule) -> Any:
    """A dataclass field with its default and its rule."""
    return field(default=default, metadata={_RULE: rule})


_RULE = "affstream.rule"
_NONEMPTY = _text("a non-empty string", lambda s: bool(s.strip()))
_ARCH_SOURCE = re.compile(r"\s*[^:\s][^:]*:\s*\S.*")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _show(value: Any, limit: int = 80) -> str:
    """``value`` for an error message: strings in double quotes, always one line."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ stages


@dataclass(frozen=True)
class DecodeConfig:
    """threads: PyAV codec threads for file sources (0 = let FFmpeg choose); 0..256."""

    threads: int = _option(0, _integer(0, 256))


@dataclass(frozen=True)
class DetectConfig:
    """MTCNN settings.

    detect_size_px: longest side of the downscaled copy the detector sees (0 = full size);
                    0 or 32..8192.
    min_face_px:    smallest face searched for, in *source* pixels; 12 (MTCNN's smallest
                    window) .. 8192.
    thresholds:     P-Net, R-Net, O-Net score thresholds; three numbers, each in (0, 1].
    pyramid_factor: scale step between image-pyramid levels; [0.1, 0.95] (0.709 is usual;
                    closer to 1 means many more levels).
    min_score:      detections below this final score are dropped; [0, 1].
    """

    detect_size_px: int = _option(640, _integer(32, 8192, special=0, meaning="full size"))
    min_face_px: int = _option(40, _integer(12, 8192))
    thresholds: tuple[float, float, float] = _option(
        (0.6, 0.7, 0.7), _numbers(3, _number(0, 1, lo_open=True))
    )
    pyramid_factor: float = _option(0.709, _number(0.1, 0.95))
    min_score: float = _option(0.9, _number(0, 1))


@dataclass(frozen=True)
class TrackConfig:
    """iou_min: smallest box IoU to continue a track; (0, 1].
    max_missed_frames: frames a track survives without a matching detection before its
    id is retired; 0..100000."""

    iou_min: float = _option(0.3, _number(0, 1, lo_open=True))
    max_missed_frames: int = _option(30, _integer(0, 100_000))


@dataclass(frozen=True)
class AlignConfig:
    """face_scale: fraction of the crop's side spanned by the canonical landmark
    template (smaller = more context around the face); (0, 1]."""

    face_scale: float = _option(0.72, _number(0, 1, lo_open=True))


@dataclass(frozen=True)
class EmbedConfig:
    """backbone: ``ARCH:TAG`` (open_clip pretrained tag), ``ARCH:/path/weights`` or
    ``ARCH:random`` (seeded random init: tests and smoke runs only). Only the
    ``ARCH:SOURCE`` form is checked here; the backbone module checks the rest on load.
    batch_size: faces per backbone call; 1..65536. precision: auto (bf16/fp16 autocast
    on CUDA, fp32 on CPU), fp32, bf16 or fp16."""

    backbone: str = _option(
        "ViT-L-14:openai",
        _text("a string ARCH:SOURCE, e.g. ViT-L-14:openai", lambda s: bool(_ARCH_SOURCE.fullmatch(s))),
    )
    batch_size: int = _option(256, _integer(1, 65_536))
    precision: str = _option("auto", _choice(*_PRECISIONS))


@dataclass(frozen=True)
class HeadConfig:
    """head: ``zeroshot`` (text-driven, default) or a path to a head checkpoint
    (``.safetensors`` with its ``.json`` card beside it); a non-empty string (whether
    the checkpoint exists is checked when it is loaded)."""

    head: str = _option("zeroshot", _NONEMPTY)


@dataclass(frozen=True)
class ScheduleConfig:
    """How the offline schedule batches the steps (throughput over latency).

    queue_frames:        bound of the decode-ahead queue, in frames (caps memory); 1..1024.
    detect_batch_frames: frames detected together in one batched call; 0 = by device,
                         else 1..1024.
    detect_batch_cpu / detect_batch_cuda: that batch when chosen by device (16 on CPU,
                         64 on CUDA: measured best on a 2-core CPU and an H100); 1..1024.
    embed_pool_frames:   frames whose crops may wait for a full backbone batch
                         (``embed.batch_size`` faces) before a smaller batch is embedded
                         anyway; faceless stretches flush at this count; 1..65536.
    window_batch:        windows per head call for temporal heads; 1..65536.
    """

    queue_frames: int = _option(32, _integer(1, 1024))
    detect_batch_frames: int = _option(0, _integer(1, 1024, special=0, meaning="by device"))
    detect_batch_cpu: int = _option(16, _integer(1, 1024))
    detect_batch_cuda: int = _option(64, _integer(1, 1024))
    embed_pool_frames: int = _option(256, _integer(1, 65_536))
    window_batch: int = _option(32, _integer(1, 65_536))

    def detect_batch(self, device_type: str) -> int:
        """Frames per detector call on a device of type ``device_type`` ("cpu", "cuda")."""
        if self.detect_batch_frames:
            return self.detect_batch_frames
        return self.detect_batch_cuda if device_type == "cuda" else self.detect_batch_cpu


# ---------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline: one config per stage plus

    name, description: strings (any). device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (only the form is checked here; whether it exists is checked when models load).

    Every option is checked on construction (see the module docstring).
    """

    name: str = _option("default", _text())
    description: str = _option("", _text())
    device: str = _option(
        "auto", _text("auto, cpu, cuda or cuda:N", lambda s: bool(_DEVICE.fullmatch(s.strip().lower())))
    )
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        _check_fields(self, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, **stage_fields: dict[str, Any]) -> PipelineConfig:
        """Return a copy with fields replaced, e.g. ``embed={"batch_size": 64}``.

        Top-level scalars (``device``) are given directly: ``device="cpu"``.
        None values are ignored, so CLI options left unset change nothing.
        The result is checked like any PipelineConfig: a bad value is a ConfigError.
        """
        names = [f.name for f in dataclasses.fields(self)]
        changes: dict[str, Any] = {}
        for key, value in stage_fields.items():
            if value is None:
                continue
            if key not in names:
                raise ConfigError(f"unknown configuration key '{key}' (known: {', '.join(sorted(names))})")
            if key in _SECTIONS:
                changes[key] = _replace_checked(getattr(self, key), value, key)
            else:
                changes[key] = value
        return dataclasses.replace(self, **changes)


_SECTIONS = {
    "decode": DecodeConfig,
    "detect": DetectConfig,
    "track": TrackConfig,
    "align": AlignConfig,
    "embed": EmbedConfig,
    "head": HeadConfig,
    "schedule": ScheduleConfig,
}


def _check_fields(obj: Any, prefix: str) -> None:
    """Check every option of ``obj`` against its rule, sections recursively."""
    for f in dataclasses.fields(obj):
        name = prefix + f.name
        value = getattr(obj, f.name)
        section = _SECTIONS.get(f.name) if not prefix else None
        if section is not None:
            if not isinstance(value, section):
                raise ConfigError(f"{name} must be a {section.__name__}, got {_show(value)}")
            _check_fields(value, name + ".")
        else:
            f.metadata[_RULE].check(name, value)


def _replace_checked(current: Any, values: Any, section: str) -> Any:
    if isinstance(values, type(current)):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a table of {section}.* options, got {_show(values)}")
    names = {f.name: f for f in dataclasses.fields(current)}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown option '{section}.{key}' (known: {known})")
        default = getattr(current, key)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        clean[key] = value
    return dataclasses.replace(current, **clean)


def list_presets() -> list[str]:
    """Names of the presets shipped in ``pipelines/``."""
    return sorted(p.stem for p in shipped_dir("pipelines").glob("*.toml"))


def load_pipeline(name_or_path: str | Path = "default") -> PipelineConfig:
    """Load a preset by name (``default``, ``smoke``) or from a TOML file path.

    Every value is checked: a bad one is a ConfigError naming the file and the option.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        candidate = shipped_dir("pipelines") / f"{name_or_path}.toml"
        if not candidate.is_file():
            known = ", ".join(list_presets())
            raise ConfigError(
                f"unknown pipeline preset '{name_or_path}' (shipped: {known}; or give a .toml path)"
            )
        path = candidate
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return _from_mapping(data, path)


def _from_mapping(data: dict[str, Any], path: Path) -> PipelineConfig:
    for key, value in data.items():
        if key in _SECTIONS and not isinstance(value, dict):
            raise ConfigError(f"{path}: [{key}] must be a table, got {key} = {_show(value)}")
    try:
        return PipelineConfig(name=path.stem).with_overrides(**data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
