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

from ..errors import ConfigError, OutputError, WeightsError, first_line

CARD_FORMAT = "affstream-backbone"
CARD_VERSION = 1
MAX_CARD_BYTES = 4 * 1024 * 1024


def backbone_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, card) of a backbone checkpoint given as its weights file or its stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    # append, never replace: "expr.v2" is the stem of "expr.v2.safetensors"
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def read_backbone_card(weights: str | Path) -> dict[str, Any] | None:
    """The card beside ``weights`` (``NAME.json`` for ``NAME.safetensors``), or None when
    there is none or the JSON beside it is not a backbone card (weights from elsewhere).

    Raises WeightsError for a card that claims the format but cannot be used (not JSON,
    too large, newer version, fields missing), and for weights written by
    :func:`write_backbone` (their safetensors header says so) whose card is missing or
    unreadable: without it the architecture check and the "meaningful" flag are lost.
    """
    _, card = backbone_paths(weights)
    declared = _declares_card(Path(weights))
    restore = f"restore {card.name} beside it (written by affstream finetune) or use other weights"
    if not card.is_file():
        if declared:
            raise WeightsError(f"{weights}: a fine-tuned backbone whose card {card} is missing; {restore}")
        return None
    try:
        size = card.stat().st_size
        if size > MAX_CARD_BYTES:
            raise ValueError(f"{size:,} bytes is too large for a backbone card")
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        if declared:
            raise WeightsError(f"{card}: unreadable backbone card ({first_line(exc, 200)}); {restore}") from None
        return None
    if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
        if declared:
            raise WeightsError(f"{card}: not a backbone card; {restore}")
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


def _declares_card(weights: Path) -> bool:
    """True if the safetensors header of ``weights`` says :func:`write_backbone` wrote it."""
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            return (handle.metadata() or {}).get("affstream") == CARD_FORMAT
    except Exception:  # noqa: BLE001 - not a readable safetensors file: open_clip's loading will say so
        return False


def check_not_input(out: str | Path, *inputs: str | Path | None) -> None:
    """ConfigError if the checkpoint ``out`` (either of its two files) is one of ``inputs``
    (a weights file, its card, a manifest): an output never replaces an input."""
    written = {p.resolve() for p in backbone_paths(out)}
    for item in inputs:
        if item is None:
            continue
        path = Path(item).expanduser()
        candidates = {path.resolve()}
        if path.suffix == ".safetensors":
            candidates.add(backbone_paths(path)[1].resolve())
        if written & candidates:
            raise ConfigError(f"{out}: the output would replace the input {path}; choose another -o")


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
    # an older card never describes the new weights: it goes first, and a card that
    # cannot be written takes the new weights with it
    try:
        card_path.unlink(missing_ok=True)
    except OSError as exc:
        raise output_error(card_path, exc, "cannot replace the card") from None
    try:
        with atomic_path(weights) as tmp:
            save_file(tensors, str(tmp), metadata={"affstream": CARD_FORMAT})
    except (OSError, SafetensorError) as exc:
        raise output_error(weights, exc) from None
    try:
        atomic_write_text(card_path, text + "\n")
    except OutputError:
        weights.unlink(missing_ok=True)
        raise
    return weights
