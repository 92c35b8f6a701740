"""Loading the stages of a pipeline once, so every video (file, corpus or live) reuses them.

The schedulers live elsewhere and only wire these stages together:
:mod:`affstream.faces` (detect/track/align/embed) and :mod:`affstream.predict` (head
and row order). :mod:`affstream.api` runs them over one video.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import PipelineConfig
from .runtime import resolve_device
from .errors import ConfigError
from .heads.base import AffectHead, load_head_checkpoint

log = logging.getLogger("affstream")


@dataclass(eq=False)
class Stages:
    """Loaded models of one pipeline: detector, backbone, head (all on ``device``)."""

    config: PipelineConfig
    device: torch.device
    detector: Any  # affstream.detect.mtcnn.MTCNNDetector
    backbone: Any  # affstream.embed.backbone.Backbone
    head: AffectHead | None
    head_identity: dict[str, Any]

    @property
    def meaningful(self) -> bool:
        """False when any model producing the outputs has random weights."""
        head_ok = self.head is None or self.head.card.meaningful
        return bool(self.backbone.meaningful and head_ok)


def load_head(spec: str, backbone, device: torch.device) -> tuple[AffectHead, dict[str, Any]]:
    """``zeroshot`` (text head built from ``backbone``) or a checkpoint path.

    A checkpoint must have been trained on features of the same backbone: its card's
    ``backbone`` and ``feature_dim`` are checked against the pipeline's.
    """
    if spec == "zeroshot":
        from .heads.text import zero_shot_head

        head = zero_shot_head(backbone).to(device).eval()
        return head, {"name": "zeroshot", "kind": head.card.kind, "sha256": None, "path": None}
    path = Path(spec)
    if not (path.exists() or path.with_suffix(".json").exists() or path.with_suffix(".safetensors").exists()):
        raise ConfigError(f"head '{spec}' not found: give 'zeroshot' or the path of a trained head (.safetensors with its .json card)")
    head, sha256 = load_head_checkpoint(path, device)
    card = head.card
    if card.backbone != str(backbone.spec) or card.feature_dim != backbone.feature_dim:
        raise ConfigError(
            f"{spec}: head was trained on {card.backbone} features (dim {card.feature_dim}) but the "
            f"pipeline uses {backbone.spec} (dim {backbone.feature_dim}); pass --backbone {card.backbone}"
        )
    return head, {"name": card.name, "kind": card.kind, "sha256": sha256, "path": str(path)}


def load_stages(config: PipelineConfig, *, backbone=None, with_head: bool = True) -> Stages:
    """Load detector, backbone and head for ``config`` on its device.

    ``backbone`` may be passed in to share one loaded backbone between pipelines;
    ``with_head=False`` skips the head (feature extraction only; ``head`` is None).
    """
    from .detect.mtcnn import MTCNNDetector
    from .embed.backbone import load_backbone

    device = resolve_device(config.device)
    detector = MTCNNDetector(config.detect, device)
    if backbone is None:
        backbone = load_backbone(
            config.embed.backbone,
            device,
            batch_size=config.embed.batch_size,
            precision=config.embed.precision,
        )
    head, identity = None, {"name": None}
    if with_head:
        head, identity = load_head(config.head.head, backbone, device)
    log.info("pipeline %s on %s: backbone %s, head %s", config.name, device, backbone.spec, identity["name"])
    return Stages(config, device, detector, backbone, head, identity)
