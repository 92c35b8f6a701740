"""Command line for fine-tuning: ``affstream finetune text`` (the CLEF text-driven head)
and ``affstream finetune image`` (the CLIP image encoder, written as a backbone).

As the other training commands: nothing heavy is imported until the command runs,
progress goes to stderr, a user error is one ``error: ...`` line with exit code 2, a
write that fails once the work is done is one line with exit code 1, Ctrl-C exits 130
saying what was kept.
"""

from __future__ import annotations

from pathlib import Path

import click

from . import _ui


@click.group("finetune")
def finetune_group() -> None:
    """Fine-tune CLIP parts: text (a CLEF head, on a feature bank), image (the image encoder, on face crops),
    pretrain (both towers, contrastively on grouped face crops)."""


@finetune_group.command("text")
@click.option("--features", "features_dir", required=True, type=click.Path(path_type=Path), help="Feature bank folder.")
@click.option("--task", type=click.Choice(["expr", "au"]), required=True, help="Task the text head learns.")
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Head checkpoint stem: writes OUT.safetensors and OUT.json (a head of kind 'text').",
)
@click.option(
    "--train",
    "train_part",
    type=click.Choice(["projection", "last", "all"]),
    default="projection",
    show_default=True,
    help="What is trained: the text projection, the last --blocks text blocks (+ final norm and "
    "projection), or the whole text encoder.",
)
@click.option("--blocks", type=click.IntRange(min=1), default=1, show_default=True, help="Text blocks trained with --train last.")
@click.option("--lr", type=float, default=None, help="Learning rate of the text encoder [projection 1e-2, last 1e-4, all 1e-5].")
@click.option(
    "--lambda",
    "lam",
    type=click.FloatRange(min=0.0),
    default=2.0,
    show_default=True,
    help="Weight of the image-to-label-name loss against the description loss: (lambda*L_IN + L_DN)/2.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--min-steps", type=click.IntRange(min=0), default=200, show_default=True, help="Floor on the run's optimizer steps."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Frames per batch.")
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=6,
    show_default=True,
    help="Stop after this many epochs without a better validation score (0: never).",
)
@click.option(
    "--au-holdout",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.2,
    show_default=True,
    help="Fraction of the training videos held out to tune the AU thresholds (--task au).",
)
@click.option(
    "--backbone", default=None, help="CLIP backbone ARCH:TAG whose text encoder is fine-tuned [the one the bank was built with]."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT.resume/.")
def finetune_text_command(
    features_dir,
    task,
    out,
    train_part,
    blocks,
    lr,
    lam,
    epochs,
    min_steps,
    batch_size,
    patience,
    au_holdout,
    backbone,
    seed,
    device,
    resume,
) -> None:
    """Fine-tune a CLEF text head: the backbone's text encoder turns prompts of the label
    names into the classifier; keeps the epoch with the best Validation_Set metric."""
    from ..errors import AffstreamError, OutputError

    console = _ui.stderr_console()
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ..train.clef import finetune_text
        from ..train.loop import check_train_output

        check_train_output(out)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "nothing was written")
    columns = (
        TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
    )
    saved = []
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task_id = bar.add_task("finetune", total=None, epoch=0, epochs=0)

            def progress(event: dict) -> None:
                if event["event"] == "start":
                    bar.update(task_id, epochs=event["epochs"], epoch=event["first_epoch"])
                elif event["event"] == "step":
                    bar.update(task_id, epoch=event["epoch"], completed=event["step"], total=event["steps"])
                elif event["event"] == "epoch":
                    saved.append(event["epoch"])
                    key = "expr_f1" if task == "expr" else "au_f1"
                    metric = f"{key}={event['metrics'][key]:.4f}" if key in event["metrics"] else "no validation"
                    star = " *" if event["best_epoch"] == event["epoch"] else ""
                    bar.console.print(
                        f"epoch {event['epoch']}/{event['epochs']}: loss {event['train_loss']:.4f}  {metric}{star}",
                        soft_wrap=True,
                        markup=False,
                    )

            summary = finetune_text(
                features_dir,
                task=task,
                out=out,
                train=train_part,
                blocks=blocks,
                lr=lr,
                lam=lam,
                epochs=epochs,
                min_steps=min_steps,
                batch_size=batch_size,
                patience=patience,
                au_holdout=au_holdout,
                seed=seed,
                backbone=backbone,
                device=device,
                resume=resume,
                progress=progress,
            )
    except OutputError as exc:
        _ui.fail(str(exc), _ui.EXIT_INPUT_FAILED)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(
            console,
            "the last finished epoch is saved; add --resume to continue"
            if saved or resume
            else "stopped before the first epoch finished; nothing was written",
        )
    key = "expr_f1" if task == "expr" else "au_f1"
    metric = f"{key}={summary['metrics'][key]:.4f}" if key in summary["metrics"] else "no validation"
    console.print(
        f"{summary['out']}: best epoch {summary['best_epoch']} of {summary['epochs']}, {metric}", soft_wrap=True, markup=False
    )


def _kept_on_interrupt(out: Path) -> str:
    """What an interrupted image or pre-training run leaves, from what is on disk."""
    from ..train.checkpoint import STATE_FILE, resume_dir

    rdir = resume_dir(out)
    if (rdir / STATE_FILE).is_file():
        return f"the last saved state is kept in {rdir}; run the same command with --resume to continue"
    return "no state was saved yet (one is saved every --save-every steps and after every epoch); nothing was written"


def _train_on_crops(out: Path, train, started, finished_epoch) -> dict:
    """Run ``train(progress)`` (image fine-tuning or pre-training) under a progress bar
    on stderr: ``started(event)`` and ``finished_epoch(event)`` give the text printed at
    the start and after every epoch's loss. Exits with one line on a user error (2) or a
    failed write (1), and says what is kept on Ctrl-C. Returns the run's summary."""
    from ..errors import AffstreamError, OutputError

    console = _ui.stderr_console()
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ..train.loop import check_train_output

        check_train_output(out)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "nothing was written")
    columns = (
        TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task_id = bar.add_task("train", total=None, epoch=0, epochs=0, loss="-")

            def progress(event: dict) -> None:
                kind = event["event"]
                if kind == "start":
                    bar.update(task_id, epochs=event["epochs"], epoch=event["first_epoch"])
                    bar.console.print(started(event), soft_wrap=True, markup=False)
                elif kind == "extract":
                    bar.update(task_id, completed=event["done"], total=event["total"], loss="(extracting crops)")
                elif kind == "step":
                    loss = "-" if event["loss"] is None else f"{event['loss']:.4f}"
                    bar.update(task_id, epoch=event["epoch"], completed=event["step"], total=event["steps"], loss=loss)
                elif kind == "epoch":
                    loss = "-" if event["train_loss"] is None else f"{event['train_loss']:.4f}"
                    extra = finished_epoch(event)
                    bar.console.print(f"epoch {event['epoch']}/{event['epochs']}: loss {loss}" + (f"  {extra}" if extra else ""),
                                      soft_wrap=True, markup=False)

            return train(progress)
    except OutputError as exc:
        _ui.fail(str(exc), _ui.EXIT_INPUT_FAILED)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, _kept_on_interrupt(out))


@finetune_group.command("image")
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--backbone", required=True, help="CLIP backbone ARCH:TAG (or ARCH:/path/weights) whose image encoder is fine-tuned."
)
@click.option("--task", type=click.Choice(["expr"]), default="expr", show_default=True, help="Labels the encoder learns.")
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Backbone checkpoint stem: writes OUT.safetensors (open_clip weights) and OUT.json (its card); "
    "use it as --backbone ARCH:OUT.safetensors.",
)
@click.option(
    "--source",
    type=click.Choice(["crops", "videos"]),
    default="crops",
    show_default=True,
    help="Organizers' face crops (cropped_aligned/) or raw videos (videos/) whose faces affstream's pipeline "
    "detects, tracks and aligns first.",
)
@click.option(
    "--crops-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="With --source videos: where the extracted crops go and are reused [OUT.crops/].",
)
@click.option(
    "--pipeline",
    default="default",
    show_default=True,
    help="With --source videos: preset or TOML file whose detect/track/align settings are used.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="Passes over the training crops.")
@click.option(
    "--min-steps", type=click.IntRange(min=0), default=200, show_default=True, help="Floor on the run's optimizer steps."
)
@click.option("--batch-size", type=click.IntRange(min=2), default=256, show_default=True, help="Crops per optimizer step.")
@click.option(
    "--micro-batch",
    type=click.IntRange(min=2),
    default=None,
    help="Crops per forward pass, gradients accumulated to --batch-size [the whole batch; halved automatically "
    "when a GPU runs out of memory].",
)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="AdamW learning rate of the encoder.")
@click.option("--head-lr", type=float, default=1e-3, show_default=True, help="Learning rate of the new layers.")
@click.option("--weight-decay", type=click.FloatRange(min=0.0), default=0.05, show_default=True)
@click.option(
    "--frame-step", type=click.IntRange(min=1), default=1, show_default=True, help="Use every k-th frame of each video."
)
@click.option(
    "--val-frames",
    type=click.IntRange(min=0),
    default=20000,
    show_default=True,
    help="Validation crops scored per epoch, spread over Validation_Set (0: all).",
)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on a CUDA GPU that supports it, else fp32.")
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=True, show_default=True,
              help="Recompute the transformer blocks in the backward pass (less memory, ~30% more compute).")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Face augmentation of the training crops.")
@click.option("--save-every", type=click.IntRange(min=1), default=500, show_default=True,
              help="Save the resume state every N steps (and after every epoch).")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Crop-loading processes [CPUs - 1, at most 8].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT.resume/.")
def finetune_image_command(root, backbone, task, out, source, crops_dir, pipeline, epochs, min_steps, batch_size,
                           micro_batch, lr, head_lr, weight_decay, frame_step, val_frames, precision,
                           grad_checkpointing, augment, save_every, workers, seed, device, resume) -> None:
    """Fine-tune a CLIP image encoder on the EXPR labels of the face crops of an
    Aff-Wild2-format ROOT (cropped_aligned/, or faces found in videos/); keeps the epoch
    with the best Validation_Set F1 and writes it as a backbone checkpoint."""
    def train(progress):
        from ..train.encoder import finetune_image

        return finetune_image(
            root, backbone=backbone, out=out, task=task, epochs=epochs, min_steps=min_steps, batch_size=batch_size,
            micro_batch=micro_batch, lr=lr, head_lr=head_lr, weight_decay=weight_decay, frame_step=frame_step,
            val_frames=val_frames or None, precision=precision, grad_checkpointing=grad_checkpointing,
            augment=augment, save_every=save_every, seed=seed, source=source, crops_dir=crops_dir,
            pipeline=pipeline, device=device, workers=workers, resume=resume, progress=progress,
        )

    def started(event: dict) -> str:
        return f"{event['train_crops']} training crops, {event['val_crops']} validation crops, {event['total_steps']} steps"

    def finished_epoch(event: dict) -> str:
        f1 = event["metrics"].get("expr_f1")
        metric = f"expr_f1={f1:.4f}" if f1 is not None else "no validation"
        return metric + (" *" if event["best_epoch"] == event["epoch"] else "")

    summary = _train_on_crops(out, train, started, finished_epoch)
    f1 = summary["metrics"].get("expr_f1")
    metric = f"expr_f1={f1:.4f}" if f1 is not None else "no validation"
    _ui.stderr_console().print(
        f"{summary['out']}: best epoch {summary['best_epoch']} of {summary['epochs']}, {metric}; "
        f"use it as --backbone {summary['arch']}:{summary['out']}",
        soft_wrap=True,
        markup=False,
    )


@finetune_group.command("pretrain")
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--groups",
    "groups",
    required=True,
    type=click.Path(path_type=Path),
    help="Group manifest CSV: crop,group,text or person,frame,group,text (one line per face crop).",
)
@click.option("--backbone", required=True, help="CLIP backbone ARCH:TAG (or ARCH:/path/weights) whose two towers are trained.")
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Backbone checkpoint stem: writes OUT.safetensors and OUT.json; use it as --backbone ARCH:OUT.safetensors.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--min-steps", type=click.IntRange(min=0), default=200, show_default=True, help="Floor on the run's optimizer steps."
)
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True,
              help="Crops per step (two augmented views each).")
@click.option("--lr", type=float, default=1e-5, show_default=True, help="AdamW learning rate of both towers.")
@click.option("--weight-decay", type=click.FloatRange(min=0.0), default=0.05, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True)
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=True, show_default=True)
@click.option("--save-every", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Crop-loading processes [CPUs - 1, at most 8].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT.resume/.")
def finetune_pretrain_command(root, groups, backbone, out, epochs, min_steps, batch_size, lr, weight_decay, precision,
                              grad_checkpointing, save_every, workers, seed, device, resume) -> None:
    """CLEF's optional first stage: weakly supervised contrastive pre-training of both CLIP
    towers on face crops grouped by a coarse condition with one text per group."""

    def train(progress):
        from ..train.pretrain import pretrain_groups

        return pretrain_groups(
            root, groups=groups, backbone=backbone, out=out, epochs=epochs, min_steps=min_steps,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, precision=precision,
            grad_checkpointing=grad_checkpointing, save_every=save_every, seed=seed, device=device, workers=workers,
            resume=resume, progress=progress,
        )

    def started(event: dict) -> str:
        return f"{event['crops']} crops in {event['groups']} groups, {event['total_steps']} steps"

    summary = _train_on_crops(out, train, started, lambda event: "")
    _ui.stderr_console().print(
        f"{summary['out']}: {summary['total_steps']} steps; use it as --backbone {summary['arch']}:{summary['out']}",
        soft_wrap=True,
        markup=False,
    )
