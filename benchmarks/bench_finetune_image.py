"""Step time and peak memory of image-encoder fine-tuning (``affstream finetune image``).

Runs the real training step of :mod:`affstream.train.encoder` (augmentation on the
device, micro-batches with gradient accumulation, class-weighted cross-entropy, AdamW)
on random uint8 crops, so that only the model's compute is measured (crop loading runs
in separate processes during training). Settings: gradient checkpointing off / on, and
on CUDA fp32 / bf16. Prints per setting the median seconds per optimizer step, crops per
second and the peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS,
which only grows, so run one setting per process for CPU memory).

    python benchmarks/bench_finetune_image.py --backbone ViT-L-14:random --batch 256 --device cuda
    python benchmarks/bench_finetune_image.py --backbone ViT-B-32:random --batch 32 --micro 16 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import numpy as np
import torch


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-L-14:random", help="ARCH:SOURCE (random weights time the same)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=256, help="crops per optimizer step")
    parser.add_argument("--micro", type=int, default=None, help="crops per forward pass [the whole batch]")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per setting")
    parser.add_argument("--settings", default=None,
                        help="comma-separated of gc-off,gc-on[,bf16-gc-off,bf16-gc-on] [all that apply]")
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser.parse_args()


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(args: argparse.Namespace, device: torch.device, precision: str, checkpointing: bool) -> dict:
    from affstream.embed.backbone import load_backbone
    from affstream.train.encoder import EncoderClassifier, ImageTuneConfig, _ImageRun, _train_step
    from affstream.train.face_crops import CropIndex, FaceAugment

    cfg = ImageTuneConfig(batch_size=args.batch, micro_batch=args.micro, precision=precision,
                          grad_checkpointing=checkpointing)
    backbone = load_backbone(args.backbone, device, precision="fp32")
    visual = backbone.model.visual
    for p in visual.parameters():
        p.requires_grad_(True)
    visual.set_grad_checkpointing(checkpointing)
    model = EncoderClassifier(visual, backbone.feature_dim, backbone.feature_dim, 8, cfg.dropout).to(device).train()
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}],
                                  weight_decay=cfg.weight_decay)
    empty = CropIndex("bench", (), np.zeros(0, np.int64), np.zeros(0, np.int64), ())
    run = _ImageRun(cfg, None, backbone, model, empty, None, device, precision, optimizer, 1000, None, 0,
                    max(2, min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)),
                    FaceAugment(backbone.image_size, backbone.mean, backbone.std))
    size = backbone.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 8, (args.batch,), generator=g)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        _train_step(run, images, labels, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    result = {"backbone": args.backbone, "device": str(device), "precision": precision, "grad_checkpointing": checkpointing,
              "batch": args.batch, "micro_batch_used": run.micro, "step_s": round(seconds, 3),
              "crops_per_s": round(args.batch / seconds, 1), "peak_mb": round(_peak_mb(device)),
              "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    del run, model, optimizer, backbone
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    args = _parse()
    from affstream.runtime import resolve_device

    device = resolve_device(args.device)
    settings = ["gc-off", "gc-on"]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        settings += ["bf16-gc-off", "bf16-gc-on"]
    if args.settings:
        settings = [s.strip() for s in args.settings.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"# {name}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for setting in settings:
        precision = "bf16" if setting.startswith("bf16") else "fp32"
        try:
            result = _run(args, device, precision, setting.endswith("gc-on"))
        except torch.cuda.OutOfMemoryError:
            result = {"setting": setting, "error": "out of memory"}
        result["setting"] = setting
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": name, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
