"""Label spaces shared by every head, writer and metric (ABAW / Aff-Wild2 order)."""

from __future__ import annotations

EXPR_LABELS: tuple[str, ...] = (
    "Neutral",
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
    "Other",
)
"""The 8 expression classes, in the order of Aff-Wild2's EXPR annotation files."""

AU_LABELS: tuple[str, ...] = (
    "AU1",
    "AU2",
    "AU4",
    "AU6",
    "AU7",
    "AU10",
    "AU12",
    "AU15",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
)
"""The 12 action units, in the order of Aff-Wild2's AU annotation files."""

AU_COLUMN_STEMS: tuple[str, ...] = tuple(f"AU{int(a[2:]):02d}" for a in AU_LABELS)
"""OpenFace-style zero-padded names: AU01, AU02, ..., AU26."""

VA_LABELS: tuple[str, ...] = ("valence", "arousal")

TASKS: tuple[str, ...] = ("expr", "au", "va")
"""The three tasks, in the one canonical order used everywhere: training data, head
outputs packed into one score row, cards and reports."""

TASK_WIDTHS: dict[str, int] = {"expr": len(EXPR_LABELS), "au": len(AU_LABELS), "va": len(VA_LABELS)}
"""Output width of each task: 8 expression logits, 12 AU logits, valence + arousal."""


def ordered_tasks(tasks) -> tuple[str, ...]:
    """``tasks`` (any iterable of names) in canonical order; ValueError for an empty set
    or an unknown name (callers turn it into their own user-facing error)."""
    chosen = tuple(tasks)
    if not chosen or not set(chosen) <= set(TASKS):
        raise ValueError(f"tasks {list(chosen)}: use a non-empty subset of {', '.join(TASKS)}")
    return tuple(t for t in TASKS if t in chosen)
