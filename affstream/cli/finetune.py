"""Command line for fine-tuning: ``affstream finetune text`` (the CLEF text-driven head).

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
    """Fine-tune CLIP parts on a feature bank (text: the CLEF text-driven head)."""


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
