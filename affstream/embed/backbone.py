"""CLIP backbones from open_clip: parse a spec, load the weights, embed crops and texts.

A backbone spec is ``ARCH:SOURCE``:

* ``ViT-L-14:openai``: an open_clip pretrained tag, downloaded by open_clip (Hugging Face
  Hub cache) on first use;
* ``ViT-B-32:/path/to/weights.safetensors``: a local open_clip checkpoint
  (``.safetensors``, ``.bin``, ``.pt`` or ``.pth``);
* ``ViT-B-32:random``: seeded random initialisation (tests and smoke runs only; the
  features mean nothing).

``affstream-tiny`` is a tiny architecture shipped with affstream (64-d embeddings, 64 px
input) for tests and the smoke preset. It is registered with open_clip lazily, the first
time a spec is parsed.

Weights are never replaced silently: when a pretrained tag cannot be had (offline,
``AFFSTREAM_OFFLINE=1``, no route to the hub) loading fails within seconds with a
:class:`WeightsError` that says how to supply them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, WeightsError, first_line
from ..files import sha256_file_cached
from ..weights import (
    cached_checkpoint,
    checkpoint_sha256,
    hf_offline,
    hub_unreachable_reason,
    missing_weights_message,
    offline_requested,
    open_clip_logs,
)

log = logging.getLogger("affstream")

TINY_ARCH = "affstream-tiny"
RANDOM_SOURCE = "random"
RANDOM_SEED = 0
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_registered = False


def register_configs() -> None:
    """Make affstream's own open_clip model configs (``affstream-tiny``) known. Idempotent."""
    global _registered
    if _registered:
        return
    import open_clip

    if TINY_ARCH not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)
    _registered = True


def _known_architectures() -> dict[str, str]:
    """Lower-cased architecture name -> open_clip's spelling."""
    import open_clip

    register_configs()
    return {name.lower(): name for name in open_clip.list_models()}


def _looks_like_path(source: str) -> bool:
    return (
        "/" in source
        or "\\" in source
        or source.startswith(("~", "."))
        or source.lower().endswith(WEIGHT_SUFFIXES)
    )


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed ``ARCH:SOURCE`` backbone spec.

    arch:   open_clip architecture name as open_clip spells it (``ViT-L-14``).
    source: a pretrained tag (``openai``), a local weights path, or ``random``.
    """

    arch: str
    source: str

    @property
    def kind(self) -> str:
        """``"random"``, ``"file"`` (local weights) or ``"pretrained"`` (open_clip tag)."""
        if self.source == RANDOM_SOURCE:
            return "random"
        if _looks_like_path(self.source):
            return "file"
        return "pretrained"

    def __str__(self) -> str:
        return f"{self.arch}:{self.source}"

    @classmethod
    def parse(cls, spec: str) -> BackboneSpec:
        """Parse and check ``ARCH:SOURCE``; raises ConfigError naming the problem.

        The architecture must be known to open_clip (or be ``affstream-tiny``); a tag
        must be one open_clip lists for that architecture. A local path is only checked
        for existence at load time.
        """
        text = (spec or "").strip()
        arch, sep, source = text.partition(":")
        arch, source = arch.strip().replace("/", "-"), source.strip()
        if not sep or not arch or not source:
            raise ConfigError(
                f"backbone spec '{spec}' must be ARCH:SOURCE, e.g. ViT-L-14:openai, "
                "ViT-B-32:/path/to/weights.safetensors or ViT-B-32:random"
            )
        known = _known_architectures()
        canonical = known.get(arch.lower())
        if canonical is None:
            raise ConfigError(
                f"backbone spec '{spec}': unknown CLIP architecture '{arch}'"
                f"{_close_matches(arch, known.values())}; list the known ones with "
                "python -c \"import open_clip; print(open_clip.list_models())\""
            )
        if source.lower() == RANDOM_SOURCE:
            return cls(canonical, RANDOM_SOURCE)
        if _looks_like_path(source):
            return cls(canonical, source)
        return cls(canonical, _check_tag(spec, canonical, source))


def _close_matches(word: str, candidates: Any) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _check_tag(spec: str, arch: str, tag: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    clean = tag.lower().replace("-", "_")
    for known in tags:
        if known.lower() == clean:
            return known
    listed = ", ".join(tags) if tags else "none"
    raise ConfigError(
        f"backbone spec '{spec}': '{tag}' is not an open_clip pretrained tag for {arch} "
        f"(known tags: {listed}); give ARCH:/path/to/weights for a local file or ARCH:random"
    )


class Backbone:
    """A frozen open_clip model on a device, ready to embed face crops and prompts.

    Attributes:
        spec:         the parsed spec.
        model:        the open_clip model, eval mode, requires_grad False, on ``device``.
        device:       torch.device the model lives on.
        image_size:   S, the square input side in pixels.
        mean, std:    per-channel RGB normalisation (3-tuples, for pixel values in [0, 1]).
        feature_dim:  D, width of the projected (joint image/text) embedding.
        meaningful:   False for random weights.
        sha256:       hex digest of the local weights file when known, else None.
        card:         the backbone card of a checkpoint written by ``affstream finetune
                      image`` (:mod:`affstream.embed.card`), else None.
        precision:    "fp32", "bf16" or "fp16": the compute dtype used by ``encode_*``.
        batch_size:   images per forward pass inside ``encode_images``.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: torch.nn.Module,
        device: torch.device,
        *,
        batch_size: int,
        precision: str,
        sha256: str | None,
        card: dict[str, Any] | None = None,
    ) -> None:
        import open_clip

        self.spec = spec
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.sha256 = sha256
        self.card = card
        self.meaningful = spec.kind != "random" and (card is None or bool(card["meaningful"]))
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        if size[0] != size[1]:
            raise WeightsError(f"backbone {spec}: non-square input {size} is not supported")
        self.image_size = int(size[0])
        self.mean = tuple(float(v) for v in cfg["mean"])
        self.std = tuple(float(v) for v in cfg["std"])
        self.feature_dim = int(open_clip.get_model_config(spec.arch)["embed_dim"])
        self._tokenizer = None

    def __repr__(self) -> str:
        return (
            f"Backbone({self.spec}, D={self.feature_dim}, S={self.image_size}, "
            f"device={self.device}, precision={self.precision})"
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def encode_images(self, crops: torch.Tensor) -> torch.Tensor:
        """Embed normalised crops.

        crops: (N, 3, S, S) float32, normalised with ``mean``/``std``, on ``device``.
        Returns (N, D) float32 L2-normalised image embeddings on ``device``; processed in
        chunks of ``batch_size``. N may be 0.
        """
        if crops.ndim != 4 or tuple(crops.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"expected crops of shape (N, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(crops.shape)}"
            )
        if crops.shape[0] == 0:
            return torch.zeros((0, self.feature_dim), dtype=torch.float32, device=self.device)
        crops = crops.to(self.device, non_blocking=True)
        outputs = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, crops.shape[0], self.batch_size):
                feats = self.model.encode_image(crops[start : start + self.batch_size])
                outputs.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(outputs)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed prompts with the model's text tower.

        texts: M strings (tokenised with open_clip's tokenizer for the architecture,
        truncated to its context length). Returns (M, D) float32, L2-normalised, on
        ``device``.
        """
        texts = list(texts)
        if not texts:
            return torch.zeros((0, self.feature_dim), dtype=torch.float32, device=self.device)
        if self._tokenizer is None:
            import open_clip

            with open_clip_logs():
                self._tokenizer = open_clip.get_tokenizer(self.spec.arch)
        outputs = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), self.batch_size):
                tokens = self._tokenizer(texts[start : start + self.batch_size]).to(self.device)
                feats = self.model.encode_text(tokens)
                outputs.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(outputs)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature exp(logit_scale) (100 for OpenAI weights)."""
        scale = getattr(self.model, "logit_scale", None)
        if scale is None:
            return 100.0
        return float(scale.detach().float().exp().clamp(max=100.0))

    def identity(self) -> dict[str, Any]:
        """What identifies these features, for the JSON run report."""
        return {
            "spec": str(self.spec),
            "arch": self.spec.arch,
            "source": self.spec.source,
            "feature_dim": self.feature_dim,
            "image_size": self.image_size,
            "sha256": self.sha256,
            "meaningful": self.meaningful,
            **({"fine_tuned_from": self.card["base"]} if self.card else {}),
        }


def load_backbone(
    spec: str,
    device: str | torch.device = "cpu",
    *,
    batch_size: int = 256,
    precision: str = "auto",
) -> Backbone:
    """Load the backbone named by ``spec`` onto ``device`` (frozen, eval mode).

    device:     "cpu", "cuda", "cuda:N", "auto" or a torch.device.
    batch_size: crops per forward pass in ``encode_images`` (> 0).
    precision:  "auto" (bf16 autocast on CUDA when supported, else fp16; fp32 on CPU),
                "fp32", "bf16" or "fp16".

    Raises ConfigError for a bad spec or option, WeightsError when the weights cannot be
    found, downloaded or loaded.
    """
    parsed = BackboneSpec.parse(spec)
    torch_device = _as_device(device)
    if int(batch_size) <= 0:
        raise ConfigError(f"embed batch_size must be positive, got {batch_size}")
    resolved = _resolve_precision(precision, torch_device)
    card = None
    if parsed.kind == "random":
        model, sha = _create_random(parsed), None
    elif parsed.kind == "file":
        model, sha, card = _create_from_file(parsed)
    else:
        model, sha = _create_pretrained(parsed)
    model = model.to(torch_device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    backbone = Backbone(
        parsed, model, torch_device, batch_size=int(batch_size), precision=resolved, sha256=sha, card=card
    )
    log.info("loaded backbone %r", backbone)
    return backbone


def _as_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from ..runtime import resolve_device

    return resolve_device(str(device))


def _resolve_precision(precision: str, device: torch.device) -> str:
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _create_random(spec: BackboneSpec) -> torch.nn.Module:
    """Seeded random init on the CPU; the caller's global RNG state is left untouched."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        with open_clip_logs():
            return open_clip.create_model(spec.arch, pretrained=None, device="cpu")


def _create_from_file(spec: BackboneSpec) -> tuple[torch.nn.Module, str, dict[str, Any] | None]:
    """The model from a local weights file, its sha256, and its backbone card (a
    checkpoint of ``affstream finetune image``; None for other weights)."""
    import open_clip

    from .card import check_card_arch, read_backbone_card

    path = Path(spec.source).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"backbone weights '{spec.source}' not found; pass --backbone {spec.arch}:/path/to/"
            "open_clip_weights (.safetensors, .bin, .pt or .pth)"
        )
    card = read_backbone_card(path) if path.suffix == ".safetensors" else None
    if card is not None:
        check_card_arch(card, spec.arch, path)
    try:
        with open_clip_logs():
            model = open_clip.create_model(spec.arch, pretrained=str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - open_clip raises bare RuntimeError/KeyError/... for bad files
        raise WeightsError(
            f"{path}: cannot load as open_clip weights for {spec.arch} ({_load_problem(exc)}); "
            "check that the file matches the architecture"
        ) from None
    return model, sha256_file_cached(path), card


def _load_problem(exc: BaseException) -> str:
    """torch's multi-line state-dict mismatch summarised in one line (counts and a first
    key of each kind); any other error's first line."""
    import re

    text = str(exc)
    if not text.startswith("Error(s) in loading state_dict"):
        return first_line(exc)
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: (.*)")):
        match = re.search(pattern, text)
        if match:
            keys = re.findall(r'"([^"]+)"', match.group(1))
            if keys:
                parts.append(f"{len(keys)} {label} key(s), e.g. {keys[0]}")
    mismatched = re.findall(r"size mismatch for ([^:]+):", text)
    if mismatched:
        parts.append(f"{len(mismatched)} tensor(s) of another shape, e.g. {mismatched[0]}")
    return "; ".join(parts) or first_line(exc)


def _create_pretrained(spec: BackboneSpec) -> tuple[torch.nn.Module, str | None]:
    """Find the tag's weights in the local cache, else download them, then build."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.arch, spec.source)
    checkpoint = cached_checkpoint(cfg)
    if checkpoint is None:
        if offline_requested():
            reason = "AFFSTREAM_OFFLINE is set"
            raise WeightsError(missing_weights_message(spec, reason, offline=True))
        reason = hub_unreachable_reason()
        if reason:
            raise WeightsError(missing_weights_message(spec, reason))
        log.info("downloading %s weights through open_clip (first use)", spec)
        try:
            with open_clip_logs():
                checkpoint = download_pretrained(cfg)
        except Exception as exc:  # noqa: BLE001 - any download failure means: cannot get the weights
            raise WeightsError(missing_weights_message(spec, first_line(exc))) from None
    try:
        # The file is cached now: build without touching the network.
        with hf_offline(), open_clip_logs():
            model = open_clip.create_model(spec.arch, pretrained=spec.source, device="cpu")
    except Exception as exc:  # noqa: BLE001 - a corrupt cached file fails in open_clip in many ways
        raise WeightsError(
            f"backbone {spec}: cached weights {checkpoint} cannot be loaded ({first_line(exc)}); "
            "delete that file and run again to download it afresh"
        ) from None
    return model, checkpoint_sha256(Path(checkpoint))


