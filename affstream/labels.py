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
