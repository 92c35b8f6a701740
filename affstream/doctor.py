"""What a bug report needs to know about this installation (``affstream doctor``).

:func:`collect` returns a :class:`Diagnosis`: versions of Python, affstream and every
dependency, torch's CUDA/cuDNN and the devices it sees, PyAV's FFmpeg libraries and
hardware decoders, the optional extras, and where weights are cached (which CLIP
weights are there). Every probe is guarded: a missing or broken package is reported as
such, never raised, so the command works on the installation it is asked to diagnose.
Nothing here imports torch unless it is installed; without torch it takes well under a
second.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

# distribution names, in the order a report lists them
CORE = ("torch", "torchvision", "open_clip_torch", "huggingface_hub", "av", "numpy", "click", "rich", "safetensors",
        "pillow")
EXTRAS = {"ray": "ray", "pyarrow": "parquet", "matplotlib": "pictures"}  # distribution -> affstream extra
_HW_CODECS = ("h264", "hevc", "av1", "vp9")
_HW_SUFFIXES = ("_cuvid", "_nvdec", "_qsv", "_vaapi", "_videotoolbox", "_v4l2m2m", "_mediacodec", "_amf")


@dataclass
class Diagnosis:
    """Sections of ``(label, value)`` lines, in display order, and the same as a dict."""

    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, section: str, label: str, value: object) -> None:
        self.sections.setdefault(section, []).append((label, str(value)))

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {name: dict(lines) for name, lines in self.sections.items()}

    def to_text(self) -> str:
        width = max((len(label) for lines in self.sections.values() for label, _ in lines), default=0)
        out = []
        for name, lines in self.sections.items():
            out.append(f"{name}:")
            out += [f"  {label.ljust(width)}  {value}" for label, value in lines]
        return "\n".join(out)


def version_of(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None (metadata only: nothing imported)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed(module: str) -> bool:
    """Whether ``module`` can be found (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def collect() -> Diagnosis:
    """Everything :mod:`affstream.doctor` reports; never raises."""
    report = Diagnosis()
    _system(report)
    _packages(report)
    _torch(report)
    _pyav(report)
    _weights(report)
    return report


def _guarded(report: Diagnosis, section: str, label: str, probe) -> None:
    try:
        value = probe()
    except Exception as exc:  # noqa: BLE001 - a broken package is a finding, not a failure
        value = f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if value is not None:
        report.add(section, label, value)


def _system(report: Diagnosis) -> None:
    from .version import __version__

    report.add("affstream", "version", __version__)
    report.add("affstream", "installed at", Path(__file__).resolve().parent)
    report.add("system", "python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})")
    report.add("system", "platform", f"{platform.system()} {platform.release()} {platform.machine()}")
    report.add("system", "cpus", os.cpu_count())


def _packages(report: Diagnosis) -> None:
    for name in CORE:
        report.add("packages", name, version_of(name) or "NOT INSTALLED (required)")
    for name, extra in EXTRAS.items():
        report.add("extras", name, version_of(name) or f"not installed (pip install 'affstream[{extra}]')")


def _probes(report: Diagnosis, section: str, module: str, missing: str, probes) -> None:
    """One section: ``missing`` when ``module`` is not installed, else each guarded probe."""
    if not installed(module):
        report.add(section, "status", missing)
        return
    for label, probe in probes:
        _guarded(report, section, label, probe)


def _torch(report: Diagnosis) -> None:
    _probes(report, "torch", "torch", "not installed: annotate/stream/train need it (pip install torch)", [
        ("build", _torch_build),
        ("cuda devices", _cuda_devices),
        ("threads", lambda: importlib.import_module("torch").get_num_threads()),
    ])


def _torch_build() -> str:
    import torch

    cuda = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if cuda else None
    mps = getattr(torch.backends, "mps", None)
    parts = [torch.__version__, f"CUDA {cuda}" if cuda else "CPU build", f"cuDNN {cudnn}" if cudnn else None,
             "MPS available" if mps is not None and mps.is_available() else None]
    return ", ".join(p for p in parts if p)


def _cuda_devices() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none seen"
    names = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        names.append(f"cuda:{index} {props.name} ({props.total_memory / 2**30:.0f} GiB)")
    return "; ".join(names)


def _pyav(report: Diagnosis) -> None:
    _probes(report, "pyav", "av", "not installed (pip install av)", [
        ("ffmpeg", _ffmpeg_libraries),
        ("hw devices", _hw_devices),
        ("hw decoders", _hw_decoders),
    ])


def _ffmpeg_libraries() -> str:
    import av

    version = getattr(av, "ffmpeg_version_info", None)
    libraries = getattr(av, "library_versions", {}) or {}
    libs = ", ".join(f"{name} {'.'.join(str(v) for v in numbers)}" for name, numbers in sorted(libraries.items()))
    return (f"FFmpeg {version}; " if version else "") + (libs or "library versions unknown")


def _hw_devices() -> str:
    from av.codec import hwaccel

    devices = [str(getattr(d, "name", d)) for d in hwaccel.hwdevices_available()]
    return ", ".join(devices) or "none in this build"


def _hw_decoders() -> str:
    import av

    found = []
    for name in sorted(av.codecs_available):
        if name.split("_", 1)[0] in _HW_CODECS and name.endswith(_HW_SUFFIXES):
            try:
                av.codec.Codec(name, "r")
            except Exception:  # noqa: BLE001 - an encoder of that name, or not loadable here
                continue
            found.append(name)
    return ", ".join(found) or "none in this build"


def _weights(report: Diagnosis) -> None:
    from .files import cache_dir

    report.add("weights", "affstream cache", cache_dir())
    hub = _hf_hub_cache()
    report.add("weights", "hugging face cache", hub)
    models = sorted(p.name[len("models--"):].replace("--", "/") for p in hub.glob("models--*")) if hub.is_dir() else []
    report.add("weights", "cached models", ", ".join(models) or "none")
    if installed("torch") and installed("open_clip"):
        _guarded(report, "weights", "presets' CLIP weights", _preset_weights)


def _hf_hub_cache() -> Path:
    """Hugging Face's hub cache folder, by its documented environment variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _preset_weights() -> str:
    """For each shipped preset with a pretrained tag: cached or not (no network)."""
    from open_clip.pretrained import get_pretrained_cfg

    from .config import list_presets, load_pipeline
    from .embed.backbone import BackboneSpec
    from .weights import cached_checkpoint

    states = []
    for name in list_presets():
        spec = BackboneSpec.parse(load_pipeline(name).embed.backbone)
        if spec.kind != "pretrained":
            continue
        cached = cached_checkpoint(get_pretrained_cfg(spec.arch, spec.source))
        states.append(f"{name}: {spec} " + ("cached" if cached else "not cached (downloaded on first use)"))
    return "; ".join(states) or "no preset names pretrained weights"
