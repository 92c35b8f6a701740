"""Configuration: one frozen dataclass per stage, gathered in :class:`PipelineConfig`.

Presets are TOML files in ``pipelines/`` (shipped in the wheel). A preset names only
what it changes; everything else keeps the defaults below. The CLI's options override
a preset field by field (``PipelineConfig.with_overrides``).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import shipped_dir


@dataclass(frozen=True)
class DecodeConfig:
    """queue_frames: bound of the decode-ahead queue, in frames (caps memory).
    threads: PyAV codec threads for file sources (0 = let FFmpeg choose)."""

    queue_frames: int = 32
    threads: int = 0


@dataclass(frozen=True)
class DetectConfig:
    """MTCNN settings.

    detect_size_px: longest side of the downscaled copy the detector sees (0 = full size).
    min_face_px:    smallest face searched for, in *source* pixels.
    thresholds:     P-Net, R-Net, O-Net score thresholds.
    min_score:      detections below this final score are dropped.
    batch_frames:   frames detected together in one batched call; 0 = by device (16 on
                    CPU, 64 on CUDA: measured best on a 2-core CPU and an H100).
    """

    detect_size_px: int = 640
    min_face_px: int = 40
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    pyramid_factor: float = 0.709
    min_score: float = 0.9
    batch_frames: int = 0


@dataclass(frozen=True)
class TrackConfig:
    """iou_min: smallest box IoU to continue a track; max_missed_frames: frames a track
    survives without a matching detection before its id is retired."""

    iou_min: float = 0.3
    max_missed_frames: int = 30


@dataclass(frozen=True)
class AlignConfig:
    """face_scale: fraction of the crop's side spanned by the canonical landmark
    template (smaller = more context around the face)."""

    face_scale: float = 0.72


@dataclass(frozen=True)
class EmbedConfig:
    """backbone: ``ARCH:TAG`` (open_clip pretrained tag), ``ARCH:/path/weights`` or
    ``ARCH:random`` (seeded random init: tests and smoke runs only).
    batch_size: faces per backbone call. precision: auto (bf16/fp16 autocast on CUDA,
    fp32 on CPU), fp32, bf16 or fp16."""

    backbone: str = "ViT-L-14:openai"
    batch_size: int = 256
    precision: str = "auto"


@dataclass(frozen=True)
class HeadConfig:
    """head: ``zeroshot`` (text-driven, default) or a path to a head checkpoint
    (``.safetensors`` with its ``.json`` card beside it)."""

    head: str = "zeroshot"


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "default"
    description: str = ""
    device: str = "auto"
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, **stage_fields: dict[str, Any]) -> "PipelineConfig":
        """Return a copy with fields replaced, e.g. ``embed={"batch_size": 64}``.

        Top-level scalars (``device``) are given directly: ``device="cpu"``.
        None values are ignored, so CLI options left unset change nothing.
        """
        changes: dict[str, Any] = {}
        for key, value in stage_fields.items():
            if value is None:
                continue
            current = getattr(self, key, _MISSING)
            if current is _MISSING:
                raise ConfigError(f"unknown configuration section '{key}'")
            if dataclasses.is_dataclass(current):
                changes[key] = _replace_checked(current, value, key)
            else:
                changes[key] = value
        return dataclasses.replace(self, **changes)


_MISSING = object()
_SECTIONS = {
    "decode": DecodeConfig,
    "detect": DetectConfig,
    "track": TrackConfig,
    "align": AlignConfig,
    "embed": EmbedConfig,
    "head": HeadConfig,
}


def _replace_checked(current: Any, values: dict[str, Any], section: str) -> Any:
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
    """Load a preset by name (``default``, ``smoke``) or from a TOML file path."""
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
    config = PipelineConfig(name=str(data.get("name", path.stem)))
    top = {}
    sections = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table")
            sections[key] = value
        elif key in ("name", "description", "device"):
            top[key] = value
        else:
            raise ConfigError(f"{path}: unknown key '{key}'")
    try:
        config = dataclasses.replace(config, **top)
        return config.with_overrides(**sections)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
