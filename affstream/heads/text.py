"""Text-driven head: CLIP's own text encoder as the classifier (CLEF-style, zero-shot).

Each expression class is represented by the mean CLIP text embedding of a prompt
ensemble (templates x descriptions of what the face does); each action unit by two such
embeddings, "present" and "absent". With image features f (L2-normalised):

    expr_logits = scale * cos(f, expr_text)                       (..., 8)
    au_logits   = scale * (cos(f, au_pos) - cos(f, au_neg))       (..., 12)
    va          = softmax(expr_logits) @ circumplex coordinates   (..., 2)

``scale`` = exp(logit_scale), initialised from the CLIP model's learned temperature
(100 for OpenAI weights). Without training this is a zero-shot classifier; the same
module can be fine-tuned and saved with ``save_head`` (kind "text").

Prompts are data: ``prompts/expressions.toml`` and ``prompts/action_units.toml``.
Class embeddings are cached per backbone under ``usable_cache_dir()/text`` (not at all
without a usable cache).
"""

from __future__ import annotations

import json
import logging
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, OutputError, WeightsError, first_line
from ..files import atomic_path, sha256_bytes
from ..labels import AU_LABELS, EXPR_LABELS
from .base import AffectHead, HeadCard, HeadOutputs
from .circumplex import circumplex_coords, va_from_probs
from .circumplex import describe as describe_circumplex

if TYPE_CHECKING:
    from ..embed.backbone import Backbone

log = logging.getLogger("affstream")

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
EXPR_FILE = "expressions.toml"
AU_FILE = "action_units.toml"
CACHE_FORMAT = 1
MAX_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class PromptSet:
    """Prompt ensembles ready to embed.

    expr:      8 tuples of prompts, in EXPR_LABELS order.
    au_pos:    12 tuples of "AU present" prompts, in AU_LABELS order.
    au_neg:    12 tuples of "AU absent" prompts.
    file_sha256: {file name: sha256 of its bytes}, identifying the prompt wording.
    """

    expr: tuple[tuple[str, ...], ...]
    au_pos: tuple[tuple[str, ...], ...]
    au_neg: tuple[tuple[str, ...], ...]
    file_sha256: dict[str, str]


def load_prompts(prompt_dir: str | Path | None = None) -> PromptSet:
    """Read and check ``expressions.toml`` and ``action_units.toml``.

    prompt_dir: folder holding both files (default: the ones shipped with affstream).
    Raises ConfigError naming the file and the problem.
    """
    folder = Path(prompt_dir) if prompt_dir is not None else PROMPT_DIR
    expr_data, expr_sha = _read_toml(folder / EXPR_FILE)
    au_data, au_sha = _read_toml(folder / AU_FILE)
    expr_path, au_path = folder / EXPR_FILE, folder / AU_FILE

    templates = _templates(expr_data, expr_path)
    classes = _table(expr_data, "classes", expr_path, EXPR_LABELS)
    expr = tuple(
        _expand(templates, _phrases(classes[label], "descriptions", expr_path, label))
        for label in EXPR_LABELS
    )
    au_templates = _templates(au_data, au_path)
    units = _table(au_data, "units", au_path, AU_LABELS)
    au_pos, au_neg = [], []
    for label in AU_LABELS:
        unit = units[label]
        description = unit.get("description")
        if not isinstance(description, str) or not description.strip():
            raise ConfigError(f"{au_path}: [units.{label}] needs a 'description' string")
        positive = [description, *_phrases(unit, "positive", au_path, label)]
        au_pos.append(_expand(au_templates, positive))
        au_neg.append(_expand(au_templates, _phrases(unit, "negative", au_path, label)))
    return PromptSet(expr, tuple(au_pos), tuple(au_neg), {EXPR_FILE: expr_sha, AU_FILE: au_sha})


@dataclass(frozen=True)
class PromptParts:
    """The prompt files split the way CLEF uses them (same files as :func:`load_prompts`).

    Per class, tuples of full prompts (every template applied to each phrase):

    expr_names:        8 tuples: templates x the first description (it names the expression).
    expr_descriptions: 8 tuples: templates x the other descriptions (what the face does).
    au_names:          12 tuples: templates x the AU's ``description``.
    au_descriptions:   12 tuples: templates x its ``positive`` phrases.
    au_absent:         12 tuples: templates x its ``negative`` phrases.
    file_sha256:       {file name: sha256 of its bytes}.
    """

    expr_names: tuple[tuple[str, ...], ...]
    expr_descriptions: tuple[tuple[str, ...], ...]
    au_names: tuple[tuple[str, ...], ...]
    au_descriptions: tuple[tuple[str, ...], ...]
    au_absent: tuple[tuple[str, ...], ...]
    file_sha256: dict[str, str]


def load_prompt_parts(prompt_dir: str | Path | None = None) -> PromptParts:
    """Read the prompt files (checked as by :func:`load_prompts`) into label-name and
    description prompts per class. An expression with a single description has no
    description prompts (an empty tuple). Raises ConfigError naming the file."""
    folder = Path(prompt_dir) if prompt_dir is not None else PROMPT_DIR
    expr_path, au_path = folder / EXPR_FILE, folder / AU_FILE
    expr_data, expr_sha = _read_toml(expr_path)
    au_data, au_sha = _read_toml(au_path)
    templates = _templates(expr_data, expr_path)
    classes = _table(expr_data, "classes", expr_path, EXPR_LABELS)
    phrases = [_phrases(classes[label], "descriptions", expr_path, label) for label in EXPR_LABELS]
    au_templates = _templates(au_data, au_path)
    units = _table(au_data, "units", au_path, AU_LABELS)
    au_names, au_desc, au_absent = [], [], []
    for label in AU_LABELS:
        description = units[label].get("description")
        if not isinstance(description, str) or not description.strip():
            raise ConfigError(f"{au_path}: [units.{label}] needs a 'description' string")
        au_names.append(_expand(au_templates, [description.strip()]))
        au_desc.append(_expand(au_templates, _phrases(units[label], "positive", au_path, label)))
        au_absent.append(_expand(au_templates, _phrases(units[label], "negative", au_path, label)))
    return PromptParts(
        expr_names=tuple(_expand(templates, p[:1]) for p in phrases),
        expr_descriptions=tuple(_expand(templates, p[1:]) for p in phrases),
        au_names=tuple(au_names), au_descriptions=tuple(au_desc), au_absent=tuple(au_absent),
        file_sha256={EXPR_FILE: expr_sha, AU_FILE: au_sha},
    )


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read prompt file ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return data, sha256_bytes(raw)


def _templates(data: dict[str, Any], path: Path) -> tuple[str, ...]:
    templates = data.get("templates")
    if not isinstance(templates, list) or not templates:
        raise ConfigError(f"{path}: needs a non-empty 'templates' list")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ConfigError(f"{path}: every template must be a string with exactly one '{{}}'")
    return tuple(templates)


def _table(data: dict[str, Any], key: str, path: Path, labels: Sequence[str]) -> dict[str, Any]:
    table = data.get(key)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: needs a [{key}.NAME] table per label")
    missing = [label for label in labels if not isinstance(table.get(label), dict)]
    extra = sorted(set(table) - set(labels))
    if missing or extra:
        raise ConfigError(
            f"{path}: [{key}] must list exactly {', '.join(labels)} "
            f"(missing {missing}, unknown {extra})"
        )
    return table


def _phrases(entry: dict[str, Any], key: str, path: Path, label: str) -> list[str]:
    phrases = entry.get(key)
    valid = isinstance(phrases, list) and bool(phrases)
    if not valid or not all(isinstance(p, str) and p.strip() for p in phrases):
        raise ConfigError(f"{path}: '{key}' of {label} must be a non-empty list of strings")
    return [p.strip() for p in phrases]


def _expand(templates: Sequence[str], phrases: Sequence[str]) -> tuple[str, ...]:
    return tuple(template.format(phrase) for phrase in phrases for template in templates)


def _embedding_shapes(dim: int) -> dict[str, tuple[int, int]]:
    return {
        "expr_text": (len(EXPR_LABELS), dim),
        "au_pos": (len(AU_LABELS), dim),
        "au_neg": (len(AU_LABELS), dim),
    }


class TextHead(AffectHead):
    """Cosine-similarity head over fixed text embeddings (kind "text").

    Buffers: expr_text (8, D), au_pos (12, D), au_neg (12, D), all L2-normalised;
    va_coords (8, 2) circumplex placement. Parameter: logit_scale, a 0-d tensor holding
    log(scale) as in CLIP; the scale used is exp(logit_scale) clamped to at most 100.
    """

    def __init__(
        self,
        card: HeadCard,
        expr_text: torch.Tensor,
        au_pos: torch.Tensor,
        au_neg: torch.Tensor,
        *,
        logit_scale: float = 100.0,
        va_coords: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        dim = card.feature_dim
        for name, tensor in (("expr_text", expr_text), ("au_pos", au_pos), ("au_neg", au_neg)):
            expected = _embedding_shapes(dim)[name]
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")
        if not logit_scale > 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale}")
        self.card = card
        self.register_buffer("expr_text", F.normalize(expr_text.detach().float(), dim=-1))
        self.register_buffer("au_pos", F.normalize(au_pos.detach().float(), dim=-1))
        self.register_buffer("au_neg", F.normalize(au_neg.detach().float(), dim=-1))
        coords = circumplex_coords() if va_coords is None else va_coords.detach().float()
        self.register_buffer("va_coords", coords.to(self.expr_text.device))
        log_scale = torch.tensor(math.log(float(logit_scale)), device=self.expr_text.device)
        self.logit_scale = nn.Parameter(log_scale)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> HeadOutputs:
        """features (N, D) or (B, T, D) -> HeadOutputs with leading shape (N,) or (B, T).

        expr_logits (..., 8), au_logits (..., 12), va (..., 2) in [-1, 1]. Features are
        L2-normalised here (a no-op for backbone output). ``mask`` is accepted for the
        windowed interface and ignored: every frame is scored on its own.
        """
        width = self.expr_text.shape[1]
        if features.shape[-1] != width:
            raise ValueError(f"features have width {features.shape[-1]}, head expects {width}")
        feats = F.normalize(features.float(), dim=-1)
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        expr_logits = scale * (feats @ self.expr_text.T)
        au_logits = scale * (feats @ self.au_pos.T - feats @ self.au_neg.T)
        va = va_from_probs(expr_logits.softmax(dim=-1), self.va_coords)
        return HeadOutputs(va=va, expr_logits=expr_logits, au_logits=au_logits)


def _class_embeddings(backbone: Backbone, groups: Sequence[Sequence[str]]) -> torch.Tensor:
    """One text-encoder pass over all prompts; per group the re-normalised mean, (G, D)."""
    prompts = [prompt for group in groups for prompt in group]
    sizes = torch.tensor([len(group) for group in groups])
    owner = torch.repeat_interleave(torch.arange(len(groups)), sizes)
    embedded = backbone.encode_texts(prompts).float()
    sums = embedded.new_zeros((len(groups), embedded.shape[1]))
    sums.index_add_(0, owner.to(embedded.device), embedded)
    return F.normalize(sums, dim=-1)


def _cache_key(backbone: Backbone, prompts: PromptSet) -> dict[str, Any]:
    from importlib.metadata import version

    key: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "backbone": str(backbone.spec),
        "sha256": backbone.sha256,
        "precision": backbone.precision,
        "prompts": prompts.file_sha256,
        "open_clip": version("open_clip_torch"),  # open_clip.__version__ exists only from 2.25
    }
    if not backbone.meaningful:  # random weights depend on the init code too
        key["torch"] = torch.__version__
    return key


def _cache_path(backbone: Backbone, key: dict[str, Any]) -> Path | None:
    """The cache file for ``key``, or None if there is no usable cache (already warned)."""
    from ..files import usable_cache_dir

    cache = usable_cache_dir()
    if cache is None:
        return None
    spec = backbone.spec
    source = Path(spec.source).stem if spec.kind == "file" else spec.source
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{spec.arch}-{source}")[:80]
    digest = sha256_bytes(json.dumps(key, sort_keys=True).encode("utf-8"))[:16]
    return cache / "text" / f"{safe_name}-{digest}.safetensors"


def _read_cache(path: Path | None, dim: int) -> dict[str, torch.Tensor] | None:
    """The cached tensors at ``path``; None if there are none (no cache, no file, bad file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path is None or not path.is_file():
        return None
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        log.warning("ignoring unreadable text-embedding cache %s (%s)", path, exc)
        return None
    shapes = {**_embedding_shapes(dim), "logit_scale": ()}
    if any(name not in tensors or tuple(tensors[name].shape) != shapes[name] for name in shapes):
        log.warning("ignoring text-embedding cache %s with unexpected contents", path)
        return None
    return tensors


def _write_cache(path: Path | None, tensors: dict[str, torch.Tensor], key: dict[str, Any]) -> None:
    """Store ``tensors`` at ``path`` (atomically); without a cache (None) nothing. Never
    raises for the cache: a failed write (a full disk included) is a warning."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if path is None:
        return
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # concurrent runs never share a temporary name
            save_file(cpu, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
    except (OSError, OutputError, SafetensorError) as exc:
        log.warning("could not write text-embedding cache %s (%s)", path, exc)


def zero_shot_head(backbone: Backbone, *, prompt_dir: str | Path | None = None) -> TextHead:
    """Build the zero-shot text head for ``backbone`` from the prompt ensembles.

    Class embeddings come from the backbone's own text encoder (every template x
    description prompt embedded, averaged per class, re-normalised) and are cached in
    ``usable_cache_dir()/text/{name}-{hash}.safetensors`` (no caching without a usable
    cache); the hash covers the backbone spec,
    its weights' sha256, the precision, the prompt files' bytes and the open_clip
    version, so a later build with the same inputs does not run the text encoder.
    Returns a TextHead in eval mode on ``backbone.device``.
    """
    prompts = load_prompts(prompt_dir)
    key = _cache_key(backbone, prompts)
    path = _cache_path(backbone, key)
    tensors = _read_cache(path, backbone.feature_dim)
    if tensors is None:
        n_au = sum(map(len, prompts.au_pos)) + sum(map(len, prompts.au_neg))
        log.info("embedding %d expression and %d AU prompts with %s",
                 sum(map(len, prompts.expr)), n_au, backbone.spec)
        tensors = {
            "expr_text": _class_embeddings(backbone, prompts.expr),
            "au_pos": _class_embeddings(backbone, prompts.au_pos),
            "au_neg": _class_embeddings(backbone, prompts.au_neg),
            "logit_scale": torch.tensor(backbone.logit_scale, dtype=torch.float32),
        }
        _write_cache(path, tensors, key)
    else:
        log.debug("text embeddings from cache %s", path)
    scale = float(tensors["logit_scale"])
    card = HeadCard(
        name="zeroshot",
        kind="text",
        backbone=str(backbone.spec),
        feature_dim=backbone.feature_dim,
        tasks=("expr", "au", "va"),
        causal=True,
        meaningful=backbone.meaningful,
        config={
            "method": "CLEF-style zero-shot: cosine similarity to prompt-ensemble text embeddings",
            "prompt_sha256": dict(prompts.file_sha256),
            "prompt_counts": {
                "expr": [len(group) for group in prompts.expr],
                "au_present": [len(group) for group in prompts.au_pos],
                "au_absent": [len(group) for group in prompts.au_neg],
            },
            "logit_scale_init": scale,
            "va_mapping": describe_circumplex(),
        },
    )
    head = TextHead(
        card,
        tensors["expr_text"].to(backbone.device),
        tensors["au_pos"].to(backbone.device),
        tensors["au_neg"].to(backbone.device),
        logit_scale=scale,
    )
    return head.to(backbone.device).eval()


def build_from_card(
    card: HeadCard, state: dict[str, torch.Tensor], *, source: str | None = None
) -> TextHead:
    """Rebuild a (possibly fine-tuned) TextHead saved with ``save_head``.

    state: the safetensors state dict (expr_text, au_pos, au_neg, va_coords, logit_scale).
    source: names the card in errors. The card has no architecture (its ``config`` is
    descriptive); its fields are checked by ``HeadCard.validate``.
    Raises WeightsError if tensors are missing or do not match the card's feature_dim.
    """
    source = source or f"text head '{card.name}'"
    card.validate(source)
    needed = ("expr_text", "au_pos", "au_neg", "va_coords", "logit_scale")
    missing = [name for name in needed if name not in state]
    if missing:
        raise WeightsError(f"{source}: checkpoint lacks tensor(s) {missing}")
    try:
        head = TextHead(
            card, state["expr_text"], state["au_pos"], state["au_neg"], va_coords=state["va_coords"]
        )
        head.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise WeightsError(
            f"{source}: checkpoint does not match its card ({first_line(exc)})"
        ) from None
    return head
