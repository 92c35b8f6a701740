"""Fine-tuned backbone checkpoints: an open_clip state dict plus a card beside it.

A backbone written by ``affstream finetune image`` is two files:

* ``NAME.safetensors``: the whole open_clip model's state dict (the fine-tuned image
  tower, the text tower and ``logit_scale`` as they were), loadable by open_clip itself
  (``open_clip.create_model(ARCH, pretrained="NAME.safetensors")``);
* ``NAME.json``, the *backbone card*: format ``affstream-backbone``, the architecture,
  the backbone it was fine-tuned from (spec and sha256), whether its features mean
  anything (a random base never does), the training configuration, the data it was
  trained on and its validation metrics.

It is named like any local weights file, ``--backbone ARCH:/path/NAME.safetensors``;
:func:`affstream.embed.backbone.load_backbone` reads the card when there is one and
refuses an architecture that does not match it. The weights are published first and
the card last, each atomically, so a card never describes weights that are not there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, WeightsError, first_line

CARD_FORMAT = "affstream-backbone"
CARD_VERSION = 1
MAX_CARD_BYTES = 4 * 1024 * 1024


def backbone_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, card) of a backbone checkpoint given as its weights file or its stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def read_backbone_card(weights: str | Path) -> dict[str, Any] | None:
    """The card beside ``weights`` (``NAME.json`` for ``NAME.safetensors``), or None when
    there is none or the JSON beside it is not a backbone card (weights from elsewhere).

    Raises WeightsError for a card that claims the format but cannot be used (not JSON,
    too large, newer version, fields missing).
    """
    _, card = backbone_paths(weights)
    if not card.is_file():
        return None
    try:
        size = card.stat().st_size
        if size > MAX_CARD_BYTES:
            return None
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
        return None
    version = data.get("version")
    if not isinstance(version, int) or version > CARD_VERSION:
        raise WeightsError(
            f"{card}: backbone card version {version!r} is newer than this affstream reads ({CARD_VERSION}); "
            "upgrade affstream"
        )
    for key, kind in (("arch", str), ("base", str), ("meaningful", bool)):
        if not isinstance(data.get(key), kind):
            raise WeightsError(f"{card}: backbone card has no valid '{key}'; write it again with affstream finetune image")
    return data


def check_card_arch(card: dict[str, Any], arch: str, weights: Path) -> None:
    """WeightsError unless the card's architecture is ``arch`` (open_clip spelling)."""
    if card["arch"] != arch:
        raise WeightsError(
            f"{weights}: fine-tuned from {card['base']} (architecture {card['arch']}), not {arch}; "
            f"pass --backbone {card['arch']}:{weights}"
        )


def write_backbone(state: dict[str, Any], out: str | Path, card: dict[str, Any]) -> Path:
    """Write ``state`` (tensors on any device) as OUT.safetensors, then ``card`` as
    OUT.json, each atomically; returns the weights path. OutputError if either cannot
    be written (nothing is left under the final names then, except a previous complete
    checkpoint)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from ..files import atomic_path, atomic_write_text, make_folder, output_error

    weights, card_path = backbone_paths(out)
    make_folder(weights.parent)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    full = {"format": CARD_FORMAT, "version": CARD_VERSION, **card}
    try:
        text = json.dumps(full, indent=1, sort_keys=True, allow_nan=False)
    except ValueError as exc:
        raise ConfigError(f"{card_path}: backbone card is not plain JSON ({first_line(exc)})") from None
    try:
        with atomic_path(weights) as tmp:
            save_file(tensors, str(tmp), metadata={"affstream": CARD_FORMAT})
    except (OSError, SafetensorError) as exc:
        raise output_error(weights, exc) from None
    atomic_write_text(card_path, text + "\n")
    return weights
