"""Fine-tuning a CLIP image encoder on expression labels (seed method 2, first stage).

New fully connected layers go on top of the open_clip image tower and every weight is
updated on the EXPR labels of an Aff-Wild2-format root's face crops
(:mod:`affstream.train.face_crops`). With ``f = normalize(visual(x))`` (B, D)::

    logits = W2 GELU(W1 BN(f) + b1) + b2                (B, 8)
    L      = class-weighted cross-entropy(logits, y)    (weights: inverse class frequency)

The classifier sees the same L2-normalised embedding that ``features`` and
``annotate`` compute later, so the encoder learns exactly the features the heads are
trained on. ``BN`` standardises each embedding dimension over the batch (batch norm
without learned scale and shift): CLIP embeddings of faces share a large common
component, and without it the new layers see nearly constant inputs and learn (and
pass gradients to the encoder) very slowly; with micro-batches its statistics are
those of a micro-batch (at least 2 crops). The classifier is
dropped afterwards: the product is the backbone, written as a checkpoint of the whole
open_clip model (image tower fine-tuned, text tower untouched) with a backbone card
(:mod:`affstream.embed.card`), loadable as ``--backbone ARCH:/path/NAME.safetensors``.

Defaults (the seed's are batch 256, lr 1e-4, AdamW; it gives no schedule):

- AdamW, lr 1e-4 for the encoder and 1e-3 for the new layers (they start from random
  weights and would barely move at the encoder's rate on a small set), weight decay
  0.05, gradients clipped to norm 1, linear warm-up over the first 5 % of the steps
  then cosine decay;
- ``epochs`` passes over the training crops (3), with a floor of ``min_steps`` optimizer
  steps (200) so that a small set still gets a schedule worth the name;
- batch 256, split into micro-batches whose gradients are accumulated; on CUDA a
  micro-batch that runs out of memory is halved and the step retried, so the largest micro-batch that fits is found without
  the user guessing. The accumulated gradient is that of the whole batch except for
  the batch norm of the new layers, whose statistics are each micro-batch's (a run
  with other micro-batches is therefore close to, not equal to, one without);
- bf16 autocast on CUDA when the GPU supports it (fp32 otherwise and on the CPU);
  gradient checkpointing of the transformer blocks (less memory for ~30 % more compute).

Validation after every epoch: macro F1 and accuracy of the classifier on at most
``val_frames`` crops of Validation_Set spread evenly over it; the epoch with the best
F1 is kept (the last one without validation crops). The state is saved to
``OUT.resume/`` after every epoch and every ``save_every`` steps; ``resume`` continues
from it with the same data order.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, OutputError
from ..labels import EXPR_LABELS
from .checkpoint import ResumeState, load_resume, remove_resume, resume_dir, save_resume
from .face_crops import CropDataset, CropIndex, FaceAugment, collate_usable, index_crops, note_unreadable, spread
from .loop import check_train_output, lr_factor
from .losses import expr_class_weights
from .metrics import expr_macro_f1

log = logging.getLogger("affstream")

Progress = Callable[[dict[str, Any]], None]
PRECISIONS = ("auto", "fp32", "bf16")
WARMUP_FRACTION = 0.05
GRAD_CLIP = 1.0
METHOD = (
    "CLIP image encoder fine-tuned on Aff-Wild2-format EXPR labels: new fully connected layers on the "
    "L2-normalised embedding, every weight updated, class-weighted cross-entropy; the layers are dropped"
)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ImageTuneConfig:
    """A resolved image-encoder fine-tuning configuration (stored in the card).

    epochs: passes over the training crops; min_steps: floor on the optimizer steps of
    the run; batch_size: crops per optimizer step; micro_batch: crops per forward pass
    (None: the whole batch; halved automatically on a CUDA out-of-memory error).
    lr / head_lr: AdamW learning rates of the encoder and of the new layers.
    hidden: width of the new layers' hidden layer (None: the embedding width D).
    frame_step: use every k-th frame of each video. val_frames: most validation crops
    scored per epoch (None: all). precision: "auto", "fp32" or "bf16".
    """

    task: str = "expr"
    epochs: int = 3
    min_steps: int = 200
    batch_size: int = 256
    micro_batch: int | None = None
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.05
    hidden: int | None = None
    dropout: float = 0.1
    frame_step: int = 1
    val_frames: int | None = 20000
    precision: str = "auto"
    grad_checkpointing: bool = True
    augment: bool = True
    class_weights: bool = True
    save_every: int = 500
    seed: int = 0
    source: str = "crops"

    RESUME_FREE = ("save_every",)
    """Options that may differ on resume: the checkpoint cadence, not the result."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        problems = []
        if self.task != "expr":
            problems.append(f"task '{self.task}' must be expr")
        if self.epochs < 1 or self.min_steps < 0 or self.batch_size < 2:
            problems.append("epochs must be >= 1, batch size >= 2, min steps >= 0")
        if self.micro_batch is not None and self.micro_batch < 2:
            problems.append(f"micro-batch {self.micro_batch} must be >= 2")
        if not self.lr > 0 or not self.head_lr > 0:
            problems.append("learning rates must be > 0")
        if self.weight_decay < 0 or not 0 <= self.dropout < 1:
            problems.append("weight decay must be >= 0 and dropout in [0, 1)")
        if self.hidden is not None and self.hidden < 1:
            problems.append(f"hidden width {self.hidden} must be >= 1")
        if self.frame_step < 1 or (self.val_frames is not None and self.val_frames < 1):
            problems.append("frame step and validation frames must be >= 1")
        if self.precision not in PRECISIONS:
            problems.append(f"precision '{self.precision}' must be one of {', '.join(PRECISIONS)}")
        if self.save_every < 1:
            problems.append(f"save-every {self.save_every} must be >= 1")
        if self.source not in ("crops", "videos"):
            problems.append(f"source '{self.source}' must be crops or videos")
        if problems:
            raise ConfigError("image fine-tuning options: " + "; ".join(problems))


def default_workers() -> int:
    """Crop-loading processes: one core is left to the training itself (at most 8)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


# --------------------------------------------------------------------------- the model


class EncoderClassifier(nn.Module):
    """The open_clip image tower with new fully connected layers (module docstring).

    visual: open_clip's ``model.visual`` (images (B, 3, S, S) -> (B, D)); dim: D.
    """

    def __init__(self, visual: nn.Module, dim: int, hidden: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.visual = visual
        self.fc = nn.Sequential(
            nn.BatchNorm1d(dim, affine=False),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised crops -> (B, D) float32 L2-normalised embeddings."""
        return F.normalize(self.visual(images).float(), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 8) float32 logits (B >= 2 in training mode)."""
        return self.fc(self.embed(images))


# --------------------------------------------------------------------------- the run


@dataclass
class _ImageRun:
    cfg: ImageTuneConfig
    root: Path
    backbone: Any
    model: EncoderClassifier
    train: CropIndex
    val: CropIndex | None
    device: torch.device
    precision: str
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    class_weight: torch.Tensor | None
    workers: int
    micro: int
    augment: FaceAugment
    unreadable: set[Path] = dataclasses.field(default_factory=set)
    extraction: dict[str, Any] | None = None
    crops_dir: Path | None = None

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def warmup(self) -> int:
        return max(1, round(WARMUP_FRACTION * self.total_steps))


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on a CUDA GPU that supports it, else "fp32"; "bf16" on a CPU or a
    GPU without bf16 is refused (ConfigError)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and (device.type != "cuda" or not torch.cuda.is_bf16_supported()):
        raise ConfigError(f"bf16 training needs a CUDA GPU with bf16 support (device {device}); use --precision fp32")
    return precision


def sample_order(n: int, seed: int, start: int, count: int) -> np.ndarray:
    """Crop indices at sample positions ``start .. start + count - 1`` of the run's data
    order: pass p over the ``n`` crops is a permutation seeded by (seed, p), so a resumed
    run sees the same order without replaying anything."""
    out = np.empty(count, dtype=np.int64)
    filled, position = 0, start
    while filled < count:
        pass_index, offset = divmod(position, n)
        perm = np.random.default_rng([seed, pass_index]).permutation(n)
        take = min(count - filled, n - offset)
        out[filled : filled + take] = perm[offset : offset + take]
        filled, position = filled + take, position + take
    return out


def crop_loader(dataset: CropDataset, order: np.ndarray, batch_size: int, workers: int, device: torch.device,
                seed: int) -> torch.utils.data.DataLoader:
    """Batches of (uint8 crops, labels, dropped) of ``dataset`` in ``order``, loaded by
    ``workers`` processes (0: in this one)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order.tolist(),
        num_workers=workers,
        collate_fn=collate_usable,
        pin_memory=device.type == "cuda",
        generator=generator,
        worker_init_fn=_seed_worker,
        persistent_workers=False,
    )


def _loader(run: _ImageRun, dataset: CropDataset, order: np.ndarray, seed: int) -> torch.utils.data.DataLoader:
    return crop_loader(dataset, order, run.cfg.batch_size, run.workers, run.device, seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator (the augmentation draws from torch
    # only); one thread per loading process, the cores are for the training
    torch.set_num_threads(1)


def autocast(precision: str, device: torch.device):
    """bf16 autocast on ``device`` for precision "bf16", else a no-op context."""
    import contextlib

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _autocast(run: _ImageRun):
    return autocast(run.precision, run.device)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) micro-batches of ``size`` over ``n`` items; a last chunk of one item
    joins the one before (batch norm needs two)."""
    spans = [(start, min(start + size, n)) for start in range(0, n, size)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] == 1:
        spans[-2:] = [(spans[-2][0], n)]
    return spans


def _backward(run: _ImageRun, images: torch.Tensor, labels: torch.Tensor, step: int) -> torch.Tensor:
    """Accumulate the gradients of one batch over micro-batches; returns the batch loss.

    images: (B, 3, S, S) uint8, augmented here (parameters seeded by the step). Each
    micro-batch's weighted loss sum is divided by the whole batch's weight sum, so the
    accumulated gradient equals that of the batch in one pass, up to the batch norm's
    per-micro-batch statistics."""
    images = images.to(run.device, non_blocking=True)
    if run.cfg.augment:
        x_all = run.augment(images, torch.Generator().manual_seed(run.cfg.seed * 1_000_003 + step))
    else:
        x_all = run.augment.normalize(images)
    weight = run.class_weight
    labels = labels.to(run.device)
    denominator = weight[labels].sum() if weight is not None else torch.tensor(float(len(labels)), device=run.device)
    total = torch.zeros((), device=run.device)
    for start, stop in chunks(len(labels), run.micro):
        x, y = x_all[start:stop], labels[start:stop]
        with _autocast(run):
            logits = run.model(x)
        loss = F.cross_entropy(logits.float(), y, weight=weight, reduction="sum") / denominator
        loss.backward()
        total = total + loss.detach()
    return total


def _train_step(run: _ImageRun, images: torch.Tensor, labels: torch.Tensor, step: int) -> float:
    factor = lr_factor(step, run.total_steps, run.warmup)
    for group in run.optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    while True:
        run.optimizer.zero_grad(set_to_none=True)
        try:
            loss = _backward(run, images, labels, step)
            break
        except torch.cuda.OutOfMemoryError:
            if run.micro <= 2:
                raise ConfigError(
                    f"out of GPU memory with a micro-batch of 2 on {run.device}; use a smaller backbone or a larger GPU"
                ) from None
            run.micro = max(2, run.micro // 2)
            run.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            log.warning("out of GPU memory: micro-batch halved to %d (gradients accumulated to %d)",
                        run.micro, run.cfg.batch_size)
    value = float(loss)
    if not math.isfinite(value):
        raise ConfigError(f"training diverged at step {step + 1} (loss {value}); lower --lr / --head-lr "
                          "(the state saved before this step is kept for --resume)")
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), GRAD_CLIP)
    run.optimizer.step()
    return value


def train_epoch(
    loader,
    index: CropIndex,
    unreadable: set[Path],
    train_step: Callable[[torch.Tensor, torch.Tensor, int], float],
    save: Callable[[int, int], None],
    progress: Progress | None,
    *,
    step: int,
    epoch: int,
    steps_per_epoch: int,
    save_every: int,
    where: Path,
) -> tuple[list[float], int]:
    """The rest of one epoch over ``loader``'s batches of crops of ``index``: one
    ``train_step(images, labels, step)`` per batch with at least 2 readable crops,
    unreadable crops noted once in ``unreadable``, a ``step`` event per batch and a
    ``save(finished_epochs, step)`` every ``save_every`` steps within the epoch. Returns the
    batch losses and the step reached; DataError naming ``where`` if no batch could
    be trained on."""
    losses: list[float] = []
    for images, labels, dropped in loader:
        note_unreadable(unreadable, index, dropped)
        if len(labels) >= 2:
            losses.append(train_step(images, labels, step))
        step += 1
        if progress is not None:
            progress({"event": "step", "epoch": epoch, "step": step - (epoch - 1) * steps_per_epoch,
                      "steps": steps_per_epoch, "loss": losses[-1] if losses else None})
        if step % steps_per_epoch and step % save_every == 0:
            save(epoch - 1, step)
    if not losses:
        first = sorted(unreadable)[0] if unreadable else None
        raise DataError(f"{where}: no training step in epoch {epoch}: the batches held fewer than 2 readable crops "
                        f"({len(unreadable)} unreadable crops, first: {first}); replace or delete them")
    return losses, step


@torch.no_grad()
def evaluate_classifier(run: _ImageRun) -> dict[str, Any]:
    """Macro F1 and accuracy of the classifier on the validation crops ({} without)."""
    if run.val is None:
        return {}
    loader = _loader(run, CropDataset(run.val, run.backbone.image_size), np.arange(len(run.val)), run.cfg.seed)
    run.model.eval()
    truth, preds = [], []
    for images, labels, dropped in loader:
        note_unreadable(run.unreadable, run.val, dropped)
        x_all = run.augment.normalize(images.to(run.device, non_blocking=True))
        for start, stop in chunks(len(labels), run.micro):
            with _autocast(run):
                logits = run.model(x_all[start:stop])
            preds.append(logits.argmax(-1).cpu())
        truth.append(labels)
    if not truth or sum(len(t) for t in truth) == 0:
        log.warning("none of the %d validation crops could be read; the epoch is not scored", len(run.val))
        return {}
    y, p = torch.cat(truth).numpy(), torch.cat(preds).numpy()
    return {"expr_f1": expr_macro_f1(y, p), "accuracy": float((y == p).mean()), "frames": len(y)}


def default_crops_dir(out: str | Path) -> Path:
    """``OUT.crops`` beside the checkpoint ``OUT``: where ``source="videos"`` puts the crops."""
    from ..embed.card import backbone_paths

    stem = backbone_paths(out)[0].with_suffix("")
    return stem.with_name(stem.name + ".crops")


def _extract(root: Path, crops_dir: Path, cfg: ImageTuneConfig, backbone_spec: str, device: str,
             pipeline: Any, progress: Progress | None) -> dict[str, Any]:
    """Crops of every annotated person's video into ``crops_dir`` (resumable), through
    affstream's own detect/track/align steps."""
    from .video_crops import extract_crops

    def tick(name: str, done: int, total: int) -> None:
        if progress is not None:
            progress({"event": "extract", "video": name, "done": done, "total": total})

    summary = extract_crops(root, crops_dir, task=cfg.task, pipeline=pipeline, backbone=backbone_spec, device=device,
                            progress=tick)
    for name, message in sorted(summary["failed"].items()):
        log.warning("%s: no crops (%s)", name, message)
    log.info("%s: crops of %d people written, %d already there, %d failed", crops_dir, summary["people"],
             summary["skipped_existing"], len(summary["failed"]))
    return summary


def _setup(root: Path, cfg: ImageTuneConfig, backbone_spec: str, device: str, workers: int | None,
           crops_dir: Path | None = None, extraction: dict[str, Any] | None = None) -> _ImageRun:
    from ..embed.backbone import load_backbone
    from ..runtime import resolve_device

    train = index_crops(root, "Train_Set", cfg.task, frame_step=cfg.frame_step, crops_root=crops_dir)
    try:
        val_all = index_crops(root, "Validation_Set", cfg.task, crops_root=crops_dir)
        val = val_all.subset(spread(len(val_all), cfg.val_frames))
    except DataError as exc:
        log.warning("%s; keeping the last epoch without validation", exc)
        val = None
    dev = resolve_device(device)
    precision = resolve_precision(cfg.precision, dev)
    backbone = load_backbone(backbone_spec, dev, precision="fp32")
    if not backbone.meaningful:
        log.warning("%s has random (or meaningless) weights: the fine-tuned backbone is for tests only, its card says so",
                    backbone.spec)
    torch.manual_seed(cfg.seed)
    clip = backbone.model
    for param in clip.visual.parameters():
        param.requires_grad_(True)
    if cfg.grad_checkpointing and hasattr(clip.visual, "set_grad_checkpointing"):
        clip.visual.set_grad_checkpointing(True)
    dim = backbone.feature_dim
    model = EncoderClassifier(clip.visual, dim, cfg.hidden or dim, len(EXPR_LABELS), cfg.dropout).to(dev)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.visual.parameters()), "lr": cfg.lr, "base_lr": cfg.lr},
            {"params": list(model.fc.parameters()), "lr": cfg.head_lr, "base_lr": cfg.head_lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    per_pass = max(1, len(train) // cfg.batch_size)
    steps = max(per_pass, math.ceil(cfg.min_steps / cfg.epochs))
    weight = None
    if cfg.class_weights:
        weight = torch.tensor(expr_class_weights(train.labels), dtype=torch.float32, device=dev)
    if len(train) < cfg.batch_size:
        log.warning(
            "%s: %d training crops are fewer than one batch of %d; every step sees the same crops (augmented)",
            root, len(train), cfg.batch_size,
        )
    n_workers = default_workers() if workers is None else int(workers)
    micro = max(2, min(cfg.micro_batch or cfg.batch_size, cfg.batch_size))
    augment = FaceAugment(backbone.image_size, backbone.mean, backbone.std)
    return _ImageRun(cfg, root, backbone, model, train, val, dev, precision, optimizer, steps, weight, n_workers, micro,
                     augment, extraction=extraction, crops_dir=crops_dir)


def _check_output_is_no_input(out: Path, spec: str, crops_dir: str | Path | None) -> None:
    """ConfigError if OUT would replace the base weights or their card (or sit in the crops
    folder of ``source="videos"``)."""
    from ..embed.backbone import BackboneSpec
    from ..embed.card import check_not_input

    parsed = BackboneSpec.parse(spec)
    check_not_input(out, parsed.source if parsed.kind == "file" else None)
    if crops_dir is not None and Path(out).resolve().is_relative_to(Path(crops_dir).resolve()):
        raise ConfigError(f"{out}: inside the crops folder {crops_dir}; choose another -o")


def _state(model: EncoderClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def finetune_image(
    root: str | Path,
    *,
    backbone: str,
    out: str | Path,
    task: str = "expr",
    epochs: int = 3,
    min_steps: int = 200,
    batch_size: int = 256,
    micro_batch: int | None = None,
    lr: float = 1e-4,
    head_lr: float = 1e-3,
    weight_decay: float = 0.05,
    frame_step: int = 1,
    val_frames: int | None = 20000,
    precision: str = "auto",
    grad_checkpointing: bool = True,
    augment: bool = True,
    save_every: int = 500,
    seed: int = 0,
    source: str = "crops",
    crops_dir: str | Path | None = None,
    pipeline: Any = "default",
    device: str = "auto",
    workers: int | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tune ``backbone``'s image encoder on the EXPR crops of ``root``'s Train_Set.

    source: "crops" (``ROOT/cropped_aligned``) or "videos": first extract the annotated
    people's aligned crops from ``ROOT/videos`` with ``pipeline``'s detect/track/align
    settings into ``crops_dir`` (default OUT.crops/, kept and reused by later runs;
    :mod:`affstream.train.video_crops`), then train on them.

    out: checkpoint stem; writes OUT.safetensors (the whole open_clip model) + OUT.json
    (the backbone card) with the best epoch's weights, and OUT.resume/ while running
    (removed at the end); ``resume`` continues from it (same options, except
    micro_batch and save_every). workers: crop-loading processes (None: CPUs - 1, at
    most 8; 0: load in this process). Returns a summary: out, card, epochs,
    best_epoch, metrics, history, total_steps, micro_batch, precision, resumed_from.
    """
    cfg = ImageTuneConfig(
        task=task, epochs=epochs, min_steps=min_steps, batch_size=batch_size, micro_batch=micro_batch, lr=lr,
        head_lr=head_lr, weight_decay=weight_decay, frame_step=frame_step, val_frames=val_frames,
        precision=precision, grad_checkpointing=grad_checkpointing, augment=augment, save_every=save_every, seed=seed,
        source=source,
    )
    cfg.check()
    out = Path(out)
    check_train_output(out)
    _check_output_is_no_input(out, backbone, crops_dir)
    rdir = resume_dir(out)
    saved = load_resume(rdir)
    if saved is not None and not resume:
        raise ConfigError(
            f"{rdir}: a resume state of an unfinished run exists; pass --resume to continue it or delete the folder to start over"
        )
    extraction, crops_root = None, None
    if cfg.source == "videos":
        crops_root = Path(crops_dir) if crops_dir is not None else default_crops_dir(out)
        extraction = _extract(Path(root), crops_root, cfg, backbone, device, pipeline, progress)
    run = _setup(Path(root), cfg, backbone, device, workers, crops_root, extraction)
    step, best_state, best_epoch, best_score, best_metrics, history = 0, None, 0, None, {}, []
    identity = {"backbone": backbone, "backbone_sha256": run.backbone.sha256, "root": str(Path(root).resolve()),
                "crops_dir": str(crops_root.resolve()) if crops_root is not None else None}
    if saved is not None:
        wanted = {k: v for k, v in {**cfg.to_dict(), **identity}.items() if k not in ImageTuneConfig.RESUME_FREE}
        differing = sorted(k for k, v in wanted.items() if saved.config.get(k) != v)
        if differing:
            raise ConfigError(
                f"{rdir}: saved run used different {', '.join(differing)}; resume with the same options or delete the "
                "folder to start over"
            )
        run.model.load_state_dict(saved.model)
        run.optimizer.load_state_dict(saved.optimizer)
        torch.set_rng_state(saved.rng_torch)
        if saved.rng_cuda and run.device.type == "cuda":
            torch.cuda.set_rng_state_all(saved.rng_cuda)
        step = saved.step
        best_state = saved.best or None
        best_epoch, best_score, best_metrics, history = saved.best_epoch, saved.best_score, saved.best_metrics, saved.history
    resumed_from = step
    if progress is not None:
        progress({"event": "start", "epochs": cfg.epochs, "first_epoch": step // run.steps_per_epoch + 1,
                  "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps, "train_crops": len(run.train),
                  "val_crops": len(run.val) if run.val is not None else 0})
    dataset = CropDataset(run.train, run.backbone.image_size)

    def save(epochs_done: int, step: int) -> None:
        state = ResumeState(
            epoch=epochs_done, step=step, config={**cfg.to_dict(), **identity}, model=_state(run.model),
            best=best_state or {}, optimizer=run.optimizer.state_dict(), rng_torch=torch.get_rng_state(),
            rng_cuda=list(torch.cuda.get_rng_state_all()) if run.device.type == "cuda" else [],
            best_epoch=best_epoch, best_score=best_score, best_metrics=best_metrics, history=history,
        )
        try:
            save_resume(rdir, state)
        except OutputError as exc:
            raise OutputError(f"{exc}; fine-tuning stopped at step {step}") from None

    while step < run.total_steps:
        epoch = step // run.steps_per_epoch + 1
        in_epoch = step % run.steps_per_epoch
        remaining = run.steps_per_epoch - in_epoch
        order = sample_order(len(run.train), cfg.seed, step * cfg.batch_size, remaining * cfg.batch_size)
        run.model.train()
        loader = _loader(run, dataset, order, cfg.seed * 1_000_003 + step)
        losses, step = train_epoch(loader, run.train, run.unreadable, lambda x, y, k: _train_step(run, x, y, k),
                                   save, progress, step=step, epoch=epoch, steps_per_epoch=run.steps_per_epoch,
                                   save_every=cfg.save_every, where=root)
        metrics = evaluate_classifier(run)
        score = metrics.get("expr_f1")
        if best_score is None or score is None or score > best_score:
            best_state, best_epoch, best_score, best_metrics = _state(run.model), epoch, score, metrics
        train_loss = float(np.mean(losses)) if losses else None
        history.append({"epoch": epoch, "train_loss": train_loss, "score": score})
        save(epoch, step)
        log.info("epoch %d/%d: loss %s, validation EXPR F1 %s", epoch, cfg.epochs, train_loss, score)
        if progress is not None:
            progress({"event": "epoch", "epoch": epoch, "epochs": cfg.epochs, "train_loss": train_loss,
                      "metrics": metrics, "score": score, "best_epoch": best_epoch})
    return _finish(run, out, rdir, backbone, best_state, best_epoch, best_metrics, history, resumed_from)


def _finish(run: _ImageRun, out: Path, rdir: Path, backbone_spec: str, best_state, best_epoch: int,
            best_metrics: dict[str, Any], history: list[dict[str, Any]], resumed_from: int) -> dict[str, Any]:
    from ..embed.card import write_backbone

    if best_state:
        run.model.load_state_dict(best_state)
    bb = run.backbone
    cfg = run.cfg
    card = {
        "arch": bb.spec.arch,
        "base": str(bb.spec),
        "base_sha256": bb.sha256,
        "meaningful": bool(bb.meaningful),
        "method": METHOD,
        "task": cfg.task,
        "labels": list(EXPR_LABELS),
        "feature_dim": bb.feature_dim,
        "image_size": bb.image_size,
        "training": {
            **cfg.to_dict(),
            "steps_per_epoch": run.steps_per_epoch,
            "total_steps": run.total_steps,
            "warmup_steps": run.warmup,
            "grad_clip": GRAD_CLIP,
            "micro_batch_used": run.micro,
            "precision_used": run.precision,
            "device": str(run.device),
            "differs_from_paper": {
                "head_lr": "the seed gives one lr (1e-4); the new layers get 1e-3 because they start from random weights",
                "schedule": "the seed gives none; warm-up over 5 % of the steps, then cosine decay",
                "epochs": "the seed gives none; 3 passes, at least 200 steps",
            },
        },
        "data": {
            "root": str(run.root.resolve()),
            "train_people": len(run.train.people),
            "train_crops": len(run.train),
            "train_class_counts": dict(zip(EXPR_LABELS, run.train.class_counts(), strict=True)),
            "val_people": len(run.val.people) if run.val is not None else 0,
            "val_crops": len(run.val) if run.val is not None else 0,
            "people_without_crops": list(run.train.skipped),
            "unreadable_crops_dropped": len(run.unreadable),
            "source": cfg.source,
            **({"crops_dir": str(run.crops_dir), "extraction": run.extraction} if run.extraction else {}),
        },
        "metrics": {**copy.deepcopy(best_metrics), "epoch": best_epoch, "split": "Validation_Set"} if best_metrics else {},
        "history": history,
    }
    try:
        weights = write_backbone(bb.model.state_dict(), out, card)
    except OutputError as exc:
        raise OutputError(f"{exc}; the fine-tuned backbone was not written, its last state is kept in {rdir}: "
                          "make the output writable and run the same command with --resume") from None
    remove_resume(rdir)
    from ..embed.card import backbone_paths

    return {
        "out": str(weights),
        "card": str(backbone_paths(out)[1]),
        "arch": bb.spec.arch,
        "epochs": cfg.epochs,
        "best_epoch": best_epoch,
        "metrics": best_metrics,
        "history": history,
        "total_steps": run.total_steps,
        "micro_batch": run.micro,
        "precision": run.precision,
        "resumed_from": resumed_from,
    }
