"""Training a head on a feature bank: the per-frame MLP (seed method 1) or the
temporal TCN + Transformer head (seed method 2).

Two recipes (``recipe=``, ``--recipe``); any single setting can still be overridden:

- ``paper``: the settings of the two papers. ``mlp``: samples are the present,
  annotated frames; Adam, lr 1e-3, weight decay 0, cosine annealing to 0 (per step);
  batch 32 frames, 32 epochs; CVaR at alpha 0.3 with SAM (rho 0.05); width 768,
  dropout 0.6. ``temporal``: windows (w 300, s 200) over each person's present
  frames, cut once; AdamW, lr 3e-5, weight decay 1e-5, one linear warm-up epoch then
  cosine; batch 32 windows, 32 epochs (the paper does not state the number of
  epochs); mean loss (ERM), no SAM; d_model 256, dropout 0.3, non-causal. AU
  thresholds stay at 0.5; no early stopping.
- ``default``: the paper's settings, changed where they fail on a user's first, small
  data set (a few videos); every change is listed in :data:`PAPER_DIFFERENCES` with its
  reason and recorded in the card (``config.training.differs_from_paper``). The
  schedule has a floor of ``min_steps`` (200) optimizer steps; the batch size is
  automatic (``batch_size=0``: the paper's 32, or fewer so that a pass has at least 8
  steps); the MLP uses the mean loss (ERM) instead of CVaR; temporal windows are
  re-cut at a random phase in every pass; the temporal head uses lr 5e-4 and d_model
  128; AU losses are class-weighted BCE; AU heads tune their thresholds on held-out training
  videos; training stops early when the validation score has not improved for
  ``patience`` (6) epochs.

Schedule. A *pass* is one shuffled sweep over the training samples (frames, or the
windows cut for that pass). An *epoch* is ``steps_per_epoch`` optimizer steps, then
validation and a resume point: one pass by default, more when the floor
``min_steps`` (total) asks for more steps than ``epochs`` passes give, and
``ceil(steps / epochs)`` when a total number of ``steps`` is given. Batches are drawn
from the passes in order (:class:`~affstream.train.datasets.BatchStream`), so on a
large data set an epoch is exactly a pass, as in the papers. Warm-up lasts
``warmup_epochs`` epochs, then the learning rate follows a cosine to 0 over the
planned steps. A run with too few steps or too few windows to learn from logs a
warning saying what to change (:func:`schedule_warnings`).

Losses (per task; several tasks are summed):

- expr: cross-entropy per frame (``expr_loss="weighted"``: class-weighted by the
  inverse frequency of the training frames); au: BCE-with-logits per frame averaged
  over its annotated AUs (``au_loss="weighted"``: positive weight n_neg / n_pos per
  AU from the training frames). The per-frame losses are reduced by CVaR
  (``loss="cvar"``) or the mean (``loss="erm"``).
- va: the ABAW metric is a CCC, a statistic of the whole batch with no per-sample
  form. Under ``loss="cvar"`` (MLP) the per-frame squared error (mean of valence and
  arousal) is CVaR-reduced; under ``loss="erm"``, and always for the temporal head,
  the loss is 1 - CCC over the batch's annotated frames (the paper's VA loss).
- Unannotated frames and window padding take no part in any loss.

AU thresholds. With ``au_holdout`` > 0 and a head that predicts AUs, a fraction of the
training *videos* (whole videos, at least one, chosen by the seed; never frames of the
validation split) is kept out of fitting. After every epoch the per-AU thresholds
are tuned on them (:func:`au_thresholds_from`: the held-out F1 optimum, pulled towards
0.5 for class-weighted BCE) and the validation AU F1 is computed with these
thresholds (and, beside it, at 0.5); the thresholds of the kept epoch go into the
card. The held-out videos are left out of the whole run (all tasks of the head).

After every epoch the head is scored on the validation split (ABAW metric of the
task, or the sum of the three for ``task="all"``); the best epoch's weights are kept
and written with :func:`affstream.heads.base.save_head`. The run is seeded: on CPU
the same seed gives bit-identical weights, and a run resumed from its per-epoch
state (:mod:`affstream.train.checkpoint`) ends with the same weights as one that was
never interrupted.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, OutputError
from ..files import check_output_file, check_output_folder, make_folder, output_error
from ..heads.base import AffectHead, HeadOutputs, checkpoint_paths, save_head
from ..labels import AU_LABELS, EXPR_LABELS
from . import metrics as abaw
from .bank import FeatureBank
from .checkpoint import ResumeState, load_resume, remove_resume, resume_dir, save_resume
from .datasets import BatchStream, FrameSet, WindowSet, frame_set, recut_window_set, window_set
from .evaluate import overall, pool, predict_people, score_with_thresholds
from .losses import au_loss, au_pos_weights, ccc_loss, expr_class_weights, expr_loss, reduce

log = logging.getLogger("affstream")

Progress = Callable[[dict[str, Any]], None]

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "mlp": dict(epochs=32, batch_size=32, lr=1e-3, weight_decay=0.0, loss="cvar", alpha=0.3, sam=True,
                    rho=0.05, width=768, dropout=0.6, optimizer="adam", warmup_epochs=0, min_steps=0,
                    expr_loss="ce", au_loss="bce", au_holdout=0.0, patience=None),
        "temporal": dict(epochs=32, batch_size=32, lr=3e-5, weight_decay=1e-5, loss="erm", alpha=0.3, sam=False,
                         rho=0.05, dropout=0.3, d_model=256, window_length=300, window_stride=200, causal=False,
                         optimizer="adamw", warmup_epochs=1, min_steps=0, recut=False, window_min=None,
                         expr_loss="ce", au_loss="bce", au_holdout=0.0, patience=None),
    },
}
RECIPES["default"] = {
    "mlp": {**RECIPES["paper"]["mlp"], "batch_size": 0, "loss": "erm", "min_steps": 200, "au_loss": "weighted",
            "au_holdout": 0.2, "patience": 6},
    "temporal": {**RECIPES["paper"]["temporal"], "batch_size": 0, "lr": 5e-4, "d_model": 128, "min_steps": 200,
                 "recut": True, "au_loss": "weighted", "au_holdout": 0.2, "patience": 6},
}
"""Per recipe and head kind, the value of every training option (see the module docstring)."""

HEAD_DEFAULTS: dict[str, dict[str, Any]] = RECIPES["default"]
"""The settings a run gets when no recipe is named."""

PAPER_DIFFERENCES: dict[str, str] = {
    "loss": "CVaR at alpha 0.3 trains each step on the worst 30 % of the batch; on a small set whose per-frame "
            "cues are often wrong those are mostly frames whose features contradict their labels, and the plain "
            "mean (ERM) scored as well or better on all three tasks (--loss cvar or --recipe paper for CVaR)",
    "lr": "the paper's 3e-5 was tuned for about 2.6 M frames; on a few videos a run has a few hundred steps "
          "and at 3e-5 the head does not leave its initial state",
    "batch_size": "0 = auto: the paper's 32, or fewer so that a pass has at least 8 steps (a few videos give a "
                  "few dozen windows of 300 frames, which at 32 per batch is one step per pass)",
    "d_model": "128 channels learn as well on a few videos and train about 3x faster on a CPU; the paper's "
               "Transformer width is not stated (256 with --d-model 256 or --recipe paper)",
    "min_steps": "a floor on the optimizer steps of the whole run, so that warm-up and cosine decay make sense "
                 "when an epoch over a small set is only a step or two",
    "recut": "windows re-cut at a random phase in every pass: a video gives other windows each pass, so a small "
             "set is not learned by heart as a few fixed windows",
    "au_loss": "class-weighted BCE (positive weight n_negative / n_positive per AU from the training frames): "
               "AUs present in 10-40 % of the frames are otherwise learned as mostly absent",
    "au_holdout": "AU thresholds are chosen on held-out training videos instead of staying at 0.5",
    "patience": "small sets reach their best validation score early; stopping after this many epochs without "
                "gain saves most of the run and keeps the same best epoch",
}
"""Why each setting of the ``default`` recipe differs from the paper's (stored in the card)."""

_MLP_ONLY = ("width",)
_TEMPORAL_ONLY = ("d_model", "window_length", "window_stride", "causal", "recut", "window_min")
MIN_USEFUL_STEPS = 100
"""Fewer optimizer steps than this in a whole run draw a warning: the head barely moves."""
AUTO_BATCH = 0
"""``batch_size`` value meaning: chosen from the data (:func:`resolve_batch_size`)."""
MIN_STEPS_PER_PASS = 8
"""An automatic batch size gives a pass at least this many steps (when it can)."""


@dataclass(frozen=True)
class TrainConfig:
    """A fully resolved training configuration (stored in the head card).

    Fields that do not apply to the head kind are None (``width`` for temporal
    heads; ``d_model``, window, ``recut``, ``window_min`` and ``causal`` for MLP heads).

    steps:       total optimizer steps of the run, or None (from epochs and min_steps).
    min_steps:   floor on the total optimizer steps when ``steps`` is None.
    recut:       temporal: re-cut the training windows at a random phase every pass.
    window_min:  temporal: shortest training window in frames (random lengths in
                 [window_min, window_length]); None = every window is window_length.
    expr_loss:   "ce" or "weighted" (class-weighted cross-entropy, inverse frequency).
    au_loss:     "bce" or "weighted" (BCE with a positive weight n_neg / n_pos per AU).
    au_holdout:  fraction of the training videos held out to tune AU thresholds (0: none).
    patience:    stop after this many epochs without a better validation score (None: never).
    """

    task: str
    head: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    loss: str
    alpha: float
    sam: bool
    rho: float
    dropout: float
    optimizer: str
    warmup_epochs: int
    seed: int = 0
    width: int | None = None
    d_model: int | None = None
    window_length: int | None = None
    window_stride: int | None = None
    causal: bool | None = None
    train_split: str = "Train_Set"
    val_split: str = "Validation_Set"
    recipe: str = "default"
    steps: int | None = None
    min_steps: int = 0
    recut: bool | None = None
    window_min: int | None = None
    expr_loss: str = "ce"
    au_loss: str = "bce"
    au_holdout: float = 0.0
    patience: int | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        return ("expr", "au", "va") if self.task == "all" else (self.task,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def paper_differences(self, batch_size_used: int | None = None) -> dict[str, dict[str, Any]]:
        """Settings of this run that differ from the paper recipe of its head:
        ``{name: {"value", "paper", "why"}}`` (``why`` is the default recipe's reason,
        or says the option was set for this run). An automatic batch size that came
        out as the paper's (``batch_size_used``) is no difference."""
        paper = RECIPES["paper"][self.head]
        out = {}
        for key, value in paper.items():
            mine = getattr(self, key)
            if key == "batch_size" and mine == AUTO_BATCH and batch_size_used == value:
                continue
            if mine != value:
                reason = PAPER_DIFFERENCES.get(key) if HEAD_DEFAULTS[self.head].get(key) == mine else None
                out[key] = {"value": mine, "paper": value, "why": reason or "set for this run"}
        return out


def make_config(task: str, head: str, *, recipe: str | None = None, **options: Any) -> TrainConfig:
    """Resolve ``options`` (None = the recipe's value) into a checked TrainConfig.
    ``recipe``: "default" (None) or "paper" (module docstring)."""
    recipe = recipe or "default"
    if recipe not in RECIPES:
        raise ConfigError(f"recipe '{recipe}': use {' or '.join(sorted(RECIPES))}")
    if head not in RECIPES[recipe]:
        raise ConfigError(f"head type '{head}': use mlp or temporal")
    if task not in ("expr", "au", "va", "all"):
        raise ConfigError(f"task '{task}': use expr, au, va or all")
    foreign = _TEMPORAL_ONLY if head == "mlp" else _MLP_ONLY
    given = [k for k in foreign if options.get(k) is not None]
    if given:
        raise ConfigError(f"option(s) {', '.join(given)} do not apply to a {head} head; leave them out")
    values = {**RECIPES[recipe][head], **{k: v for k, v in options.items() if v is not None}}
    cfg = TrainConfig(task=task, head=head, recipe=recipe, **values)
    _check_config(cfg)
    return cfg


def _check_config(cfg: TrainConfig) -> None:
    problems = []
    if cfg.epochs < 1:
        problems.append(f"epochs {cfg.epochs} must be >= 1")
    if cfg.batch_size != AUTO_BATCH and cfg.batch_size < (2 if cfg.head == "mlp" else 1):
        problems.append(f"batch size {cfg.batch_size} too small (MLP BatchNorm needs >= 2; 0 = auto)")
    if not cfg.lr > 0 or cfg.weight_decay < 0:
        problems.append("lr must be > 0 and weight decay >= 0")
    if cfg.loss not in ("cvar", "erm"):
        problems.append(f"loss '{cfg.loss}' must be cvar or erm")
    if cfg.expr_loss not in ("ce", "weighted"):
        problems.append(f"expression loss '{cfg.expr_loss}' must be ce or weighted")
    if cfg.au_loss not in ("bce", "weighted"):
        problems.append(f"AU loss '{cfg.au_loss}' must be bce or weighted")
    if not 0 < cfg.alpha <= 1:
        problems.append(f"alpha {cfg.alpha} must lie in (0, 1]")
    if not cfg.rho > 0:
        problems.append(f"rho {cfg.rho} must be > 0")
    if not 0 <= cfg.dropout < 1:
        problems.append(f"dropout {cfg.dropout} must lie in [0, 1)")
    if cfg.optimizer not in ("adam", "adamw"):
        problems.append(f"optimizer '{cfg.optimizer}' must be adam or adamw")
    if not 0 <= cfg.warmup_epochs <= cfg.epochs:
        problems.append(f"warm-up epochs {cfg.warmup_epochs} must lie in [0, epochs {cfg.epochs}]")
    if cfg.steps is not None and cfg.steps < cfg.epochs:
        problems.append(f"steps {cfg.steps} must be >= epochs {cfg.epochs} (an epoch takes at least one step)")
    if cfg.min_steps < 0:
        problems.append(f"min steps {cfg.min_steps} must be >= 0")
    if not 0 <= cfg.au_holdout < 1:
        problems.append(f"AU hold-out fraction {cfg.au_holdout} must lie in [0, 1)")
    if cfg.patience is not None and cfg.patience < 1:
        problems.append(f"patience {cfg.patience} must be >= 1 epoch")
    if cfg.head == "temporal" and not 0 < cfg.window_stride <= cfg.window_length:
        problems.append(f"window stride {cfg.window_stride} must satisfy 0 < stride <= length {cfg.window_length}")
    if cfg.head == "temporal" and cfg.window_min is not None and not 1 <= cfg.window_min <= cfg.window_length:
        problems.append(f"shortest training window {cfg.window_min} must lie in [1, window length {cfg.window_length}]")
    if problems:
        raise ConfigError("training options: " + "; ".join(problems))


# --------------------------------------------------------------------------- model, optimizer


def build_model(cfg: TrainConfig, bank: FeatureBank, name: str) -> AffectHead:
    if cfg.head == "mlp":
        from ..heads.mlp import MLPHead

        return MLPHead(bank.feature_dim, cfg.tasks, width=cfg.width, dropout=cfg.dropout,
                       backbone=bank.backbone, name=name)
    from ..heads.temporal import TemporalHead

    return TemporalHead(bank.feature_dim, cfg.tasks, d_model=cfg.d_model, dropout=cfg.dropout,
                        window_length=cfg.window_length, window_stride=cfg.window_stride,
                        causal=cfg.causal, backbone=bank.backbone, name=name)


def build_optimizer(cfg: TrainConfig, model: AffectHead):
    """(optimizer to step, its base torch optimizer); the first is a SAM wrapper if cfg.sam."""
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    kwargs = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.sam:
        from .sam import SAM

        sam = SAM(model.parameters(), cls, rho=cfg.rho, **kwargs)
        return sam, sam.base_optimizer
    opt = cls(model.parameters(), **kwargs)
    return opt, opt


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier before optimizer step ``step`` (0-based) of ``total``:
    linear warm-up over ``warmup`` steps, then cosine annealing from 1 towards 0."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))


# --------------------------------------------------------------------------- losses


def batch_loss(out: HeadOutputs, batch: dict[str, torch.Tensor], tasks: tuple[str, ...],
               kind: str, alpha: float, va_loss: str, *, expr_weight: torch.Tensor | None = None,
               au_pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Training loss of one batch (see the module docstring), a 0-d tensor. Leading
    dims (N,) or (B, T) are flattened. ``expr_weight`` (8,) and ``au_pos_weight`` (12,)
    make the classification losses class-weighted (None: plain). A batch with nothing
    to learn from for any task (possible only for VA under 1 - CCC, which needs two
    frames) gives a zero loss that is still attached to the graph."""
    terms = []
    if "expr" in tasks:
        valid = batch["expr_mask"].reshape(-1)
        if bool(valid.any()):
            logits = out.expr_logits.reshape(-1, len(EXPR_LABELS))[valid]
            losses = expr_loss(logits, batch["expr"].reshape(-1)[valid], weight=expr_weight)
            terms.append(reduce(losses, kind, alpha))
    if "au" in tasks:
        au_mask = batch["au_mask"].reshape(-1, len(AU_LABELS))
        rows = au_mask.any(dim=1)
        if bool(rows.any()):
            logits = out.au_logits.reshape(-1, len(AU_LABELS))[rows]
            target = batch["au"].reshape(-1, len(AU_LABELS))[rows]
            terms.append(reduce(au_loss(logits, target, au_mask[rows], au_pos_weight), kind, alpha))
    if "va" in tasks:
        valid = batch["va_mask"].reshape(-1)
        n_valid = int(valid.sum())
        pred, target = out.va.reshape(-1, 2)[valid], batch["va"].reshape(-1, 2)[valid]
        if va_loss == "se" and n_valid:
            terms.append(reduce((pred - target).pow(2).mean(dim=1), kind, alpha))
        elif n_valid >= 2:
            terms.append(ccc_loss(pred, target))
    if terms:
        return torch.stack(terms).sum()
    present = [t for t in (out.va, out.expr_logits, out.au_logits) if t is not None]
    return sum(t.sum() for t in present) * 0.0


def _va_loss(cfg: TrainConfig) -> str:
    return "se" if (cfg.head == "mlp" and cfg.loss == "cvar") else "ccc"


# --------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """Everything a run needs between epochs. fit_names: training people the head is
    fitted on; holdout_names: training people kept out to tune AU thresholds (may be
    empty); expr_weight (8,) / au_pos_weight (12,): class weights on the device, or None."""

    cfg: TrainConfig
    bank: FeatureBank
    model: AffectHead
    data: FrameSet | WindowSet
    stream: BatchStream
    fit_names: list[str]
    holdout_names: list[str]
    val_names: list[str]
    device: torch.device
    stepper: Any
    base: torch.optim.Optimizer
    steps_per_epoch: int
    expr_weight: torch.Tensor | None = None
    au_pos_weight: torch.Tensor | None = None

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch


def _min_batch(cfg: TrainConfig) -> int:
    return 2 if cfg.head == "mlp" else 1


def _train_epoch(run: _Run, epoch: int, step: int, progress: Progress | None) -> tuple[float, int]:
    """One epoch of optimizer steps; returns (mean first-pass loss, global step after)."""
    from .sam import sam_step

    cfg, model = run.cfg, run.model
    model.train()
    warmup = cfg.warmup_epochs * run.steps_per_epoch
    loss_sum = torch.zeros((), device=run.device)
    for i, (data, index) in enumerate(run.stream.take(step, run.steps_per_epoch)):
        batch = data.batch(index, run.device)
        for group in run.base.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, run.total_steps, warmup)

        def loss_fn(batch=batch):
            out = model(batch["features"], batch.get("mask"))
            return batch_loss(out, batch, cfg.tasks, cfg.loss, cfg.alpha, _va_loss(cfg),
                              expr_weight=run.expr_weight, au_pos_weight=run.au_pos_weight)

        if cfg.sam:
            loss = sam_step(model, loss_fn, run.stepper)
        else:
            run.stepper.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            run.stepper.step()
        step += 1
        loss_sum = loss_sum + loss.detach()
        if progress is not None:
            progress({"event": "step", "epoch": epoch, "step": i + 1, "steps": run.steps_per_epoch})
    return float(loss_sum) / max(run.steps_per_epoch, 1), step


def au_thresholds_from(holdout: list[str], bank: FeatureBank, head: AffectHead, device: torch.device,
                       shrink: bool = False) -> tuple[np.ndarray | None, str]:
    """Per-AU thresholds tuned on the people ``holdout`` (None if they have no frame
    with all 12 AUs annotated) and a description of where they come from.

    The threshold maximising each AU's F1 on the held-out frames
    (:func:`~affstream.train.metrics.tune_au_thresholds`) is a noisy estimate when the
    held-out set is a video or two. With ``shrink`` (heads trained with class-weighted
    BCE, whose balanced operating point is 0.5) it is pulled towards 0.5:
    ``0.5 + m / (m + 1) * (t - 0.5)`` for ``m`` held-out videos, i.e. 0.5 counts as much
    as one video. Measured on the small synthetic set of the tests, the unshrunk
    optimum of one video lowered the validation AU F1 of a temporal head below its F1
    at 0.5 (0.51 vs 0.58); halfway never did.
    """
    tuning = pool(bank, predict_people(head, bank, holdout, device), ("au",))
    videos = sorted({bank.people[n]["video"] for n in holdout})
    where = f"held-out training videos: {', '.join(videos)}"
    if len(tuning.truth["au"]) == 0:
        return None, where
    probs = 1.0 / (1.0 + np.exp(-tuning.scores["au"]))
    best = abaw.tune_au_thresholds(tuning.truth["au"], probs)
    if shrink:
        weight = len(videos) / (len(videos) + 1.0)
        best = 0.5 + weight * (best - 0.5)
        where += f" (optimum pulled towards 0.5 by {1 - weight:.2f})"
    return np.round(best, 6), where


def _validate(run: _Run) -> tuple[dict[str, Any], float | None]:
    if not run.val_names:
        return {}, None
    thresholds, where = None, None
    if run.holdout_names:
        thresholds, where = au_thresholds_from(run.holdout_names, run.bank, run.model, run.device,
                                               shrink=run.cfg.au_loss == "weighted")
    outputs = predict_people(run.model, run.bank, run.val_names, run.device)
    result = score_with_thresholds(pool(run.bank, outputs, run.cfg.tasks), run.cfg.tasks, thresholds, where)
    return result, overall(result, run.cfg.tasks)


def _state_copy(model: AffectHead) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def split_holdout(bank: FeatureBank, names: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(fit, holdout) people of ``names``: whole videos (both people of a two-person
    video go together), ``max(1, round(fraction * videos))`` of them, at most all but
    one, chosen by ``seed``. No hold-out with ``fraction`` 0 or a single video."""
    videos = sorted({bank.people[n]["video"] for n in names})
    if fraction <= 0 or len(videos) < 2:
        return list(names), []
    k = min(max(1, round(fraction * len(videos))), len(videos) - 1)
    chosen = set(np.random.default_rng([int(seed), 0xA0]).choice(len(videos), size=k, replace=False).tolist())
    held = {videos[i] for i in chosen}
    return ([n for n in names if bank.people[n]["video"] not in held],
            [n for n in names if bank.people[n]["video"] in held])


def _labels_of(data: FrameSet | WindowSet, task: str) -> np.ndarray:
    if isinstance(data, FrameSet):
        return data.labels[task]
    return np.concatenate([seq.labels[task] for seq in data.sequences]) if data.sequences else np.zeros(0)


def _class_weights(cfg: TrainConfig, data: FrameSet | WindowSet, device: torch.device):
    """(expr (8,), au (12,)) loss weights from the fitted training frames, or None each."""
    expr_w = au_w = None
    if "expr" in cfg.tasks and cfg.expr_loss == "weighted":
        expr_w = torch.tensor(expr_class_weights(_labels_of(data, "expr"), len(EXPR_LABELS)), dtype=torch.float32)
    if "au" in cfg.tasks and cfg.au_loss == "weighted":
        au = _labels_of(data, "au").reshape(-1, len(AU_LABELS))
        au_w = torch.tensor(au_pos_weights(au), dtype=torch.float32)
    return (None if expr_w is None else expr_w.to(device)), (None if au_w is None else au_w.to(device))


def resolve_batch_size(cfg: TrainConfig, samples: int) -> int:
    """The batch size of a run over ``samples`` training samples per pass: the given one,
    or with ``batch_size`` 0 (auto) the paper's (32), lowered so that a pass has at
    least :data:`MIN_STEPS_PER_PASS` steps, but never below 2 (MLP, for BatchNorm) or 1."""
    if cfg.batch_size != AUTO_BATCH:
        return cfg.batch_size
    return max(_min_batch(cfg), min(RECIPES["paper"][cfg.head]["batch_size"], samples // MIN_STEPS_PER_PASS))


def plan_schedule(cfg: TrainConfig, batches_per_pass: int) -> int:
    """Optimizer steps per epoch (module docstring: Schedule)."""
    if cfg.steps is not None:
        return math.ceil(cfg.steps / cfg.epochs)
    return max(batches_per_pass, math.ceil(cfg.min_steps / cfg.epochs))


def schedule_warnings(cfg: TrainConfig, samples: int, batches_per_pass: int, steps_per_epoch: int,
                      n_people: int, batch_size: int | None = None) -> list[str]:
    """What is wrong with a planned run, as sentences saying what to change (logged as
    warnings by the trainer): too few optimizer steps in all, or (temporal) fewer
    training windows per pass than one batch. ``batch_size``: the one used (default:
    the config's)."""
    out = []
    batch = batch_size or cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    if total < MIN_USEFUL_STEPS:
        out.append(
            f"only {total} optimizer steps in all ({steps_per_epoch} per epoch x {cfg.epochs} epochs, "
            f"{batches_per_pass} batch(es) of {batch} per pass over {samples} training "
            f"{'windows' if cfg.head == 'temporal' else 'frames'}): too few for the head to leave its initial state; "
            f"raise --min-steps (e.g. {RECIPES['default'][cfg.head]['min_steps']}) or --steps, or lower --batch-size")
    if cfg.head == "temporal" and samples < batch:
        out.append(
            f"only {samples} training windows per pass ({n_people} people, windows of {cfg.window_length} frames, "
            f"stride {cfg.window_stride}), fewer than one batch of {batch}: every step sees almost the same "
            f"frames; lower --batch-size (e.g. {max(1, samples // 4)}) or --window, or add videos")
    return out


def _setup(features_dir, cfg: TrainConfig, out: Path, device: str) -> _Run:
    from ..runtime import resolve_device

    bank = FeatureBank.open(features_dir)
    train_names = bank.split(cfg.train_split)
    if not train_names:
        raise DataError(f"{bank.path}: no people in {cfg.train_split}; nothing to train on")
    val_names = bank.split(cfg.val_split)
    if not val_names:
        log.warning("%s: no people in %s; keeping the last epoch without validation", bank.path, cfg.val_split)
    fit_names, holdout = train_names, []
    if "au" in cfg.tasks and cfg.au_holdout > 0:
        fit_names, holdout = split_holdout(bank, train_names, cfg.au_holdout, cfg.seed)
        if not holdout:
            log.warning("%s: %s has a single video; AU thresholds stay at 0.5 (tune them later with "
                        "evaluate --tune-thresholds on another split)", bank.path, cfg.train_split)
        else:
            log.info("AU thresholds will be tuned on %d held-out training video(s): %s", len(holdout),
                     ", ".join(holdout))
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    name = checkpoint_paths(out)[0].stem
    model = build_model(cfg, bank, name).to(dev)
    if cfg.head == "mlp":
        data = frame_set(bank, fit_names, cfg.tasks)

        def view(pass_no: int, base=data) -> FrameSet | WindowSet:
            return base
    else:
        data = window_set(bank, fit_names, cfg.tasks, cfg.window_length, cfg.window_stride)
        if cfg.recut:
            def view(pass_no: int, base=data) -> FrameSet | WindowSet:
                return recut_window_set(base, cfg.window_stride, cfg.seed, pass_no, cfg.window_min)
        else:
            def view(pass_no: int, base=data) -> FrameSet | WindowSet:
                return base
    batch_size = resolve_batch_size(cfg, len(view(1)))
    stream = BatchStream(view, batch_size, cfg.seed, _min_batch(cfg))
    per_pass = stream.pass_batches(1)
    if per_pass == 0:
        raise DataError(f"{bank.path}: {cfg.train_split} has too few annotated samples for task {cfg.task} "
                        f"({stream.samples(1)}) to form a batch")
    steps = plan_schedule(cfg, per_pass)
    for message in schedule_warnings(cfg, stream.samples(1), per_pass, steps, len(fit_names), batch_size):
        log.warning("%s: %s", bank.path, message)
    stepper, base = build_optimizer(cfg, model)
    expr_w, au_w = _class_weights(cfg, data, dev)
    return _Run(cfg, bank, model, data, stream, fit_names, holdout, val_names, dev, stepper, base, steps,
                expr_w, au_w)


def check_train_output(out: str | Path) -> None:
    """OutputError (one line) unless a training run can write the head ``out``:
    OUT.safetensors and OUT.json are not folders, their folder and ``OUT.resume/``
    exist as writable folders or can be created. Creates nothing."""
    weights, card = checkpoint_paths(out)
    check_output_file(weights)
    check_output_file(card)
    check_output_folder(resume_dir(out))


def _check_resumable(state: ResumeState, cfg: TrainConfig, rdir: Path) -> None:
    saved = state.config
    differing = sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v)
    if differing:
        raise ConfigError(f"{rdir}: saved run used different {', '.join(differing)}; "
                          "resume with the same options or delete the folder to start over")


def train_head(
    features_dir: str | Path,
    *,
    task: str,
    head: str = "mlp",
    out: str | Path,
    recipe: str | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    min_steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    loss: str | None = None,
    alpha: float | None = None,
    sam: bool | None = None,
    rho: float | None = None,
    width: int | None = None,
    dropout: float | None = None,
    d_model: int | None = None,
    window_length: int | None = None,
    window_stride: int | None = None,
    causal: bool | None = None,
    recut: bool | None = None,
    window_min: int | None = None,
    expr_loss: str | None = None,
    au_loss: str | None = None,
    au_holdout: float | None = None,
    patience: int | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train a head on the Train_Set people of a feature bank; write it to ``out``.

    ``task``: expr, au, va or all (one multi-task head). ``head``: mlp or temporal.
    ``recipe``: "default" (None) or "paper"; options left None take the recipe's
    values (module docstring); ``patience=0`` turns early stopping off. ``out``:
    checkpoint stem or ``.safetensors`` path; writes OUT.safetensors + OUT.json with the
    best epoch's weights (and its tuned AU thresholds), and ``OUT.resume/`` after every
    epoch (removed at the end).
    ``resume``: continue from ``OUT.resume/`` (same options required); without a saved
    state the run starts fresh. A saved state and ``resume=False`` is a ConfigError.
    ``progress(event)`` receives dicts: ``{"event": "start", ...}``, ``{"event": "step",
    "epoch", "step", "steps"}`` and ``{"event": "epoch", "epoch", "epochs",
    "train_loss", "metrics", "score", "best_epoch"}`` (after the epoch's state is saved).

    Returns a summary: out, card, tasks, head, epochs, best_epoch, stopped_after (the
    last epoch run when training stopped early, else None), metrics (validation metrics
    of the kept epoch), history, train_samples, total_steps, val_people, resumed_from.

    The output is checked before the bank is read (:func:`check_train_output`). A write
    that fails later is an OutputError saying what was kept: an epoch's state that
    cannot be saved stops the run (the previous epoch's state stays in OUT.resume/);
    a head that cannot be written after the last epoch leaves that epoch's state, from
    which ``resume=True`` writes the head without training again.
    """
    cfg = make_config(task, head, recipe=recipe, epochs=epochs, steps=steps, min_steps=min_steps,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, loss=loss, alpha=alpha, sam=sam,
                      rho=rho, width=width, dropout=dropout, d_model=d_model, window_length=window_length,
                      window_stride=window_stride, causal=causal, recut=recut, window_min=window_min,
                      expr_loss=expr_loss, au_loss=au_loss, au_holdout=au_holdout, patience=patience, seed=seed)
    if cfg.patience == 0:
        cfg = dataclasses.replace(cfg, patience=None)
    out = Path(out)
    check_train_output(out)
    run = _setup(features_dir, cfg, out, device)
    rdir = resume_dir(out)
    saved = load_resume(rdir)
    if saved is not None and not resume:
        raise ConfigError(f"{rdir}: a resume state of an unfinished run exists; pass --resume to continue "
                          "it or delete the folder to start over")
    first_epoch, step = 1, 0
    best_state, best_epoch, best_score, best_metrics, history = _state_copy(run.model), 0, None, {}, []
    if saved is not None:
        _check_resumable(saved, cfg, rdir)
        run.model.load_state_dict(saved.model)
        run.base.load_state_dict(saved.optimizer)
        torch.set_rng_state(saved.rng_torch)
        if saved.rng_cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved.rng_cuda)
        first_epoch, step = saved.epoch + 1, saved.step
        best_state, best_epoch, best_score = saved.best, saved.best_epoch, saved.best_score
        best_metrics, history = saved.best_metrics, saved.history
        log.info("resuming %s after epoch %d", out, saved.epoch)
    if progress is not None:
        progress({"event": "start", "epochs": cfg.epochs, "first_epoch": first_epoch,
                  "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps,
                  "train_samples": run.stream.samples(1), "val_people": len(run.val_names)})
    stopped = None
    if saved is not None and _stop_early(cfg, saved.epoch, best_epoch, best_score):
        stopped, first_epoch = saved.epoch, cfg.epochs + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        train_loss, step = _train_epoch(run, epoch, step, progress)
        metrics, current = _validate(run)
        if best_score is None or current is None or current > best_score:
            best_state, best_epoch, best_score, best_metrics = _state_copy(run.model), epoch, current, metrics
        history.append({"epoch": epoch, "train_loss": train_loss, "score": current})
        state = ResumeState(
            epoch=epoch, step=step, config=cfg.to_dict(), model=run.model.state_dict(), best=best_state,
            optimizer=run.base.state_dict(), rng_torch=torch.get_rng_state(),
            rng_cuda=torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
            best_epoch=best_epoch, best_score=best_score, best_metrics=best_metrics, history=history)
        try:
            save_resume(rdir, state)
        except OutputError as exc:
            kept = (f"epoch {epoch - 1} is kept in {rdir} (add --resume to continue from it)"
                    if _has_resume(rdir) else "nothing was kept")
            raise OutputError(f"{exc}; training stopped after epoch {epoch}, {kept}") from None
        log.info("epoch %d/%d: train loss %.4f, validation score %s", epoch, cfg.epochs, train_loss, current)
        if progress is not None:
            progress({"event": "epoch", "epoch": epoch, "epochs": cfg.epochs, "train_loss": train_loss,
                      "metrics": metrics, "score": current, "best_epoch": best_epoch})
        if _stop_early(cfg, epoch, best_epoch, best_score):
            stopped = epoch
            log.info("stopping after epoch %d: no better validation score for %d epochs (best: epoch %d)",
                     epoch, cfg.patience, best_epoch)
            break
    return _finish(run, out, rdir, best_state, best_epoch, best_metrics, history, first_epoch, stopped)


def _stop_early(cfg: TrainConfig, epoch: int, best_epoch: int, best_score: float | None) -> bool:
    """True when ``patience`` epochs past the warm-up brought no better validation score."""
    if cfg.patience is None or best_score is None or epoch >= cfg.epochs:
        return False
    return epoch - max(best_epoch, cfg.warmup_epochs) >= cfg.patience


def _training_record(run: _Run) -> dict[str, Any]:
    """The card's ``config.training``: the resolved options plus how the run used them."""
    cfg = run.cfg

    def listed(t: torch.Tensor | None) -> list[float] | None:
        return None if t is None else [round(float(v), 6) for v in t.cpu()]

    return {
        **cfg.to_dict(),
        "differs_from_paper": cfg.paper_differences(run.stream.batch_size),
        "batch_size_used": run.stream.batch_size,
        "steps_per_epoch": run.steps_per_epoch,
        "total_steps": run.total_steps,
        "fit_people": list(run.fit_names),
        "au_threshold_people": list(run.holdout_names),
        "expr_class_weights": listed(run.expr_weight),
        "au_pos_weights": listed(run.au_pos_weight),
    }


def _finish(run: _Run, out: Path, rdir: Path, best_state, best_epoch: int, best_metrics: dict[str, Any],
            history: list[dict[str, Any]], first_epoch: int, stopped: int | None = None) -> dict[str, Any]:

    cfg, model = run.cfg, run.model
    model.load_state_dict(best_state)
    card_metrics = {**copy.deepcopy(best_metrics), "epoch": best_epoch, "split": cfg.val_split} if best_metrics else {}
    if card_metrics and stopped is not None:
        card_metrics["stopped_after"] = stopped
    thresholds = model.card.au_thresholds
    if best_metrics.get("au_thresholds_tuned_on"):
        thresholds = tuple(float(best_metrics["au_thresholds"][label]) for label in AU_LABELS)
    elif run.holdout_names:  # no validation split: tune on the held-out videos once, for the kept weights
        tuned, where = au_thresholds_from(run.holdout_names, run.bank, model, run.device,
                                          shrink=cfg.au_loss == "weighted")
        if tuned is not None:
            thresholds = tuple(float(t) for t in tuned)
            card_metrics["au_thresholds_tuned_on"] = where
    model.card = dataclasses.replace(model.card, config={**model.card.config, "training": _training_record(run)},
                                     metrics=card_metrics, au_thresholds=thresholds)
    weights = publish_head(model, out, _kept_after_training(rdir))
    remove_resume(rdir)
    return {
        "out": str(weights), "card": str(checkpoint_paths(out)[1]), "tasks": list(cfg.tasks), "head": cfg.head,
        "epochs": cfg.epochs, "best_epoch": best_epoch, "stopped_after": stopped, "metrics": best_metrics,
        "history": history, "train_samples": run.stream.samples(1), "total_steps": run.total_steps,
        "val_people": len(run.val_names), "resumed_from": first_epoch - 1,
    }


def _has_resume(rdir: Path) -> bool:
    """True if ``rdir`` holds a readable resume state (for saying what an error kept)."""
    try:
        return load_resume(rdir) is not None
    except DataError:
        return False


def publish_head(model, out: str | Path, not_written: str) -> Path:
    """Save a trained head as ``OUT.safetensors`` + ``OUT.json`` (its folder made if
    needed); any failure is one OutputError naming the file, ending with ``not_written``
    (what became of the training). Returns the weights' path."""
    from safetensors import SafetensorError

    try:
        make_folder(checkpoint_paths(out)[0].parent)
        return save_head(model, out)
    except OutputError as exc:
        raise OutputError(f"{exc}; {not_written}") from None
    except (OSError, SafetensorError) as exc:
        raise OutputError(f"{output_error(checkpoint_paths(out)[0], exc)}; {not_written}") from None


def _kept_after_training(rdir: Path) -> str:
    if _has_resume(rdir):
        return (f"the trained head was not written; its last epoch is kept in {rdir}: make the output writable "
                "and run the same command with --resume to write it without training again")
    return "the trained head was not written"
