"""CLEF text-driven heads (seed method 3): CLIP's text encoder as the classifier,
fine-tuned on a feature bank.

Every class is the text embedding of prompts built from its label name (the prompt
files of the zero-shot head, :func:`affstream.heads.text.load_prompt_parts`), and is
also described by longer descriptions of what the face does. With L2-normalised image
features ``f`` (B, D), per-class name embeddings ``n_c`` (C, D) (mean over the
templates, re-normalised) and a learnable temperature ``tau`` (``scale = 1 / tau =
exp(logit_scale)``, at most 100):

    EXPR   logits_c = scale * cos(f, n_c)                          softmax over the 8 classes
    AU     logits_j = scale * (cos(f, n_j) - cos(f, a_j))          a sigmoid per AU

(``a_j``: the AU's "absent" prompts, so that a logit of 0, probability 0.5, means the
face looks as much like the AU present as at rest, as in the zero-shot head.)

Fine-tuning loss, lambda = 2::

    L = (lambda * L_IN + L_DN) / 2

- ``L_IN`` (:func:`in_loss_expr`, :func:`in_loss_au`): class-weighted cross-entropy of
  the EXPR logits (weights: inverse class frequency of the training frames), or
  class-weighted BCE of the AU logits (positive weight n_neg / n_pos per AU).
- ``L_DN`` (:func:`dn_loss`): contrastive between each description prompt ``d_i`` of
  class ``c_i`` and the label names: ``-log softmax_c(scale * cos(d_i, n_c))[c_i]``,
  averaged over the description prompts; it pulls every description towards its own
  name and away from the other classes' names.

What is trained (``train=``): ``projection`` (the text projection only; the text
transformer's output is computed once), ``last`` (the last ``blocks`` transformer
blocks, the final LayerNorm and the projection) or ``all`` (the whole text encoder:
token and position embeddings too); each has its own default learning rate
(:data:`DEFAULT_LR`); frozen parts are computed once and cached. The image encoder
is never touched: the image features come
from the bank.

The result is an ordinary head checkpoint of kind "text" (safetensors + card): the
class embeddings computed with the fine-tuned encoder and the learned temperature, so
``annotate``, ``stream`` and ``evaluate`` load it like the zero-shot head, without the
text encoder. The schedule (epochs with a floor of ``min_steps``, warm-up then cosine),
validation after every epoch with the best epoch kept, early stopping, AU thresholds
tuned on held-out training videos, seeding and resuming follow :mod:`.loop`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, OutputError
from ..heads.base import HeadCard, checkpoint_paths
from ..heads.text import MAX_LOGIT_SCALE, PromptParts, TextHead, load_prompt_parts
from ..labels import AU_LABELS, EXPR_LABELS
from .bank import FeatureBank
from .checkpoint import ResumeState, load_resume, remove_resume, resume_dir, save_resume
from .datasets import BatchStream, frame_set
from .evaluate import overall, pool, predict_people, score_with_thresholds
from .loop import au_thresholds_from, check_train_output, lr_factor, publish_head, split_holdout
from .losses import au_loss, au_pos_weights, expr_class_weights

log = logging.getLogger("affstream")

Progress = Callable[[dict[str, Any]], None]

TRAINABLE = ("projection", "last", "all")
DEFAULT_LR: dict[str, float] = {"projection": 1e-2, "last": 1e-4, "all": 1e-5}
"""Learning rate of the text encoder's weights per choice of what is trained: the
fewer weights, the larger the step. The temperature always uses :data:`SCALE_LR`."""
SCALE_LR = 1e-2
LAMBDA = 2.0
"""Weight of L_IN against L_DN (CLEF: 2)."""


# --------------------------------------------------------------------------- losses


def in_loss_expr(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_IN for expressions: class-weighted cross-entropy, a 0-d tensor.

    logits: (N, 8) scale * cosine similarities. target: (N,) int64 class indices.
    weight: (8,) per-class weights or None. Value: ``sum_i w[y_i] * CE_i / sum_i w[y_i]``
    (the weighted mean; the plain mean without weights), in nats.
    """
    w = None if weight is None else weight.to(device=logits.device, dtype=torch.float32)
    return F.cross_entropy(logits.float(), target, weight=w)


def in_loss_au(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """L_IN for action units: class-weighted binary cross-entropy of sigmoid(logits), 0-d.

    logits: (N, 12). target: (N, 12) 0/1. mask: (N, 12) bool, annotated entries.
    pos_weight: (12,) weight of a positive per AU, or None. Value: the mean over the
    frames with an annotated AU of their mean weighted BCE over annotated AUs
    (:func:`affstream.train.losses.au_loss`).
    """
    rows = mask.any(dim=1)
    if not bool(rows.any()):
        return logits.sum() * 0.0
    return au_loss(logits[rows], target[rows], mask[rows], pos_weight).mean()


def dn_loss(descriptions: torch.Tensor, owner: torch.Tensor, names: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """L_DN: contrastive loss between class descriptions and label names, 0-d.

    descriptions: (M, D) L2-normalised description embeddings; owner: (M,) int64 class
    of each; names: (C, D) L2-normalised label-name embeddings; scale: 0-d, 1 / tau.
    Value: ``mean_i -log softmax_c(scale * <d_i, n_c>)[owner_i]``. M = 0 gives 0.
    """
    if descriptions.shape[0] == 0:
        return names.sum() * 0.0
    return F.cross_entropy(scale * descriptions @ names.T, owner)


def clef_loss(l_in: torch.Tensor, l_dn: torch.Tensor, lam: float = LAMBDA) -> torch.Tensor:
    """CLEF's fine-tuning loss ``(lam * L_IN + L_DN) / 2``."""
    return (lam * l_in + l_dn) / 2.0


# --------------------------------------------------------------------------- text model


def text_pool(x: torch.Tensor, tokens: torch.Tensor, pool_type: str, eos_id: int | None = None) -> torch.Tensor:
    """(P, L, width) hidden states -> (P, width): the pooling CLIP's ``encode_text`` does.

    Written here rather than calling ``open_clip.transformer.text_global_pool``, whose
    signature and result changed three times across the supported releases (a tuple up
    to 2.31, a tensor from 2.32, an ``eos_token_id`` argument from 3.x). ``pool_type``:
    ``argmax`` (the end-of-text token, the highest id: OpenAI CLIP), ``eos`` (the first
    ``eos_id``), ``first``, ``last``, anything else: no pooling."""
    rows = torch.arange(x.shape[0], device=x.device)
    if pool_type == "argmax":
        return x[rows, tokens.argmax(dim=-1)]
    if pool_type == "eos":
        if eos_id is None:
            raise ValueError("text pooling 'eos' needs the tokenizer's end-of-text id")
        return x[rows, (tokens == eos_id).int().argmax(dim=-1)]
    if pool_type == "first":
        return x[:, 0]
    if pool_type == "last":
        return x[:, -1]
    return x


@dataclass(frozen=True)
class PromptGroup:
    """Prompts of several classes, flattened: ``tokens`` (P, L) int64, ``owner`` (P,)
    int64 class of each prompt, ``n_classes``."""

    tokens: torch.Tensor
    owner: torch.Tensor
    n_classes: int


def _group(tokenizer, groups: Sequence[Sequence[str]]) -> PromptGroup:
    prompts = [p for g in groups for p in g]
    owner = torch.tensor([c for c, g in enumerate(groups) for _ in g], dtype=torch.int64)
    tokens = tokenizer(prompts) if prompts else torch.zeros((0, 1), dtype=torch.int64)
    return PromptGroup(tokens.long(), owner, len(groups))


GROUPS = ("expr_names", "expr_descriptions", "au_names", "au_descriptions", "au_absent")
"""The prompt groups of :class:`~affstream.heads.text.PromptParts` a CLEF model embeds."""


def prompt_groups(parts: PromptParts, tokenizer) -> dict[str, PromptGroup]:
    """Every group of :data:`GROUPS`, tokenised (one tuple of prompts per class)."""
    return {name: _group(tokenizer, getattr(parts, name)) for name in GROUPS}


class ClefModel(nn.Module):
    """The trainable part of a CLEF head: an open_clip text tower plus the temperature.

    clip: an open_clip CLIP model (its image tower is dropped); groups: name ->
    :class:`PromptGroup` (:func:`prompt_groups`); train: "projection", "last" or "all";
    blocks: trainable transformer blocks for "last"; scale: initial 1 / tau.

    ``class_embeddings(*names)`` -> (C, D) per class the re-normalised mean embedding of
    its prompts in the groups ``names``; ``prompt_embeddings(name)`` -> (P, D)
    normalised embedding per prompt. In "projection" mode the pooled transformer
    outputs are computed once (no gradient) and only the projection runs per step.
    """

    def __init__(self, clip: nn.Module, groups: dict[str, PromptGroup], train: str, blocks: int, scale: float) -> None:
        super().__init__()
        if train not in TRAINABLE:
            raise ConfigError(f"trainable part '{train}': use {', '.join(TRAINABLE)}")
        if getattr(clip, "text_projection", None) is None or not hasattr(clip, "transformer"):
            raise ConfigError(
                "this backbone's text tower has no separate text projection and transformer "
                "(open_clip CLIP models only); use another backbone"
            )
        clip.visual = nn.Identity()  # never used; frees the image tower's memory
        self.clip = clip
        self.train_part = train
        self.groups = groups
        self.logit_scale = nn.Parameter(torch.tensor(math.log(min(float(scale), MAX_LOGIT_SCALE))))
        for p in self.clip.parameters():
            p.requires_grad_(False)
        n_blocks = len(self.clip.transformer.resblocks)
        if train == "last" and not 1 <= blocks <= n_blocks:
            raise ConfigError(f"--blocks {blocks}: the text encoder has {n_blocks} blocks; use 1..{n_blocks}")
        for p in self.trainable_text_parameters(blocks):
            p.requires_grad_(True)
        self._resblocks = list(self.clip.transformer.resblocks)
        self._first_trained = n_blocks - blocks if train == "last" else 0
        self._pooled: dict[str, torch.Tensor] = {}  # "projection": pooled outputs; "last": frozen prefixes

    def trainable_text_parameters(self, blocks: int) -> list[nn.Parameter]:
        """The text encoder's parameters that ``train`` updates (projection first)."""
        clip = self.clip
        proj = clip.text_projection
        params = list(proj.parameters()) if isinstance(proj, nn.Module) else [proj]
        if self.train_part == "projection":
            return params
        params += list(clip.ln_final.parameters())
        if self.train_part == "last":
            for block in list(clip.transformer.resblocks)[-blocks:]:
                params += list(block.parameters())
            return params
        return params + [
            p for n, p in clip.named_parameters() if not n.startswith(("text_projection", "ln_final", "logit_scale", "visual"))
        ]

    def _blocks(self, x: torch.Tensor, blocks) -> torch.Tensor:
        """Run transformer ``blocks`` over (P, L, width) hidden states (batch first)."""
        transformer = self.clip.transformer
        if not getattr(transformer, "batch_first", True):
            x = x.transpose(0, 1)
        for block in blocks:
            x = block(x, attn_mask=self.clip.attn_mask)
        return x.transpose(0, 1) if not getattr(transformer, "batch_first", True) else x

    def _prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """(P, L) tokens -> (P, L, width) hidden states after the frozen blocks ("last"
        mode: every block but the trainable ones; otherwise none)."""
        clip = self.clip
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding.to(cast)
        return self._blocks(x, self._resblocks[: self._first_trained])

    def _pool(self, tokens: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """(P, L) tokens -> (P, width) pooled transformer output, before the projection;
        ``prefix``: the cached output of :meth:`_prefix` for these tokens."""
        clip = self.clip
        x = self._prefix(tokens) if prefix is None else prefix
        x = clip.ln_final(self._blocks(x, self._resblocks[self._first_trained :]))
        return text_pool(x, tokens, clip.text_pool_type, getattr(clip, "text_eos_id", None))

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.clip.text_projection
        return proj(pooled) if isinstance(proj, nn.Module) else pooled @ proj

    def prompt_embeddings(self, name: str) -> torch.Tensor:
        group = self.groups[name]
        device = self.logit_scale.device
        if group.tokens.shape[0] == 0:
            return torch.zeros((0, self._project_width()), device=device)
        tokens = group.tokens.to(device)
        if self.train_part == "projection":
            if name not in self._pooled:
                with torch.no_grad():
                    self._pooled[name] = self._pool(tokens).float()
            pooled = self._pooled[name]
        elif self.train_part == "last":
            if name not in self._pooled:
                with torch.no_grad():
                    self._pooled[name] = self._prefix(tokens)
            pooled = self._pool(tokens, self._pooled[name]).float()
        else:
            pooled = self._pool(tokens).float()
        return F.normalize(self._project(pooled.to(self._proj_dtype())).float(), dim=-1)

    def _proj_dtype(self) -> torch.dtype:
        proj = self.clip.text_projection
        return (proj.weight if isinstance(proj, nn.Module) else proj).dtype

    def _project_width(self) -> int:
        proj = self.clip.text_projection
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def class_embeddings(self, *names: str) -> torch.Tensor:
        embs = [self.prompt_embeddings(n) for n in names]
        emb = torch.cat(embs)
        owner = torch.cat([self.groups[n].owner for n in names]).to(emb.device)
        sums = emb.new_zeros((self.groups[names[0]].n_classes, emb.shape[1])).index_add(0, owner, emb)
        return F.normalize(sums, dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor by name (what a resume state stores)."""
        names = {id(p) for p in self.parameters() if p.requires_grad}
        return {k: v.detach().cpu().clone() for k, v in self.named_parameters() if id(v) in names}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(own[k].device))


def task_logits(model: ClefModel, task: str, feats: torch.Tensor) -> torch.Tensor:
    """(N, D) image features -> (N, C) logits of ``task`` (module docstring)."""
    f = F.normalize(feats.float(), dim=-1)
    names = model.class_embeddings(f"{task}_names")
    if task == "expr":
        return model.scale() * f @ names.T
    return model.scale() * (f @ names.T - f @ model.class_embeddings("au_absent").T)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ClefConfig:
    """A resolved CLEF fine-tuning configuration (stored in the card).

    task: "expr" or "au". train: "projection", "last" or "all"; blocks: transformer
    blocks trained with "last". lr: the text encoder's learning rate (None ->
    DEFAULT_LR[train]); the temperature uses SCALE_LR. lam: lambda of the loss.
    epochs / min_steps / batch_size (frames) / weight_decay / warmup_epochs / patience /
    au_holdout: as in :class:`affstream.train.loop.TrainConfig`.
    """

    task: str
    train: str = "projection"
    blocks: int = 1
    lr: float | None = None
    lam: float = LAMBDA
    epochs: int = 32
    min_steps: int = 200
    batch_size: int = 256
    weight_decay: float = 0.0
    warmup_epochs: int = 1
    patience: int | None = 6
    au_holdout: float = 0.2
    seed: int = 0
    train_split: str = "Train_Set"
    val_split: str = "Validation_Set"

    @property
    def text_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.train]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "text_lr": self.text_lr, "scale_lr": SCALE_LR}

    def check(self) -> None:
        problems = []
        if self.task not in ("expr", "au"):
            problems.append(f"task '{self.task}' must be expr or au")
        if self.train not in TRAINABLE:
            problems.append(f"trainable part '{self.train}' must be one of {', '.join(TRAINABLE)}")
        if self.blocks < 1:
            problems.append(f"blocks {self.blocks} must be >= 1")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr {self.lr} must be > 0")
        if not self.lam >= 0:
            problems.append(f"lambda {self.lam} must be >= 0")
        if self.epochs < 1 or self.min_steps < 0 or self.batch_size < 1:
            problems.append("epochs and batch size must be >= 1, min steps >= 0")
        if self.weight_decay < 0 or not 0 <= self.warmup_epochs <= self.epochs:
            problems.append("weight decay must be >= 0 and warm-up epochs in [0, epochs]")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience {self.patience} must be >= 1")
        if not 0 <= self.au_holdout < 1:
            problems.append(f"AU hold-out fraction {self.au_holdout} must lie in [0, 1)")
        if problems:
            raise ConfigError("fine-tuning options: " + "; ".join(problems))


# --------------------------------------------------------------------------- the run


@dataclass
class _ClefRun:
    cfg: ClefConfig
    bank: FeatureBank
    backbone: Any
    parts: PromptParts
    model: ClefModel
    stream: BatchStream
    fit_names: list[str]
    holdout_names: list[str]
    val_names: list[str]
    device: torch.device
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    expr_weight: torch.Tensor | None
    au_pos_weight: torch.Tensor | None

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch


def _loss(run: _ClefRun, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, L_IN, L_DN) of one batch of frames."""
    model, task = run.model, run.cfg.task
    logits = task_logits(model, task, batch["features"])
    if task == "expr":
        valid = batch["expr_mask"]
        l_in = in_loss_expr(logits[valid], batch["expr"][valid], run.expr_weight)
    else:
        l_in = in_loss_au(logits, batch["au"], batch["au_mask"], run.au_pos_weight)
    group = f"{task}_descriptions"
    l_dn = dn_loss(
        model.prompt_embeddings(group),
        model.groups[group].owner.to(run.device),
        model.class_embeddings(f"{task}_names"),
        model.scale(),
    )
    return clef_loss(l_in, l_dn, run.cfg.lam), l_in.detach(), l_dn.detach()


def build_text_head(run: _ClefRun, name: str) -> TextHead:
    """The current model as a :class:`TextHead` (kind "text", tasks (task,)) with the
    class embeddings computed by the fine-tuned encoder and the learned temperature:
    for the trained task exactly those the loss used (label names; AU "absent"
    prompts), for the other task, which the head does not claim to predict, the
    zero-shot head's ensembles. The caller completes the card."""
    model, task = run.model, run.cfg.task
    with torch.no_grad():
        if task == "expr":
            expr_text = model.class_embeddings("expr_names")
            au_pos = model.class_embeddings("au_names", "au_descriptions")
        else:
            expr_text = model.class_embeddings("expr_names", "expr_descriptions")
            au_pos = model.class_embeddings("au_names")
        au_neg = model.class_embeddings("au_absent")
        scale = float(model.scale())
    card = HeadCard(
        name=name,
        kind="text",
        backbone=run.bank.backbone,
        feature_dim=run.bank.feature_dim,
        tasks=(task,),
        causal=True,
        meaningful=bool(run.backbone.meaningful),
    )
    head = TextHead(card, expr_text.cpu(), au_pos.cpu(), au_neg.cpu(), logit_scale=scale)
    return head.to(run.device).eval()


def _tokenizer(backbone):
    import open_clip

    from ..weights import open_clip_logs

    with open_clip_logs():
        return open_clip.get_tokenizer(backbone.spec.arch)


def _validate(run: _ClefRun, name: str) -> tuple[dict[str, Any], float | None, TextHead]:
    head = build_text_head(run, name)
    if not run.val_names:
        return {}, None, head
    thresholds, where = None, None
    if run.holdout_names:
        thresholds, where = au_thresholds_from(run.holdout_names, run.bank, head, run.device, shrink=True)
    outputs = predict_people(head, run.bank, run.val_names, run.device)
    result = score_with_thresholds(pool(run.bank, outputs, (run.cfg.task,)), (run.cfg.task,), thresholds, where)
    return result, overall(result, (run.cfg.task,)), head


def _setup(features_dir, cfg: ClefConfig, device: str, backbone_spec: str | None) -> _ClefRun:
    from ..embed.backbone import load_backbone
    from ..runtime import resolve_device

    bank = FeatureBank.open(features_dir)
    spec = backbone_spec or bank.backbone
    train_names = bank.split(cfg.train_split)
    if not train_names:
        raise DataError(f"{bank.path}: no people in {cfg.train_split}; nothing to fine-tune on")
    val_names = bank.split(cfg.val_split)
    if not val_names:
        log.warning("%s: no people in %s; keeping the last epoch without validation", bank.path, cfg.val_split)
    fit_names, holdout = train_names, []
    if cfg.task == "au" and cfg.au_holdout > 0:
        fit_names, holdout = split_holdout(bank, train_names, cfg.au_holdout, cfg.seed)
    dev = resolve_device(device)
    backbone = load_backbone(spec, dev, precision="fp32")
    if backbone.feature_dim != bank.feature_dim:
        raise ConfigError(
            f"backbone {spec} embeds into {backbone.feature_dim} dimensions but feature bank "
            f"{bank.path} holds {bank.feature_dim}-d features of '{bank.backbone}'; use the bank's "
            "backbone"
        )
    if spec != bank.backbone:
        log.warning("%s: fine-tuning the text encoder of %s for features of %s", bank.path, spec, bank.backbone)
    parts = load_prompt_parts()
    groups = prompt_groups(parts, _tokenizer(backbone))
    torch.manual_seed(cfg.seed)
    model = ClefModel(backbone.model, groups, cfg.train, cfg.blocks, backbone.logit_scale).to(dev)
    data = frame_set(bank, fit_names, (cfg.task,))
    stream = BatchStream(lambda _pass: data, cfg.batch_size, cfg.seed)
    per_pass = stream.pass_batches(1)
    if per_pass == 0:
        raise DataError(f"{bank.path}: no annotated {cfg.task} frames in {cfg.train_split}")
    steps = max(per_pass, math.ceil(cfg.min_steps / cfg.epochs))
    text_params = [p for p in model.clip.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": text_params, "lr": cfg.text_lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.text_lr},
            {"params": [model.logit_scale], "lr": SCALE_LR, "weight_decay": 0.0, "base_lr": SCALE_LR},
        ]
    )
    expr_w = au_w = None
    if cfg.task == "expr":
        expr_w = torch.tensor(expr_class_weights(data.labels["expr"]), dtype=torch.float32, device=dev)
    else:
        au_w = torch.tensor(au_pos_weights(data.labels["au"]), dtype=torch.float32, device=dev)
    return _ClefRun(cfg, bank, backbone, parts, model, stream, fit_names, holdout, val_names, dev, optimizer, steps, expr_w, au_w)


def _train_epoch(run: _ClefRun, epoch: int, step: int, progress: Progress | None) -> tuple[float, int]:
    run.model.train()
    warmup = run.cfg.warmup_epochs * run.steps_per_epoch
    total = torch.zeros((), device=run.device)
    for i, (data, index) in enumerate(run.stream.take(step, run.steps_per_epoch)):
        batch = data.batch(index, run.device)
        factor = lr_factor(step, run.total_steps, warmup)
        for group in run.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        run.optimizer.zero_grad(set_to_none=True)
        loss, _, _ = _loss(run, batch)
        loss.backward()
        run.optimizer.step()
        step += 1
        total = total + loss.detach()
        if progress is not None:
            progress({"event": "step", "epoch": epoch, "step": i + 1, "steps": run.steps_per_epoch})
    return float(total) / max(run.steps_per_epoch, 1), step


def finetune_text(
    features_dir: str | Path,
    *,
    task: str,
    out: str | Path,
    train: str = "projection",
    blocks: int = 1,
    lr: float | None = None,
    lam: float = LAMBDA,
    epochs: int = 32,
    min_steps: int = 200,
    batch_size: int = 256,
    patience: int | None = 6,
    au_holdout: float = 0.2,
    seed: int = 0,
    backbone: str | None = None,
    device: str = "auto",
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tune a CLEF text head on a feature bank's Train_Set; write it to ``out``.

    The text encoder is the bank's backbone's own (``backbone`` overrides the spec, for
    a bank whose weights moved; it must give features of the bank's width). ``out``:
    checkpoint stem; writes OUT.safetensors + OUT.json (kind "text", tasks (task,)) with
    the best epoch's class embeddings, and OUT.resume/ after every epoch (removed at
    the end); ``resume`` continues from it (same options). ``patience`` 0 or None:
    never stop early. Returns a summary like :func:`affstream.train.loop.train_head`'s
    (out, card, task, epochs, best_epoch, stopped_after, metrics, history, total_steps,
    resumed_from).
    """
    cfg = ClefConfig(
        task=task,
        train=train,
        blocks=blocks,
        lr=lr,
        lam=lam,
        epochs=epochs,
        min_steps=min_steps,
        batch_size=batch_size,
        patience=patience or None,
        au_holdout=au_holdout,
        seed=seed,
    )
    cfg.check()
    out = Path(out)
    check_train_output(out)
    run = _setup(features_dir, cfg, device, backbone)
    name = checkpoint_paths(out)[0].stem
    rdir = resume_dir(out)
    saved = load_resume(rdir)
    if saved is not None and not resume:
        raise ConfigError(
            f"{rdir}: a resume state of an unfinished run exists; pass --resume to continue it or delete the folder to start over"
        )
    first_epoch, step = 1, 0
    best_state, best_epoch, best_score, best_metrics, history = run.model.trainable_state(), 0, None, {}, []
    if saved is not None:
        differing = sorted(k for k, v in cfg.to_dict().items() if saved.config.get(k) != v)
        if differing:
            raise ConfigError(
                f"{rdir}: saved run used different {', '.join(differing)}; resume with the same "
                "options or delete the folder to start over"
            )
        run.model.load_trainable_state(saved.model)
        run.optimizer.load_state_dict(saved.optimizer)
        torch.set_rng_state(saved.rng_torch)
        first_epoch, step = saved.epoch + 1, saved.step
        best_state, best_epoch, best_score = saved.best, saved.best_epoch, saved.best_score
        best_metrics, history = saved.best_metrics, saved.history
    if progress is not None:
        progress(
            {
                "event": "start",
                "epochs": cfg.epochs,
                "first_epoch": first_epoch,
                "steps_per_epoch": run.steps_per_epoch,
                "total_steps": run.total_steps,
                "train_samples": run.stream.samples(1),
                "val_people": len(run.val_names),
            }
        )
    stopped = None
    if saved is not None and _stop(cfg, saved.epoch, best_epoch, best_score):
        stopped, first_epoch = saved.epoch, cfg.epochs + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        train_loss, step = _train_epoch(run, epoch, step, progress)
        metrics, current, _ = _validate(run, name)
        if best_score is None or current is None or current > best_score:
            best_state, best_epoch, best_score, best_metrics = run.model.trainable_state(), epoch, current, metrics
        history.append({"epoch": epoch, "train_loss": train_loss, "score": current})
        state = ResumeState(
            epoch=epoch,
            step=step,
            config=cfg.to_dict(),
            model=run.model.trainable_state(),
            best=best_state,
            optimizer=run.optimizer.state_dict(),
            rng_torch=torch.get_rng_state(),
            best_epoch=best_epoch,
            best_score=best_score,
            best_metrics=best_metrics,
            history=history,
        )
        try:
            save_resume(rdir, state)
        except OutputError as exc:
            raise OutputError(f"{exc}; fine-tuning stopped after epoch {epoch}") from None
        log.info("epoch %d/%d: loss %.4f, validation score %s", epoch, cfg.epochs, train_loss, current)
        if progress is not None:
            progress(
                {
                    "event": "epoch",
                    "epoch": epoch,
                    "epochs": cfg.epochs,
                    "train_loss": train_loss,
                    "metrics": metrics,
                    "score": current,
                    "best_epoch": best_epoch,
                }
            )
        if _stop(cfg, epoch, best_epoch, best_score):
            stopped = epoch
            log.info("stopping after epoch %d: no better validation score for %d epochs", epoch, cfg.patience)
            break
    return _finish(run, out, rdir, name, best_state, best_epoch, best_metrics, history, first_epoch, stopped)


def _stop(cfg: ClefConfig, epoch: int, best_epoch: int, best_score: float | None) -> bool:
    """True when ``patience`` epochs after the warm-up brought no better score (never
    after the last epoch: the run ends anyway)."""
    if cfg.patience is None or best_score is None or epoch >= cfg.epochs:
        return False
    return epoch - max(best_epoch, cfg.warmup_epochs) >= cfg.patience


def _finish(
    run: _ClefRun,
    out: Path,
    rdir: Path,
    name: str,
    best_state,
    best_epoch: int,
    best_metrics: dict[str, Any],
    history: list[dict[str, Any]],
    first_epoch: int,
    stopped: int | None,
) -> dict[str, Any]:

    cfg = run.cfg
    run.model.load_trainable_state(best_state)
    head = build_text_head(run, name)
    metrics = {**copy.deepcopy(best_metrics), "epoch": best_epoch, "split": cfg.val_split} if best_metrics else {}
    if metrics and stopped is not None:
        metrics["stopped_after"] = stopped
    thresholds = head.card.au_thresholds
    if best_metrics.get("au_thresholds_tuned_on"):
        thresholds = tuple(float(best_metrics["au_thresholds"][label]) for label in AU_LABELS)
    labels = EXPR_LABELS if cfg.task == "expr" else AU_LABELS
    config = {
        "method": "CLEF text-driven head: cosine similarity to label-name text embeddings of the backbone's "
        "fine-tuned text encoder, learned temperature",
        "prompt_sha256": dict(run.parts.file_sha256),
        "labels": list(labels),
        "logit_scale": float(run.model.scale().detach()),
        "training": {
            **cfg.to_dict(),
            "steps_per_epoch": run.steps_per_epoch,
            "total_steps": run.total_steps,
            "fit_people": list(run.fit_names),
            "au_threshold_people": list(run.holdout_names),
            "text_parameters": int(sum(p.numel() for p in run.model.clip.parameters() if p.requires_grad)),
        },
    }
    head.card = dataclasses.replace(head.card, config=config, metrics=metrics, au_thresholds=thresholds)
    weights = publish_head(head, out, "the fine-tuned head was not written")
    remove_resume(rdir)
    return {
        "out": str(weights),
        "card": str(checkpoint_paths(out)[1]),
        "task": cfg.task,
        "epochs": cfg.epochs,
        "best_epoch": best_epoch,
        "stopped_after": stopped,
        "metrics": best_metrics,
        "history": history,
        "total_steps": run.total_steps,
        "resumed_from": first_epoch - 1,
    }
