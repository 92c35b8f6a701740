"""Configuration: one frozen dataclass per stage, gathered in :class:`PipelineConfig`.

Presets are TOML files in ``pipelines/`` (shipped in the wheel). A preset names only
what it changes; everything else keeps the defaults below. The CLI's options override
a preset field by field (``PipelineConfig.with_overrides``).

Checking. Every option carries its check (a primitive of :mod:`affstream.validate`
with the option's type and range bound) in its field's metadata, and
:class:`PipelineConfig` checks all of them when it is constructed, so no invalid
``PipelineConfig`` can exist: :func:`load_pipeline` and
:meth:`PipelineConfig.with_overrides` (both build one) refuse a bad value before any
model is loaded, with a one-line :class:`~affstream.errors.ConfigError` that names the
dotted option and what it allows, e.g. ``track.iou_min must be a number in (0, 1],
got 0``; for a file the message starts with its path. The stage dataclasses are plain
records and do not check themselves (code that builds one directly, such as a unit
test of one stage, keeps the stage's own checks).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import shipped_dir
from .validate import check_choice, check_int, check_number, check_sequence, check_str, interval, refused, show

# ------------------------------------------------------------------------------ checks


def _option(default: Any, check: Callable[..., Any], **limits: Any) -> Any:
    """A dataclass field with its default and its check: a primitive of
    :mod:`affstream.validate`, called as ``check(value, dotted_name, **limits)``."""
    return field(default=default, metadata={_CHECK: functools.partial(check, **limits)})


def _numbers(length: int, lo: float, hi: float, *, lo_open: bool = False) -> dict[str, Any]:
    """The limits of a tuple option (a list in TOML) of exactly ``length`` numbers, each
    in lo..hi (see :func:`_option`)."""
    each = interval(lo, hi, lo_open=lo_open)
    return {
        "item": functools.partial(check_number, lo=lo, hi=hi, lo_open=lo_open),
        "length": length,
        "kinds": (tuple,),
        "allowed": f"a list of {length} numbers (a tuple in Python), each in {each}",
    }


_CHECK = "affstream.check"
_ARCH_SOURCE = re.compile(r"\s*[^:\s][^:]*:\s*\S.*")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_NONBLANK = {"test": lambda s: bool(s.strip()), "allowed": "a non-empty string"}


# ------------------------------------------------------------------------------ stages


@dataclass(frozen=True)
class DecodeConfig:
    """threads:      PyAV codec threads for file sources (0 = let FFmpeg choose); 0..256.
    video_stream: which video stream of a file to annotate: -1 = the best one (the stream
                  marked default, else the largest width x height, ties the lowest index,
                  never cover art), else an index among the file's video streams
                  (ffprobe's ``v:N``); -1 or 0..1023. A file without that stream fails
                  with a line saying how many it has.
    """

    threads: int = _option(0, check_int, lo=0, hi=256)
    video_stream: int = _option(-1, check_int, lo=0, hi=1023, special=-1, meaning="the best video stream")


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

    detect_size_px: int = _option(640, check_int, lo=32, hi=8192, special=0, meaning="full size")
    min_face_px: int = _option(40, check_int, lo=12, hi=8192)
    thresholds: tuple[float, float, float] = _option((0.6, 0.7, 0.7), check_sequence, **_numbers(3, 0, 1, lo_open=True))
    pyramid_factor: float = _option(0.709, check_number, lo=0.1, hi=0.95)
    min_score: float = _option(0.9, check_number, lo=0, hi=1)


@dataclass(frozen=True)
class TrackConfig:
    """iou_min: smallest box IoU to continue a track; (0, 1].
    max_missed_frames: frames a track survives without a matching detection before its
    id is retired; 0..100000."""

    iou_min: float = _option(0.3, check_number, lo=0, hi=1, lo_open=True)
    max_missed_frames: int = _option(30, check_int, lo=0, hi=100_000)


@dataclass(frozen=True)
class AlignConfig:
    """face_scale: fraction of the crop's side spanned by the canonical landmark
    template (smaller = more context around the face); (0, 1]."""

    face_scale: float = _option(0.72, check_number, lo=0, hi=1, lo_open=True)


@dataclass(frozen=True)
class EmbedConfig:
    """backbone: ``ARCH:TAG`` (open_clip pretrained tag), ``ARCH:/path/weights`` or
    ``ARCH:random`` (seeded random init: tests and smoke runs only). Only the
    ``ARCH:SOURCE`` form is checked here; the backbone module checks the rest on load.
    batch_size: faces per backbone call; 1..65536. precision: auto (bf16/fp16 autocast
    on CUDA, fp32 on CPU), fp32, bf16 or fp16."""

    backbone: str = _option(
        "ViT-L-14:openai", check_str,
        test=lambda s: bool(_ARCH_SOURCE.fullmatch(s)), allowed="a string ARCH:SOURCE, e.g. ViT-L-14:openai",
    )
    batch_size: int = _option(256, check_int, lo=1, hi=65_536)
    precision: str = _option("auto", check_choice, options=_PRECISIONS, fold=True)


@dataclass(frozen=True)
class HeadConfig:
    """head: ``zeroshot`` (text-driven, default) or a path to a head checkpoint
    (``.safetensors`` with its ``.json`` card beside it); a non-empty string (whether
    the checkpoint exists is checked when it is loaded)."""

    head: str = _option("zeroshot", check_str, **_NONBLANK)


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
    detect_every:        full face detection on every this-many-th frame of ``annotate``
                         (1: every frame, the default); in between, tracks are followed
                         by the detector's last stage. 1..1000.
    live_detect_every:   the same for ``affstream stream`` (default 3: a 2-core CPU
                         keeps up with more frames; agreement is in the README). 1..1000.
    """

    queue_frames: int = _option(32, check_int, lo=1, hi=1024)
    detect_batch_frames: int = _option(0, check_int, lo=1, hi=1024, special=0, meaning="by device")
    detect_batch_cpu: int = _option(16, check_int, lo=1, hi=1024)
    detect_batch_cuda: int = _option(64, check_int, lo=1, hi=1024)
    embed_pool_frames: int = _option(256, check_int, lo=1, hi=65_536)
    window_batch: int = _option(32, check_int, lo=1, hi=65_536)
    detect_every: int = _option(1, check_int, lo=1, hi=1000)
    live_detect_every: int = _option(3, check_int, lo=1, hi=1000)

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

    name: str = _option("default", check_str)
    description: str = _option("", check_str)
    device: str = _option(
        "auto", check_str, test=lambda s: bool(_DEVICE.fullmatch(s.strip().lower())), allowed="auto, cpu, cuda or cuda:N"
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


_MOVED_OPTIONS = {
    "decode.queue_frames": "schedule.queue_frames",
    "detect.batch_frames": "schedule.detect_batch_frames",
}
"""Options that moved to the schedule section (affstream 0.1 presets named them here)."""

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
    """Check every option of ``obj`` with its check, sections recursively."""
    for f in dataclasses.fields(obj):
        name = prefix + f.name
        value = getattr(obj, f.name)
        section = _SECTIONS.get(f.name) if not prefix else None
        if section is not None:
            if not isinstance(value, section):
                raise refused(value, name, f"a {section.__name__}")
            _check_fields(value, name + ".")
        else:
            f.metadata[_CHECK](value, name)


def _replace_checked(current: Any, values: Any, section: str) -> Any:
    if isinstance(values, type(current)):
        return values
    if not isinstance(values, dict):
        raise refused(values, section, f"a table of {section}.* options")
    names = {f.name: f for f in dataclasses.fields(current)}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in names:
            moved = _MOVED_OPTIONS.get(f"{section}.{key}")
            if moved:
                raise ConfigError(f"option '{section}.{key}' is now '{moved}'; rename it in the preset or override")
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
            raise ConfigError(f"{path}: [{key}] must be a table, got {key} = {show(value)}")
    try:
        return PipelineConfig(name=path.stem).with_overrides(**data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
