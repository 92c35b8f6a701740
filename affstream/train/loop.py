"""Training a head on a feature bank: the per-frame MLP (seed method 1) or the
temporal TCN + Transformer head (seed method 2).

Defaults per head (any can be overridden):

- ``mlp`` (seed method 1, as in the paper): samples are the present, annotated
  frames; Adam, lr 1e-3, weight decay 0, cosine annealing to 0 (per step); batch 32
  frames, 32 epochs; CVaR at alpha 0.3 with SAM (rho 0.05); width 768, dropout 0.6.
- ``temporal`` (seed method 2): samples are windows (w 300, s 200) over each
  person's present frames; AdamW, lr 3e-5, weight decay 1e-5, one linear warm-up
  epoch then cosine; batch 32 windows, 32 epochs (the paper does not state the
  number of epochs); mean loss (ERM), no SAM; d_model 256, dropout 0.3, non-causal.

Losses (per task; several tasks are summed):

- expr: cross-entropy per frame; au: BCE-with-logits per frame averaged over its
  annotated AUs. The per-frame losses are reduced by CVaR (``loss="cvar"``) or the
  mean (``loss="erm"``).
- va: the ABAW metric is a CCC, a statistic of the whole batch with no per-sample
  form. Under ``loss="cvar"`` (MLP) the per-frame squared error (mean of valence and
  arousal) is CVaR-reduced; under ``loss="erm"``, and always for the temporal head,
  the loss is 1 - CCC over the batch's annotated frames (the paper's VA loss).
- Unannotated frames and window padding take no part in any loss.

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

import torch

from ..errors import ConfigError, DataError, OutputError
from ..files import check_output_file, check_output_folder, make_folder, output_error
from ..heads.base import AffectHead, HeadOutputs, checkpoint_paths, save_head
from ..labels import AU_LABELS, EXPR_LABELS
from .bank import FeatureBank
from .checkpoint import ResumeState, load_resume, remove_resume, resume_dir, save_resume
from .datasets import FrameSet, WindowSet, frame_set, shuffled_batches, window_set
from .evaluate import overall, pool, predict_people, score
from .losses import au_loss, ccc_loss, expr_loss, reduce

log = logging.getLogger("affstream")

Progress = Callable[[dict[str, Any]], None]

HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": dict(epochs=32, batch_size=32, lr=1e-3, weight_decay=0.0, loss="cvar", alpha=0.3, sam=True,
                rho=0.05, width=768, dropout=0.6, optimizer="adam", warmup_epochs=0),
    "temporal": dict(epochs=32, batch_size=32, lr=3e-5, weight_decay=1e-5, loss="erm", alpha=0.3, sam=False,
                     rho=0.05, dropout=0.3, d_model=256, window_length=300, window_stride=200, causal=False,
                     optimizer="adamw", warmup_epochs=1),
}
_MLP_ONLY = ("width",)
_TEMPORAL_ONLY = ("d_model", "window_length", "window_stride", "causal")


@dataclass(frozen=True)
class TrainConfig:
    """A fully resolved training configuration (stored in the head card).

    Fields that do not apply to the head kind are None (``width`` for temporal
    heads; ``d_model``, window and ``causal`` for MLP heads).
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

    @property
    def tasks(self) -> tuple[str, ...]:
        return ("expr", "au", "va") if self.task == "all" else (self.task,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_config(task: str, head: str, **options: Any) -> TrainConfig:
    """Resolve ``options`` (None = the head's default) into a checked TrainConfig."""
    if head not in HEAD_DEFAULTS:
        raise ConfigError(f"head type '{head}': use mlp or temporal")
    if task not in ("expr", "au", "va", "all"):
        raise ConfigError(f"task '{task}': use expr, au, va or all")
    foreign = _TEMPORAL_ONLY if head == "mlp" else _MLP_ONLY
    given = [k for k in foreign if options.get(k) is not None]
    if given:
        raise ConfigError(f"option(s) {', '.join(given)} do not apply to a {head} head; leave them out")
    values = {**HEAD_DEFAULTS[head], **{k: v for k, v in options.items() if v is not None}}
    cfg = TrainConfig(task=task, head=head, **values)
    _check_config(cfg)
    return cfg


def _check_config(cfg: TrainConfig) -> None:
    problems = []
    if cfg.epochs < 1:
        problems.append(f"epochs {cfg.epochs} must be >= 1")
    if cfg.batch_size < (2 if cfg.head == "mlp" else 1):
        problems.append(f"batch size {cfg.batch_size} too small (MLP BatchNorm needs >= 2)")
    if not cfg.lr > 0 or cfg.weight_decay < 0:
        problems.append("lr must be > 0 and weight decay >= 0")
    if cfg.loss not in ("cvar", "erm"):
        problems.append(f"loss '{cfg.loss}' must be cvar or erm")
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
    if cfg.head == "temporal" and not 0 < cfg.window_stride <= cfg.window_length:
        problems.append(f"window stride {cfg.window_stride} must satisfy 0 < stride <= length {cfg.window_length}")
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
               kind: str, alpha: float, va_loss: str) -> torch.Tensor:
    """Training loss of one batch (see the module docstring), a 0-d tensor. Leading
    dims (N,) or (B, T) are flattened. A batch with nothing to learn from for any task
    (possible only for VA under 1 - CCC, which needs two frames) gives a zero loss
    that is still attached to the graph."""
    terms = []
    if "expr" in tasks:
        valid = batch["expr_mask"].reshape(-1)
        if bool(valid.any()):
            logits = out.expr_logits.reshape(-1, len(EXPR_LABELS))[valid]
            terms.append(reduce(expr_loss(logits, batch["expr"].reshape(-1)[valid]), kind, alpha))
    if "au" in tasks:
        au_mask = batch["au_mask"].reshape(-1, len(AU_LABELS))
        rows = au_mask.any(dim=1)
        if bool(rows.any()):
            logits = out.au_logits.reshape(-1, len(AU_LABELS))[rows]
            target = batch["au"].reshape(-1, len(AU_LABELS))[rows]
            terms.append(reduce(au_loss(logits, target, au_mask[rows]), kind, alpha))
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
    cfg: TrainConfig
    bank: FeatureBank
    model: AffectHead
    data: FrameSet | WindowSet
    val_names: list[str]
    device: torch.device
    stepper: Any
    base: torch.optim.Optimizer
    steps_per_epoch: int


def _min_batch(cfg: TrainConfig) -> int:
    return 2 if cfg.head == "mlp" else 1


def _train_epoch(run: _Run, epoch: int, step: int, progress: Progress | None) -> tuple[float, int]:
    """One epoch of optimizer steps; returns (mean first-pass loss, global step after)."""
    from .sam import sam_step

    cfg, model = run.cfg, run.model
    model.train()
    total_steps = cfg.epochs * run.steps_per_epoch
    warmup = cfg.warmup_epochs * run.steps_per_epoch
    batches = shuffled_batches(len(run.data), cfg.batch_size, cfg.seed, epoch, min_size=_min_batch(cfg))
    loss_sum = torch.zeros((), device=run.device)
    for i, index in enumerate(batches):
        batch = run.data.batch(index, run.device)
        for group in run.base.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, total_steps, warmup)

        def loss_fn(batch=batch):
            out = model(batch["features"], batch.get("mask"))
            return batch_loss(out, batch, cfg.tasks, cfg.loss, cfg.alpha, _va_loss(cfg))

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
            progress({"event": "step", "epoch": epoch, "step": i + 1, "steps": len(batches)})
    return float(loss_sum) / max(len(batches), 1), step


def _validate(run: _Run) -> tuple[dict[str, Any], float | None]:
    if not run.val_names:
        return {}, None
    outputs = predict_people(run.model, run.bank, run.val_names, run.device)
    result = score(pool(run.bank, outputs, run.cfg.tasks), run.cfg.tasks, run.model.card.au_thresholds)
    return result, overall(result, run.cfg.tasks)


def _state_copy(model: AffectHead) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _setup(features_dir, cfg: TrainConfig, out: Path, device: str) -> _Run:
    from ..runtime import resolve_device

    bank = FeatureBank.open(features_dir)
    train_names = bank.split(cfg.train_split)
    if not train_names:
        raise DataError(f"{bank.path}: no people in {cfg.train_split}; nothing to train on")
    val_names = bank.split(cfg.val_split)
    if not val_names:
        log.warning("%s: no people in %s; keeping the last epoch without validation", bank.path, cfg.val_split)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    name = checkpoint_paths(out)[0].stem
    model = build_model(cfg, bank, name).to(dev)
    if cfg.head == "mlp":
        data = frame_set(bank, train_names, cfg.tasks)
    else:
        data = window_set(bank, train_names, cfg.tasks, cfg.window_length, cfg.window_stride)
    steps = len(shuffled_batches(len(data), cfg.batch_size, cfg.seed, 0, min_size=_min_batch(cfg)))
    if steps == 0:
        raise DataError(f"{bank.path}: {cfg.train_split} has too few annotated samples for task {cfg.task} "
                        f"({len(data)}) to form a batch")
    stepper, base = build_optimizer(cfg, model)
    return _Run(cfg, bank, model, data, val_names, dev, stepper, base, steps)


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
    epochs: int | None = None,
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
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train a head on the Train_Set people of a feature bank; write it to ``out``.

    ``task``: expr, au, va or all (one multi-task head). ``head``: mlp or temporal.
    Options left None take the head's defaults (module docstring). ``out``: checkpoint
    stem or ``.safetensors`` path; writes OUT.safetensors + OUT.json with the best
    epoch's weights, and ``OUT.resume/`` after every epoch (removed at the end).
    ``resume``: continue from ``OUT.resume/`` (same options required); without a saved
    state the run starts fresh. A saved state and ``resume=False`` is a ConfigError.
    ``progress(event)`` receives dicts: ``{"event": "start", ...}``, ``{"event": "step",
    "epoch", "step", "steps"}`` and ``{"event": "epoch", "epoch", "epochs",
    "train_loss", "metrics", "score", "best_epoch"}`` (after the epoch's state is saved).

    Returns a summary: out, card, tasks, head, epochs, best_epoch, metrics (validation
    metrics of the kept epoch), history, train_samples, val_people, resumed_from.

    The output is checked before the bank is read (:func:`check_train_output`). A write
    that fails later is an OutputError saying what was kept: an epoch's state that
    cannot be saved stops the run (the previous epoch's state stays in OUT.resume/);
    a head that cannot be written after the last epoch leaves that epoch's state, from
    which ``resume=True`` writes the head without training again.
    """
    cfg = make_config(task, head, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      loss=loss, alpha=alpha, sam=sam, rho=rho, width=width, dropout=dropout, d_model=d_model,
                      window_length=window_length, window_stride=window_stride, causal=causal, seed=seed)
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
                  "steps_per_epoch": run.steps_per_epoch, "train_samples": len(run.data),
                  "val_people": len(run.val_names)})
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
    return _finish(run, out, rdir, best_state, best_epoch, best_metrics, history, first_epoch)


def _finish(run: _Run, out: Path, rdir: Path, best_state, best_epoch: int, best_metrics: dict[str, Any],
            history: list[dict[str, Any]], first_epoch: int) -> dict[str, Any]:
    from safetensors import SafetensorError

    cfg, model = run.cfg, run.model
    model.load_state_dict(best_state)
    card_metrics = {**copy.deepcopy(best_metrics), "epoch": best_epoch, "split": cfg.val_split} if best_metrics else {}
    model.card = dataclasses.replace(model.card, config={**model.card.config, "training": cfg.to_dict()},
                                     metrics=card_metrics)
    try:
        make_folder(checkpoint_paths(out)[0].parent)
        weights = save_head(model, out)
    except OutputError as exc:
        raise OutputError(f"{exc}; {_kept_after_training(rdir)}") from None
    except (OSError, SafetensorError) as exc:
        raise OutputError(f"{output_error(checkpoint_paths(out)[0], exc)}; {_kept_after_training(rdir)}") from None
    remove_resume(rdir)
    return {
        "out": str(weights), "card": str(checkpoint_paths(out)[1]), "tasks": list(cfg.tasks), "head": cfg.head,
        "epochs": cfg.epochs, "best_epoch": best_epoch, "metrics": best_metrics, "history": history,
        "train_samples": len(run.data), "val_people": len(run.val_names), "resumed_from": first_epoch - 1,
    }


def _has_resume(rdir: Path) -> bool:
    """True if ``rdir`` holds a readable resume state (for saying what an error kept)."""
    try:
        return load_resume(rdir) is not None
    except DataError:
        return False


def _kept_after_training(rdir: Path) -> str:
    if _has_resume(rdir):
        return (f"the trained head was not written; its last epoch is kept in {rdir}: make the output writable "
                "and run the same command with --resume to write it without training again")
    return "the trained head was not written"
