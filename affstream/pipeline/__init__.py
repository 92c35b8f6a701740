"""The pipeline: its models loaded once, the steps between them, and the schedules that
drive those steps.

    stages = load_stages(config)          # detector, backbone, head on one device
    # steps, shared by every schedule:
    #   pipeline.faces    frames -> tracked, aligned, embedded faces (FaceChunk)
    #   pipeline.predict  FaceChunk -> head outputs -> rows (per-frame, or windows per track)
    # schedules (drivers over the same steps):
    #   pipeline.offline  one file, batched for throughput; many inputs with a failure policy

A live schedule (``affstream stream``) is another driver beside ``offline`` over the same
steps: it batches whatever frames have arrived instead of fixed counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import PipelineConfig
from ..errors import ConfigError
from ..runtime import resolve_device

if TYPE_CHECKING:  # torch and the models are imported only when stages are loaded
    import torch

    from ..detect.mtcnn import MTCNNDetector
    from ..embed.backbone import Backbone
    from ..heads.base import AffectHead

log = logging.getLogger("affstream")


@dataclass(eq=False)
class Stages:
    """Loaded models of one pipeline, all on ``device``.

    head is None when loaded with ``with_head=False`` (feature extraction only);
    head_identity is the head's entry of the JSON report (name, kind, sha256, path).
    """

    config: PipelineConfig
    device: torch.device
    detector: MTCNNDetector
    backbone: Backbone
    head: AffectHead | None
    head_identity: dict[str, Any]

    @property
    def meaningful(self) -> bool:
        """False when any model producing the outputs has random weights."""
        head_ok = self.head is None or self.head.card.meaningful
        return bool(self.backbone.meaningful and head_ok)


def check_config(config: PipelineConfig) -> None:
    """Checks that need more than the config's own types and ranges, made before any
    model loads: the device exists, the backbone names a known architecture and tag
    (or a weights file that exists), the head is ``zeroshot`` or an existing checkpoint.

    Raises a one-line ConfigError naming the dotted option (``device``,
    ``embed.backbone``, ``head.head``).
    """
    from ..embed.backbone import BackboneSpec

    for option, check in (
        ("device", lambda: resolve_device(config.device)),
        ("embed.backbone", lambda: BackboneSpec.parse(config.embed.backbone)),
        ("head.head", lambda: _check_head_spec(config.head.head)),
    ):
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from None


def _check_head_spec(spec: str) -> None:
    if spec == "zeroshot":
        return
    path = Path(spec)
    if not (path.exists() or path.with_suffix(".json").exists() or path.with_suffix(".safetensors").exists()):
        raise ConfigError(f"head '{spec}' not found: give 'zeroshot' or the path of a trained head "
                          "(.safetensors with its .json card)")


def load_head(spec: str, backbone: Backbone, device: torch.device) -> tuple[AffectHead, dict[str, Any]]:
    """``zeroshot`` (text head built from ``backbone``) or a checkpoint path.

    A checkpoint must have been trained on features of the same backbone: its card's
    ``backbone`` and ``feature_dim`` are checked against the pipeline's.
    """
    from ..heads.base import load_head_checkpoint

    if spec == "zeroshot":
        from ..heads.text import zero_shot_head

        head = zero_shot_head(backbone).to(device).eval()
        return head, {"name": "zeroshot", "kind": head.card.kind, "sha256": None, "path": None}
    _check_head_spec(spec)
    path = Path(spec)
    head, sha256 = load_head_checkpoint(path, device)
    card = head.card
    if card.backbone != str(backbone.spec) or card.feature_dim != backbone.feature_dim:
        raise ConfigError(
            f"{spec}: head was trained on {card.backbone} features (dim {card.feature_dim}) but the "
            f"pipeline uses {backbone.spec} (dim {backbone.feature_dim}); pass --backbone {card.backbone}"
        )
    return head, {"name": card.name, "kind": card.kind, "sha256": sha256, "path": str(path)}


def load_stages(config: PipelineConfig, *, backbone: Backbone | None = None, with_head: bool = True) -> Stages:
    """Load detector, backbone and head for ``config`` on its device.

    ``backbone`` may be passed in to share one loaded backbone between pipelines;
    ``with_head=False`` skips the head (feature extraction only; ``head`` is None).
    The options are checked first (:func:`check_config`), before any model loads.
    """
    from ..detect.mtcnn import MTCNNDetector
    from ..embed.backbone import load_backbone

    if backbone is None:
        check_config(config if with_head else config.with_overrides(head={"head": "zeroshot"}))
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


__all__ = ["Stages", "check_config", "load_head", "load_stages"]
