"""Command line for training: ``features``, ``train``, ``evaluate``, ``export-abaw``.

Like the rest of :mod:`affstream.cli`, nothing heavy is imported at module level; progress goes to stderr and only ``evaluate``
writes to stdout (one JSON object). A user error prints ``error: ...`` on stderr and
exits with code 2; a run with failed inputs exits with 1; an interruption (Ctrl-C, from
the first import of torch on) prints one ``interrupted: ...`` line and exits with 130.

Outputs are checked before any work (a folder that cannot be created or written, a
read-only file system, a file where a folder is needed): one line, exit 2, nothing
written. A write that fails once the work is done (a full disk) is one line saying
what was kept, exit 1; ``evaluate`` prints its metrics before it stores tuned
thresholds, so they are never lost to a card that cannot be written.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import _ui

TASK_CHOICES = click.Choice(["expr", "au", "va", "all"])


# --------------------------------------------------------------------------- features


@click.command("features")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Feature bank folder (created; an existing bank is resumed).")
@click.option("--backbone", default="ViT-L-14:openai", show_default=True, help="CLIP backbone ARCH:TAG.")
@click.option("--source", type=click.Choice(["crops", "videos"]), default="crops", show_default=True,
              help="Organizers' face crops (cropped_aligned/) or raw videos (videos/) through affstream's pipeline.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Faces per backbone batch.")
@click.option("--test-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also embed the unannotated test people (or videos) named in FILE, one per line, as split Test_Set.")
def features_command(root, out, backbone, source, device, batch_size, test_list) -> None:
    """Compute the CLIP feature bank of an Aff-Wild2-format dataset ROOT (resumable)."""
    from ..errors import AffstreamError, OutputError

    console = _ui.stderr_console()
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ..train.bank import check_bank_output
        from ..train.features import build_feature_bank

        check_bank_output(out)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "nothing was written")
    columns = (TextColumn("[bold]features"), BarColumn(), MofNCompleteColumn(), TextColumn("people"),
               TimeElapsedColumn(), TextColumn("{task.fields[name]}"))
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("features", total=None, name="")

            def progress(name: str, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, name=name)

            summary = build_feature_bank(root, out, backbone=backbone, source=source, device=device,
                                         batch_size=batch_size, progress=progress, test_list=test_list)
    except OutputError as exc:
        _ui.fail(f"{exc}; people already written are kept: run the same command again to resume",
                 _ui.EXIT_INPUT_FAILED)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "people already written are kept; run the same command again to resume")
    console.print(f"{out}: {summary['done']} people written, {summary['skipped']} already there, "
                  f"{summary['frames']} frames ({summary['missing']} without a face)", soft_wrap=True, markup=False)
    if summary["unreadable"]:
        counts = ", ".join(f"{name} ({n})" for name, n in summary["unreadable"].items())
        _ui.warning(console, f"{sum(summary['unreadable'].values())} crop(s) could not be used and are missing "
                             f"frames (see the warnings above): {counts}")
    if summary["failed"]:
        for name, message in summary["failed"].items():
            _ui.error(console, f"{name}: {message}")
        raise SystemExit(_ui.EXIT_INPUT_FAILED)


# --------------------------------------------------------------------------- train


def _metric_text(metrics: dict) -> str:
    keys = ("expr_f1", "au_f1", "va_ccc")
    parts = [f"{k}={metrics[k]:.4f}" for k in keys if k in metrics]
    if metrics.get("au_thresholds_tuned_on") and "au_f1_at_0.5" in metrics:
        parts.append(f"(au_f1 {metrics['au_f1_at_0.5']:.4f} at threshold 0.5)")
    return " ".join(parts) or "no validation"


@click.command("train")
@click.option("--features", "features_dir", required=True, type=click.Path(path_type=Path), help="Feature bank folder.")
@click.option("--task", type=TASK_CHOICES, required=True, help="Task to learn; 'all' trains one multi-task head.")
@click.option("--head", "head_kind", type=click.Choice(["mlp", "temporal"]), default="mlp", show_default=True)
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path),
              help="Head checkpoint stem: writes OUT.safetensors and OUT.json.")
@click.option("--recipe", type=click.Choice(["default", "paper"]), default="default", show_default=True,
              help="Settings the options below start from: 'default' (works on a few videos too) or 'paper' "
                   "(the published settings of the head's method; see the README for the differences).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs: validation rounds, one pass over the data unless --min-steps needs more [32].")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Total optimizer steps, spread over --epochs (replaces --min-steps).")
@click.option("--min-steps", type=click.IntRange(min=0), default=None,
              help="Floor on the run's optimizer steps so warm-up and cosine decay work on small sets [300; paper 0].")
@click.option("--batch-size", type=click.IntRange(min=0), default=None,
              help="Frames (mlp) or windows (temporal) per batch; 0 = auto: 32, or fewer so that a pass over the "
                   "data has at least 8 steps [auto; paper 32].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [mlp 1e-3, temporal 5e-4; paper 3e-5].")
@click.option("--weight-decay", type=float, default=None, help="Weight decay [mlp 0, temporal 1e-5].")
@click.option("--loss", type=click.Choice(["cvar", "erm"]), default=None,
              help="Per-frame loss reduction [mlp cvar, temporal erm].")
@click.option("--expr-loss", type=click.Choice(["ce", "weighted"]), default=None,
              help="Expression loss: cross-entropy or class-weighted cross-entropy [ce].")
@click.option("--au-loss", type=click.Choice(["bce", "weighted"]), default=None,
              help="AU loss: BCE or class-weighted BCE (positive weight per AU from the training frames) "
                   "[weighted; paper bce].")
@click.option("--au-holdout", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="Fraction of the training videos held out to tune per-AU thresholds (0: thresholds 0.5) "
                   "[0.2; paper 0].")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Stop after this many epochs without a better validation score (0: never) [8; paper 0].")
@click.option("--alpha", type=float, default=None, help="CVaR level in (0, 1] [0.3].")
@click.option("--sam/--no-sam", default=None, help="Sharpness-aware minimisation [mlp on, temporal off].")
@click.option("--rho", type=float, default=None, help="SAM radius [0.05].")
@click.option("--width", type=click.IntRange(min=1), default=None, help="MLP hidden width [768].")
@click.option("--dropout", type=float, default=None, help="Dropout [mlp 0.6, temporal 0.3].")
@click.option("--d-model", type=click.IntRange(min=2), default=None, help="Temporal head width [128; paper 256].")
@click.option("--window", "window_length", type=click.IntRange(min=1), default=None,
              help="Temporal window length in frames [300].")
@click.option("--stride", "window_stride", type=click.IntRange(min=1), default=None,
              help="Temporal window stride in frames [200].")
@click.option("--recut/--no-recut", default=None,
              help="Re-cut the training windows at a random phase every pass [on; paper off].")
@click.option("--window-min", type=click.IntRange(min=1), default=None,
              help="Shortest training window: random window lengths in [N, --window] [off: all --window long].")
@click.option("--causal/--no-causal", default=None, help="Temporal head sees only past frames [off].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT.resume/.")
def train_command(features_dir, task, head_kind, out, resume, device, seed, **options) -> None:
    """Train a per-frame MLP or temporal head on a feature bank's Train_Set; keep the
    epoch with the best Validation_Set metric."""
    from ..errors import AffstreamError, OutputError

    console = _ui.stderr_console()
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ..train.loop import check_train_output, train_head

        check_train_output(out)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "nothing was written")
    columns = (TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn())
    epochs_saved = []
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task_id = bar.add_task("train", total=None, epoch=0, epochs=0)

            def progress(event: dict) -> None:
                if event["event"] == "start":
                    bar.update(task_id, epochs=event["epochs"], epoch=event["first_epoch"])
                elif event["event"] == "step":
                    bar.update(task_id, epoch=event["epoch"], completed=event["step"], total=event["steps"])
                elif event["event"] == "epoch":
                    epochs_saved.append(event["epoch"])
                    star = " *" if event["best_epoch"] == event["epoch"] else ""
                    bar.console.print(f"epoch {event['epoch']}/{event['epochs']}: loss {event['train_loss']:.4f}  "
                                      f"{_metric_text(event['metrics'])}{star}", soft_wrap=True, markup=False)

            summary = train_head(features_dir, task=task, head=head_kind, out=out, seed=seed, device=device,
                                 resume=resume, progress=progress, **options)
    except OutputError as exc:
        _ui.fail(str(exc), _ui.EXIT_INPUT_FAILED)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "the last finished epoch is saved; add --resume to continue" if epochs_saved or resume
                        else "stopped before the first epoch finished; nothing was written")
    stopped = f" (stopped early after epoch {summary['stopped_after']})" if summary["stopped_after"] else ""
    console.print(f"{summary['out']}: best epoch {summary['best_epoch']} of {summary['epochs']}{stopped}, "
                  f"{_metric_text(summary['metrics'])}", soft_wrap=True, markup=False)


# --------------------------------------------------------------------------- evaluate


@click.command("evaluate")
@click.option("--features", "features_dir", required=True, type=click.Path(path_type=Path), help="Feature bank folder.")
@click.option("--head", "head_path", required=True, type=click.Path(path_type=Path),
              help="Head checkpoint (OUT or OUT.safetensors).")
@click.option("--split", default="Validation_Set", show_default=True, help="Bank split to score.")
@click.option("--tune-thresholds", is_flag=True, help="Tune per-AU thresholds (on --tune-split) and store them in the head card.")
@click.option("--tune-split", default="Train_Set", show_default=True,
              help="Split the AU thresholds are tuned on; tuning on the evaluated split makes its score optimistic.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def evaluate_command(features_dir, head_path, split, tune_thresholds, tune_split, device) -> None:
    """Print the ABAW metrics of HEAD on a split as one JSON object on stdout."""
    from ..errors import AffstreamError, OutputError

    console = _ui.stderr_console()
    try:
        from ..train.evaluate import check_card_output, score_head, write_card

        if tune_thresholds:
            check_card_output(head_path)
        result, tuned = score_head(features_dir, head_path, split=split, tune_thresholds=tune_thresholds,
                                   tune_split=tune_split, device=device)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "nothing was written")
    click.echo(json.dumps(result))  # first: the metrics are kept even if the card cannot be written
    if tuned is None:
        return
    try:
        write_card(tuned, head_path)
    except OutputError as exc:
        _ui.fail(f"{exc}; the metrics above use the tuned AU thresholds, which were not stored",
                 _ui.EXIT_INPUT_FAILED)
    except KeyboardInterrupt:
        _ui.interrupted(console, "the card of the head was left as it was")


# --------------------------------------------------------------------------- export


@click.command("export-abaw")
@click.option("--features", "features_dir", required=True, type=click.Path(path_type=Path), help="Feature bank folder.")
@click.option("--head", "head_path", required=True, type=click.Path(path_type=Path), help="Head checkpoint.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for EXPR.txt / AU.txt / VA.txt.")
@click.option("--task", type=TASK_CHOICES, default=None, help="Task file(s) to write [every task of the head].")
@click.option("--split", default="Validation_Set", show_default=True, help="Export every person of this bank split.")
@click.option("--list", "list_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Export the people (or videos) named in FILE, one per line, instead of a split.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def export_command(features_dir, head_path, out_dir, task, split, list_file, device) -> None:
    """Write ABAW submission files (every frame of every person; faceless frames filled)."""
    from ..errors import AffstreamError, OutputError

    console = _ui.stderr_console()
    try:
        from ..train.export import EXPORT_FILES, check_export_output, export_abaw

        check_export_output(out_dir, [] if task in (None, "all") else [task])
        people = None
        if list_file is not None:
            from ..train.affwild import read_video_list

            people = read_video_list(list_file)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, "nothing was written")
    try:
        summary = export_abaw(features_dir, head_path, out_dir, task=task, people=people, split=split, device=device)
    except OutputError as exc:
        _ui.fail(str(exc), _ui.EXIT_INPUT_FAILED)
    except AffstreamError as exc:
        _ui.fail(str(exc))
    except KeyboardInterrupt:
        _ui.interrupted(console, f"no submission file was written ({', '.join(EXPORT_FILES.values())} "
                                 "appear only once complete)")
    for path in summary["files"].values():
        console.print(f"{path}: {summary['frames']} frames of {summary['people']} people", soft_wrap=True, markup=False)
    console.print(f"{summary['filled']} frame(s) without a face filled from the nearest frame with one; "
                  f"{len(summary['people_without_face'])} person(s) without any face "
                  f"({summary['filled_without_face']} frames filled with defaults)", soft_wrap=True, markup=False)
    if summary["n_frames_from_crops"]:
        console.print(f"warning: {len(summary['n_frames_from_crops'])} person(s) exported up to their last crop only "
                      f"(no video when the bank was built): {', '.join(summary['n_frames_from_crops'])}",
                      soft_wrap=True, markup=False)
