"""CLEF's optional first stage: weakly supervised contrastive pre-training of both CLIP towers.

Images recorded under the same coarse condition (an activity, a task, a stimulus: a
*group*) are positives of each other, and of the group's text. The data come from a
*group manifest*, a CSV file with a header and one line per face crop, in one of two
forms::

    crop,group,text                       crop: an image path (relative to ROOT or absolute)
    person,frame,group,text               ROOT/cropped_aligned/PERSON/%05d.jpg, frame 1-based

``group`` is any non-empty id; ``text`` describes the group ("the subject is watching a
funny video") and must be the same on every line of one group. With two augmented views
of every crop of a batch, L2-normalised image embeddings ``v`` (2B, D), the embeddings
``t`` (G', D) of the G' group texts present in the batch, and ``g`` each view's group::

    L_II = SupCon(v, g, tau = 0.1)       positives: the other view and every view of the same group
    L_IT = (CE(s v t^T, g) + multi-positive CE(s t v^T)) / 2      s: CLIP's learnable logit scale
    L    = (L_II + L_IT) / 2

(:func:`supcon_loss`, :func:`image_text_loss`). Every weight of both towers and the
logit scale are trained (AdamW, lr 1e-5, weight decay 0.05, warm-up over 5 % of the
steps then cosine decay, gradients clipped to norm 1; bf16 autocast on CUDA and gradient
checkpointing as for :mod:`affstream.train.encoder`, whose crop loading, augmentation
and resume machinery this reuses). A contrastive loss over the batch cannot be split
into micro-batches, so a batch that does not fit on the GPU is an error saying to lower
``--batch-size``.

The result is a backbone checkpoint (:mod:`affstream.embed.card`): build a feature bank
with it (``affstream features --backbone ARCH:/path/NAME.safetensors``), then fine-tune
its text encoder into a CLEF head (``affstream finetune text``), or fine-tune its image
encoder further on labels (``affstream finetune image --backbone ARCH:/path/NAME.safetensors``).
There is no validation (the groups are not labels of the tasks); the last epoch is kept.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError, OutputError
from .checkpoint import ResumeState, load_resume, remove_resume, resume_dir, save_resume
from .encoder import (
    GRAD_CLIP,
    WARMUP_FRACTION,
    autocast,
    crop_loader,
    default_workers,
    resolve_precision,
    sample_order,
    train_epoch,
)
from .face_crops import CropDataset, CropIndex, FaceAugment
from .features import CROPS_DIR
from .loop import check_train_output, lr_factor

log = logging.getLogger("affstream")

Progress = Callable[[dict[str, Any]], None]
SUPCON_TAU = 0.1
MAX_MANIFEST_BYTES = 1 << 30
METHOD = (
    "CLEF weakly supervised contrastive pre-training: image-image (same group, two augmented views) and "
    "image-group-text positives, both CLIP towers and the logit scale trained"
)


# --------------------------------------------------------------------------- losses


def supcon_loss(embeddings: torch.Tensor, groups: torch.Tensor, tau: float = SUPCON_TAU) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al.) of L2-normalised ``embeddings`` (N, D)
    with group ids ``groups`` (N,): for every anchor with at least one positive (another
    row of its group), minus the mean log-probability of its positives under a softmax
    over all other rows of ``cos / tau``; averaged over those anchors. 0-d tensor."""
    n = embeddings.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    sim = (embeddings @ embeddings.T / tau).masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = (groups[:, None] == groups[None, :]) & ~eye
    count = positive.sum(1)
    anchors = count > 0
    if not anchors.any():
        return embeddings.sum() * 0.0
    mean_pos = log_prob.masked_fill(~positive, 0.0).sum(1)[anchors] / count[anchors]
    return -mean_pos.mean()


def image_text_loss(images: torch.Tensor, texts: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric image-text contrastive loss with several images per text.

    images: (N, D) and texts: (G, D) L2-normalised; target: (N,) index of each image's
    text; scale: the logit scale. Image to text: cross-entropy over the G texts; text to
    images: for every text with images, minus the mean log-probability of its images
    under a softmax over all N. Returns the mean of the two, 0-d."""
    logits = scale * images @ texts.T
    i2t = F.cross_entropy(logits, target)
    by_text = logits.T
    log_prob = by_text - torch.logsumexp(by_text, dim=1, keepdim=True)
    positive = target[None, :] == torch.arange(texts.shape[0], device=texts.device)[:, None]
    count = positive.sum(1)
    has = count > 0
    t2i = -(log_prob.masked_fill(~positive, 0.0).sum(1)[has] / count[has]).mean()
    return (i2t + t2i) / 2


def pretrain_loss(l_ii: torch.Tensor, l_it: torch.Tensor) -> torch.Tensor:
    """L = (L_II + L_IT) / 2."""
    return (l_ii + l_it) / 2


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class GroupIndex:
    """The crops of a group manifest: ``crops`` (labels = group index 0..G-1), the group
    ids and their texts (G each), and the manifest's path."""

    crops: CropIndex
    groups: tuple[str, ...]
    texts: tuple[str, ...]
    manifest: Path


def read_group_manifest(path: str | Path, root: str | Path) -> GroupIndex:
    """Read and check a group manifest (module docstring). DataError naming the file and
    line for a missing file, a bad header, an empty field, a bad frame number, a crop
    that does not exist, a group given two texts, or fewer than two groups."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DataError(f"{path}: group manifest not found; give a CSV with columns crop,group,text "
                        "or person,frame,group,text")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"{path}: larger than {MAX_MANIFEST_BYTES:,} bytes; split it")
    paths: list[Path] = []
    group_of: list[int] = []
    ids: dict[str, int] = {}
    texts: list[str] = []
    text_line: list[int] = []
    seen: dict[tuple[str, str], int] = {}
    duplicates = 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip() for f in reader.fieldnames or []]
            repeated = sorted({f for f in fields if fields.count(f) > 1 and f})
            if repeated:
                raise DataError(f"{path}:1: column {', '.join(repeated)} appears twice in the header; keep one")
            if {"crop", "group", "text"} <= set(fields):
                form = "crop"
            elif {"person", "frame", "group", "text"} <= set(fields):
                form = "person"
            else:
                raise DataError(f"{path}:1: header {','.join(fields) or '(empty)'} lacks crop,group,text or "
                                "person,frame,group,text; add the header line")
            reader.fieldnames = fields
            for row in reader:
                line = reader.line_num
                values = {k: (row.get(k) or "").strip() for k in fields}
                wanted = ("crop", "group", "text") if form == "crop" else ("person", "frame", "group", "text")
                empty = [k for k in wanted if not values[k]]
                if empty:
                    raise DataError(f"{path}:{line}: empty {', '.join(empty)}; fill every field or remove the line")
                if form == "crop":
                    crop = Path(values["crop"])
                    crop = crop if crop.is_absolute() else root / crop
                else:
                    try:
                        frame = int(values["frame"])
                    except ValueError:
                        frame = 0
                    if frame < 1:
                        raise DataError(f"{path}:{line}: frame '{values['frame']}' is not a frame number (1, 2, ...)")
                    crop = root / CROPS_DIR / values["person"] / f"{frame:05d}.jpg"
                if not crop.is_file():
                    raise DataError(f"{path}:{line}: crop {crop} not found; fix the path or remove the line")
                group = values["group"]
                if group not in ids:
                    ids[group] = len(ids)
                    texts.append(values["text"])
                    text_line.append(line)
                elif texts[ids[group]] != values["text"]:
                    raise DataError(f"{path}:{line}: group '{group}' has another text than on line "
                                    f"{text_line[ids[group]]}; give one text per group")
                key = (str(crop), group)
                if key in seen:
                    duplicates += 1
                    continue
                seen[key] = line
                paths.append(crop)
                group_of.append(ids[group])
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the manifest as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    if len(ids) < 2:
        raise DataError(f"{path}: {len(ids)} group(s); contrastive pre-training needs at least two")
    if duplicates:
        log.warning("%s: %d repeated line(s) (same crop and group) read once", path, duplicates)
    by_text: dict[str, list[str]] = {}
    for group, text in zip(ids, texts, strict=True):
        by_text.setdefault(text, []).append(group)
    shared = [groups for groups in by_text.values() if len(groups) > 1]
    if shared:
        raise DataError(f"{path}: groups {', '.join(shared[0])} have the same text; give each group its own text "
                        "or merge them into one group")
    labels = np.asarray(group_of, dtype=np.int64)
    crops = CropIndex("groups", tuple(paths), labels, np.zeros(len(paths), np.int64), ("manifest",))
    return GroupIndex(crops, tuple(ids), tuple(texts), path)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PretrainConfig:
    """A resolved pre-training configuration (stored in the card); fields as in
    :class:`affstream.train.encoder.ImageTuneConfig`, plus ``tau`` (image-image)."""

    epochs: int = 3
    min_steps: int = 200
    batch_size: int = 128
    lr: float = 1e-5
    weight_decay: float = 0.05
    tau: float = SUPCON_TAU
    precision: str = "auto"
    grad_checkpointing: bool = True
    save_every: int = 500
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        problems = []
        if self.epochs < 1 or self.min_steps < 0 or self.batch_size < 2:
            problems.append("epochs must be >= 1, batch size >= 2, min steps >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or not self.tau > 0:
            problems.append("lr and tau must be > 0, weight decay >= 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append(f"precision '{self.precision}' must be auto, fp32 or bf16")
        if self.save_every < 1:
            problems.append(f"save-every {self.save_every} must be >= 1")
        if problems:
            raise ConfigError("pre-training options: " + "; ".join(problems))


# --------------------------------------------------------------------------- the run


@dataclass
class _PretrainRun:
    cfg: PretrainConfig
    data: GroupIndex
    backbone: Any
    tokens: torch.Tensor
    device: torch.device
    precision: str
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    augment: FaceAugment
    workers: int
    unreadable: set[Path] = dataclasses.field(default_factory=set)

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch


def batch_loss(run: _PretrainRun, images: torch.Tensor, groups: torch.Tensor, step: int) -> tuple[torch.Tensor, ...]:
    """(L, L_II, L_IT) of one batch of uint8 crops (B, 3, S, S) with group indices (B,)."""
    clip = run.backbone.model
    images = images.to(run.device, non_blocking=True)
    generator = torch.Generator().manual_seed(run.cfg.seed * 1_000_003 + step)
    views = torch.cat([run.augment(images, generator), run.augment(images, generator)])
    groups = groups.to(run.device).repeat(2)
    present, target = torch.unique(groups, return_inverse=True)
    with autocast(run.precision, run.device):
        v = F.normalize(clip.encode_image(views).float(), dim=-1)
        t = F.normalize(clip.encode_text(run.tokens[present.cpu()].to(run.device)).float(), dim=-1)
    scale = clip.logit_scale.exp().clamp(max=100.0)
    l_ii = supcon_loss(v, groups, run.cfg.tau)
    l_it = image_text_loss(v, t, target, scale)
    return pretrain_loss(l_ii, l_it), l_ii.detach(), l_it.detach()


def _setup(root: Path, manifest: Path, cfg: PretrainConfig, spec: str, device: str, workers: int | None) -> _PretrainRun:
    import open_clip

    from ..embed.backbone import load_backbone
    from ..runtime import resolve_device
    from ..weights import open_clip_logs

    data = read_group_manifest(manifest, root)
    dev = resolve_device(device)
    precision = resolve_precision(cfg.precision, dev)
    backbone = load_backbone(spec, dev, precision="fp32")
    if not backbone.meaningful:
        log.warning("%s has random (or meaningless) weights: the pre-trained backbone is for tests only, its card says so",
                    backbone.spec)
    clip = backbone.model
    for param in clip.parameters():
        param.requires_grad_(True)
    if cfg.grad_checkpointing and hasattr(clip, "set_grad_checkpointing"):
        clip.set_grad_checkpointing(True)
    with open_clip_logs():
        tokens = open_clip.get_tokenizer(backbone.spec.arch)(list(data.texts))
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in clip.parameters() if p.requires_grad], "lr": cfg.lr, "base_lr": cfg.lr}],
        weight_decay=cfg.weight_decay,
    )
    per_pass = max(1, len(data.crops) // cfg.batch_size)
    steps = max(per_pass, math.ceil(cfg.min_steps / cfg.epochs))
    augment = FaceAugment(backbone.image_size, backbone.mean, backbone.std)
    n_workers = default_workers() if workers is None else int(workers)
    return _PretrainRun(cfg, data, backbone, tokens, dev, precision, optimizer, steps, augment, n_workers)


def _check_output_is_no_input(out: Path, spec: str, manifest: str | Path) -> None:
    from ..embed.backbone import BackboneSpec
    from ..embed.card import check_not_input

    parsed = BackboneSpec.parse(spec)
    check_not_input(out, parsed.source if parsed.kind == "file" else None, manifest)


def _train_step(run: _PretrainRun, images: torch.Tensor, groups: torch.Tensor, step: int) -> float:
    factor = lr_factor(step, run.total_steps, max(1, round(WARMUP_FRACTION * run.total_steps)))
    for group in run.optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    run.optimizer.zero_grad(set_to_none=True)
    try:
        loss, _, _ = batch_loss(run, images, groups, step)
        loss.backward()
    except torch.cuda.OutOfMemoryError:
        raise ConfigError(
            f"out of GPU memory at a batch of {run.cfg.batch_size} on {run.device} (a contrastive batch cannot be "
            "split); lower --batch-size"
        ) from None
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ConfigError(f"training diverged at step {step + 1} (loss {value}); lower --lr "
                          "(the state saved before this step is kept for --resume)")
    torch.nn.utils.clip_grad_norm_(run.backbone.model.parameters(), GRAD_CLIP)
    run.optimizer.step()
    return value


def pretrain_groups(
    root: str | Path,
    *,
    groups: str | Path,
    backbone: str,
    out: str | Path,
    epochs: int = 3,
    min_steps: int = 200,
    batch_size: int = 128,
    lr: float = 1e-5,
    weight_decay: float = 0.05,
    precision: str = "auto",
    grad_checkpointing: bool = True,
    save_every: int = 500,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Pre-train ``backbone``'s two towers on the group manifest ``groups`` (crops under
    ``root``); write OUT.safetensors + OUT.json (a backbone checkpoint of the last epoch),
    with OUT.resume/ while running. Returns out, card, arch, epochs, history,
    total_steps, precision, resumed_from."""
    cfg = PretrainConfig(epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         precision=precision, grad_checkpointing=grad_checkpointing, save_every=save_every, seed=seed)
    cfg.check()
    out = Path(out)
    check_train_output(out)
    _check_output_is_no_input(out, backbone, groups)
    rdir = resume_dir(out)
    saved = load_resume(rdir)
    if saved is not None and not resume:
        raise ConfigError(f"{rdir}: a resume state of an unfinished run exists; pass --resume to continue it or "
                          "delete the folder to start over")
    run = _setup(Path(root), Path(groups), cfg, backbone, device, workers)
    clip = run.backbone.model
    step, history = 0, []
    from ..files import sha256_file

    wanted = {**{k: v for k, v in cfg.to_dict().items() if k != "save_every"}, "backbone": backbone,
              "backbone_sha256": run.backbone.sha256, "root": str(Path(root).resolve()),
              "manifest": str(run.data.manifest.resolve()), "manifest_sha256": sha256_file(run.data.manifest)}
    if saved is not None:
        differing = sorted(k for k, v in wanted.items() if saved.config.get(k) != v)
        if differing:
            raise ConfigError(f"{rdir}: saved run used different {', '.join(differing)}; resume with the same "
                              "options or delete the folder to start over")
        clip.load_state_dict(saved.model)
        run.optimizer.load_state_dict(saved.optimizer)
        torch.set_rng_state(saved.rng_torch)
        if saved.rng_cuda and run.device.type == "cuda":
            torch.cuda.set_rng_state_all(saved.rng_cuda)
        step, history = saved.step, saved.history
    resumed_from = step
    if progress is not None:
        progress({"event": "start", "epochs": cfg.epochs, "first_epoch": step // run.steps_per_epoch + 1,
                  "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps,
                  "crops": len(run.data.crops), "groups": len(run.data.groups)})
    dataset = CropDataset(run.data.crops, run.backbone.image_size)

    def save(epochs_done: int, step: int) -> None:
        state = ResumeState(epoch=epochs_done, step=step, config=wanted,
                            model={k: v.detach().cpu().clone() for k, v in clip.state_dict().items()}, best={},
                            optimizer=run.optimizer.state_dict(), rng_torch=torch.get_rng_state(),
                            rng_cuda=list(torch.cuda.get_rng_state_all()) if run.device.type == "cuda" else [],
                            history=history)
        try:
            save_resume(rdir, state)
        except OutputError as exc:
            raise OutputError(f"{exc}; pre-training stopped at step {step}") from None

    while step < run.total_steps:
        epoch = step // run.steps_per_epoch + 1
        remaining = run.steps_per_epoch - step % run.steps_per_epoch
        order = sample_order(len(run.data.crops), cfg.seed, step * cfg.batch_size, remaining * cfg.batch_size)
        clip.train()
        loader = crop_loader(dataset, order, cfg.batch_size, run.workers, run.device, cfg.seed * 1_000_003 + step)
        losses, step = train_epoch(loader, run.data.crops, run.unreadable, lambda x, y, k: _train_step(run, x, y, k),
                                   save, progress, step=step, epoch=epoch, steps_per_epoch=run.steps_per_epoch,
                                   save_every=cfg.save_every, where=run.data.manifest)
        train_loss = float(np.mean(losses)) if losses else None
        history.append({"epoch": epoch, "train_loss": train_loss})
        save(epoch, step)
        log.info("epoch %d/%d: loss %s", epoch, cfg.epochs, train_loss)
        if progress is not None:
            progress({"event": "epoch", "epoch": epoch, "epochs": cfg.epochs, "train_loss": train_loss})
    return _finish(run, out, rdir, history, resumed_from)


def _finish(run: _PretrainRun, out: Path, rdir: Path, history: list[dict[str, Any]], resumed_from: int) -> dict[str, Any]:
    from ..embed.card import backbone_paths, write_backbone
    from ..files import sha256_file

    bb, cfg = run.backbone, run.cfg
    counts = np.bincount(run.data.crops.labels, minlength=len(run.data.groups))
    card = {
        "arch": bb.spec.arch,
        "base": str(bb.spec),
        "base_sha256": bb.sha256,
        "meaningful": bool(bb.meaningful),
        "method": METHOD,
        "feature_dim": bb.feature_dim,
        "image_size": bb.image_size,
        "training": {
            **cfg.to_dict(),
            "steps_per_epoch": run.steps_per_epoch,
            "total_steps": run.total_steps,
            "grad_clip": GRAD_CLIP,
            "precision_used": run.precision,
            "device": str(run.device),
            "logit_scale": float(bb.model.logit_scale.detach().exp()),
        },
        "data": {
            "manifest": str(run.data.manifest.resolve()),
            "manifest_sha256": sha256_file(run.data.manifest),
            "crops": len(run.data.crops),
            "groups": {g: {"text": t, "crops": int(c)} for g, t, c in zip(run.data.groups, run.data.texts, counts,
                                                                          strict=True)},
            "unreadable_crops_dropped": len(run.unreadable),
        },
        "metrics": {},
        "history": history,
    }
    try:
        weights = write_backbone(bb.model.state_dict(), out, card)
    except OutputError as exc:
        raise OutputError(f"{exc}; the pre-trained backbone was not written, its last state is kept in {rdir}: "
                          "make the output writable and run the same command with --resume") from None
    remove_resume(rdir)
    return {"out": str(weights), "card": str(backbone_paths(out)[1]), "arch": bb.spec.arch, "epochs": cfg.epochs,
            "history": history, "total_steps": run.total_steps, "precision": run.precision,
            "resumed_from": resumed_from}
