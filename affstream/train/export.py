"""ABAW submission files from a trained head and a feature bank.

One file per task in ``OUT_DIR`` (``EXPR.txt``, ``AU.txt``, ``VA.txt``), in the
organizers' format: a header ``image_location,<labels>`` then one line per frame,
``NAME/00001.jpg,...`` for every frame 1..n_frames of every listed person (NAME is
the annotated person, e.g. ``video10_left``, as the organizers' crop folders):

- EXPR: ``image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other``;
  each line holds one predicted class index 0-7 (argmax of the logits);
- AU: ``image_location,AU1,...,AU26``; 12 comma-separated 0/1 (sigmoid >= the card's
  per-AU threshold);
- VA: ``image_location,valence,arousal``; two values in [-1, 1].

Frames without a face get the prediction of the nearest frame with one (ties go to
the earlier frame); a person with no face at all gets the majority predicted class
of the export (Neutral if none), no AU and (0, 0). Both are counted in the summary.

Test-set people (``affstream features --test-list``, split ``Test_Set``) are exported
like any other: every frame 1..n_frames of the bank. Those whose n_frames came from
their last crop because no video was at hand (``"n_frames_source": "crops"``) are
listed in the summary: frames after their last crop are not in the file.
Files are written under temporary names and renamed once all are complete; the
output folder is checked before anything is predicted (:func:`check_export_output`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, OutputError
from ..files import atomic_path, check_output_file, check_output_folder, make_folder, output_error
from ..labels import AU_LABELS, EXPR_LABELS, VA_LABELS
from .bank import FeatureBank
from .datasets import MemmapCache
from .evaluate import PersonOutputs, check_compatible, nearest_present, predict_person, split_people

log = logging.getLogger("affstream")

EXPORT_FILES: dict[str, str] = {"expr": "EXPR.txt", "au": "AU.txt", "va": "VA.txt"}
HEADERS: dict[str, str] = {
    "expr": "image_location," + ",".join(EXPR_LABELS),
    "au": "image_location," + ",".join(AU_LABELS),
    "va": "image_location," + ",".join(VA_LABELS),
}


def _decisions(person: PersonOutputs, task: str, thresholds: np.ndarray) -> np.ndarray:
    """Per present frame: expr (m,) class index, au (m, 12) 0/1, va (m, 2) clipped."""
    scores = person.scores[task]
    if task == "expr":
        return scores.argmax(axis=1).astype(np.int64)
    if task == "au":
        return (1.0 / (1.0 + np.exp(-scores)) >= thresholds).astype(np.int64)
    return np.clip(scores, -1.0, 1.0)


def _format(task: str, name: str, values: np.ndarray) -> list[str]:
    if task == "va":
        values = np.round(values, 6) + 0.0  # + 0.0 turns -0.0 into 0.0: no "-0.000000"
    lines = []
    for k, value in enumerate(values, start=1):
        if task == "expr":
            text = str(int(value))
        elif task == "au":
            text = ",".join(str(int(v)) for v in value)
        else:
            text = f"{value[0]:.6f},{value[1]:.6f}"
        lines.append(f"{name}/{k:05d}.jpg,{text}")
    return lines


def resolve_people(bank: FeatureBank, people: Sequence[str] | None, split: str) -> list[str]:
    """``people`` checked against the bank (a video name stands for its ``_left`` /
    ``_right`` people), or every person of ``split``."""
    if people is None:
        return split_people(bank, split)
    names, unknown = [], []
    for name in people:
        if name in bank:
            names.append(name)
        elif f"{name}_left" in bank or f"{name}_right" in bank:
            names.extend(n for n in (f"{name}_left", f"{name}_right") if n in bank)
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DataError(f"{bank.path}: {len(unknown)} listed name(s) not in the feature bank ({shown}); "
                        "compute their features first")
    if not names:
        raise DataError(f"{bank.path}: the list of people to export is empty")
    return list(dict.fromkeys(names))


def _tasks(task: str | None, head_tasks: Sequence[str], head_path) -> tuple[str, ...]:
    if task in (None, "all"):
        return tuple(head_tasks)
    if task not in EXPORT_FILES:
        raise ConfigError(f"task '{task}': use expr, au, va or all")
    if task not in head_tasks:
        raise ConfigError(f"{head_path}: the head does not predict '{task}' (it predicts {', '.join(head_tasks)})")
    return (task,)


def export_abaw(
    features_dir: str | Path,
    head_path: str | Path,
    out_dir: str | Path,
    *,
    task: str | None = None,
    people: Sequence[str] | None = None,
    split: str = "Validation_Set",
    device: str = "auto",
) -> dict[str, Any]:
    """Write ABAW submission files for ``people`` (default: everyone in ``split``).

    task: expr, au, va, all or None (= every task the head predicts).
    Returns ``{"files": {task: path}, "people": count, "frames": lines per file,
    "filled": frames filled from the nearest frame with a face, "people_without_face":
    [names], "filled_without_face": frames of those people, "n_frames_from_crops":
    [names whose frame count is their last crop number, not their video's]}``.
    Raises ConfigError for a head/bank backbone mismatch or a task the head lacks,
    DataError for unknown people or an empty split, OutputError if the files cannot be
    written (checked before any prediction; a write failing anyway publishes none).
    """
    from ..heads.base import load_head_checkpoint, read_card
    from ..runtime import resolve_device

    bank = FeatureBank.open(features_dir)
    card = read_card(head_path)
    check_compatible(card, bank, head_path)
    tasks = _tasks(task, card.tasks, head_path)
    check_export_output(out_dir, tasks)
    names = resolve_people(bank, people, split)
    dev = resolve_device(device)
    head, _ = load_head_checkpoint(head_path, dev)
    thresholds = np.asarray(card.au_thresholds, dtype=np.float64)

    maps = MemmapCache(bank)
    per_person: dict[str, dict[str, np.ndarray] | None] = {}
    filled, faceless = 0, []
    for name in names:
        outputs = predict_person(head, bank, name, dev, maps)
        nearest = nearest_present(bank.present(name))
        if nearest is None:
            per_person[name] = None
            faceless.append(name)
            continue
        position = np.searchsorted(outputs.rows, nearest)  # row -> index among present frames
        per_person[name] = {t: _decisions(outputs, t, thresholds)[position] for t in tasks}
        filled += int(outputs.n_frames - len(outputs.rows))
    default = _defaults(per_person, tasks)
    lines: dict[str, list[str]] = {t: [HEADERS[t]] for t in tasks}
    faceless_frames = 0
    for name in names:
        values = per_person[name]
        n = int(bank.people[name]["n_frames"])
        if values is None:
            values = {t: np.repeat(default[t][None], n, axis=0) for t in tasks}
            faceless_frames += n
        for t in tasks:
            lines[t].extend(_format(t, name, values[t]))
    files = _write_all(Path(out_dir), lines)
    if filled or faceless:
        log.info("export: %d frame(s) filled from the nearest frame with a face; %d person(s) without any face",
                 filled, len(faceless))
    from_crops = [n for n in names if bank.people[n].get("n_frames_source") == "crops"]
    if from_crops:
        log.warning("export: %d person(s) counted up to their last crop (no video when the bank was built); "
                    "frames after it are missing: %s", len(from_crops), ", ".join(from_crops))
    return {"files": {t: str(p) for t, p in files.items()}, "people": len(names),
            "frames": len(lines[tasks[0]]) - 1, "filled": filled, "people_without_face": faceless,
            "filled_without_face": faceless_frames, "n_frames_from_crops": from_crops}


def _defaults(per_person: dict[str, dict[str, np.ndarray] | None], tasks: Sequence[str]) -> dict[str, np.ndarray]:
    default = {"expr": np.asarray(0), "au": np.zeros(len(AU_LABELS), dtype=np.int64), "va": np.zeros(2)}
    if "expr" in tasks:
        predicted = [v["expr"] for v in per_person.values() if v is not None]
        if predicted:
            counts = np.bincount(np.concatenate(predicted), minlength=len(EXPR_LABELS))
            default["expr"] = np.asarray(int(counts.argmax()))
    return default


def check_export_output(out_dir: str | Path, tasks: Sequence[str] = ()) -> None:
    """OutputError (one line) unless ``out_dir`` is a writable folder or can be created
    as one, and the files of ``tasks`` in it are not folders. Creates nothing."""
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    for task in tasks:
        check_output_file(out_dir / EXPORT_FILES[task])


def _write_all(out_dir: Path, lines: dict[str, list[str]]) -> dict[str, Path]:
    """Write every task's file under a temporary name; rename them only once all are
    complete, so a failed write leaves no new file (OutputError, one line)."""
    make_folder(out_dir)
    targets = {task: out_dir / EXPORT_FILES[task] for task in lines}
    with contextlib.ExitStack() as stack:
        for task, content in lines.items():
            tmp = stack.enter_context(atomic_path(targets[task]))
            try:
                with open(tmp, "w", encoding="utf-8", newline="") as handle:
                    handle.write("\n".join(content) + "\n")
            except OSError as exc:
                raise OutputError(f"{output_error(targets[task], exc)}; no submission file was written") from None
    return targets
