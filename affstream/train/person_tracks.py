"""Which face track is the annotated person of an Aff-Wild2 video (``--source videos``).

Tracks come from affstream's own tracker. The *dominance* of a track is its frame
count times its mean box area. A single annotated person is the chain of tracks grown
from the most dominant ones (the chain with the largest total dominance wins); for
``VIDEO_left`` / ``VIDEO_right``, the two tracks that share the most frames (weighted by
the smaller box) are split by mean box-centre x. A chain grows by a track that does not
overlap it in time and starts or ends near the chained box at a similar size. Frames
that no chosen track covers stay missing: a passer-by never takes the person's label.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

CHAIN_DISTANCE_MAX = 1.5
"""Largest centre distance, in units of the chosen box's size (square root of its
area), at which another track may continue a chosen one."""
CHAIN_SCALE_RATIO_MAX = 2.0
"""Largest ratio of box sizes (either way) between a chosen track's end and its continuation."""
CHAIN_SEEDS = 3
"""Single person: chains are grown from this many most dominant tracks; the largest wins."""


class TrackBoxes:
    """Where one track's face was, frame by frame.

    rows:  (m,) int64 0-based frame rows (frame index - 1), strictly increasing, m >= 1.
    boxes: (m, 4) float64 x1, y1, x2, y2 in pixels.
    Derived: ``areas`` (m,) pixels^2, ``centres`` (m, 2) pixels, ``first`` / ``last``
    rows, ``dominance`` = frame count x mean box area (pixels^2).
    """

    def __init__(self, rows, boxes):
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if not len(self.rows) or len(self.rows) != len(self.boxes) or np.any(np.diff(self.rows) <= 0):
            raise ValueError("a track needs m >= 1 strictly increasing rows and m boxes")
        sides = np.clip(self.boxes[:, 2:] - self.boxes[:, :2], 0, None)
        self.areas = sides[:, 0] * sides[:, 1]
        self.centres = (self.boxes[:, :2] + self.boxes[:, 2:]) / 2
        self.first, self.last = int(self.rows[0]), int(self.rows[-1])
        self.dominance = float(self.areas.sum())


def _continues(ref_area: float, ref_centre: np.ndarray, area: float, centre: np.ndarray) -> float | None:
    """Centre distance in units of the reference box size if a box of ``area`` at
    ``centre`` can continue the reference box, else None."""
    if ref_area <= 0 or area <= 0 or max(ref_area, area) > CHAIN_SCALE_RATIO_MAX ** 2 * min(ref_area, area):
        return None
    distance = float(np.linalg.norm(centre - ref_centre)) / np.sqrt(ref_area)
    return distance if distance <= CHAIN_DISTANCE_MAX else None


def _continuation(track: TrackBoxes, chain: list[TrackBoxes]) -> float | None:
    """How well ``track`` continues ``chain`` (smaller is better), or None if it
    overlaps any chained track in time or starts / ends away from its neighbours."""
    before = after = None
    for other in chain:
        if other.first <= track.last and track.first <= other.last:
            return None
        if other.last < track.first and (before is None or other.last > before.last):
            before = other
        if other.first > track.last and (after is None or other.first < after.first):
            after = other
    fits = []
    if before is not None:
        fits.append(_continues(before.areas[-1], before.centres[-1], track.areas[0], track.centres[0]))
    if after is not None:
        fits.append(_continues(after.areas[0], after.centres[0], track.areas[-1], track.centres[-1]))
    fits = [f for f in fits if f is not None]
    return min(fits) if fits else None


def _grow(chains: dict[Any, list[int]], tracks: dict[int, TrackBoxes]) -> dict[Any, list[int]]:
    """Add to each chain the free tracks that continue it (see the module docstring),
    most dominant first, until none does; a track fitting two chains joins the nearer."""
    chains = {key: list(ids) for key, ids in chains.items()}
    free = sorted((t for t in tracks if not any(t in ids for ids in chains.values())),
                  key=lambda t: (-tracks[t].dominance, t))
    grown = True
    while grown:
        grown = False
        for t in list(free):
            fits = [(fit, key) for key, ids in chains.items()
                    if (fit := _continuation(tracks[t], [tracks[i] for i in ids])) is not None]
            if fits:
                chains[min(fits, key=lambda f: f[0])[1]].append(t)
                free.remove(t)
                grown = True
    return chains


def _chain_dominance(ids: list[int], tracks: dict[int, TrackBoxes]) -> float:
    return sum(tracks[t].dominance for t in ids)


def _single_person(tracks: dict[int, TrackBoxes]) -> list[int]:
    seeds = sorted(tracks, key=lambda t: (-tracks[t].dominance, t))[:CHAIN_SEEDS]
    chains = [_grow({None: [seed]}, tracks)[None] for seed in seeds]
    return max(chains, key=lambda ids: _chain_dominance(ids, tracks), default=[])


def _dominant_pair(tracks: dict[int, TrackBoxes]) -> tuple[int, int] | None:
    """(left, right) track ids of the pair of tracks with the largest sum over their
    shared frames of the smaller box area; left has the smaller mean centre x over
    those frames. None if no two tracks ever share a frame."""
    if len(tracks) < 2:
        return None
    ids = np.concatenate([np.full(len(t.rows), k) for k, t in tracks.items()])
    rows = np.concatenate([t.rows for t in tracks.values()])
    areas = np.concatenate([t.areas for t in tracks.values()])
    xs = np.concatenate([t.centres[:, 0] for t in tracks.values()])
    order = np.argsort(rows, kind="stable")
    _, starts, counts = np.unique(rows[order], return_index=True, return_counts=True)
    scores: dict[tuple[int, int], list[float]] = {}
    for start, count in zip(starts[counts > 1], counts[counts > 1], strict=True):
        faces = order[start:start + count]
        for i, a in enumerate(faces):
            for b in faces[i + 1:]:
                key, sign = ((ids[a], ids[b]), 1.0) if ids[a] < ids[b] else ((ids[b], ids[a]), -1.0)
                score = scores.setdefault((int(key[0]), int(key[1])), [0.0, 0.0])
                score[0] += min(areas[a], areas[b])
                score[1] += sign * (xs[a] - xs[b])
    if not scores:
        return None
    (a, b), (_, dx) = max(scores.items(), key=lambda item: (item[1][0], -item[0][0], -item[0][1]))
    return (a, b) if dx <= 0 else (b, a)


def choose_tracks(tracks: dict[int, TrackBoxes], sides: Iterable[str | None]) -> dict[str | None, list[int]]:
    """Track ids that make up each annotated person of one video (rule in the module
    docstring). sides: ``None`` (single person), ``"left"``, ``"right"``. Returns side ->
    chosen track ids (empty: the person is missing in every frame)."""
    sides = tuple(dict.fromkeys(sides))
    chosen: dict[str | None, list[int]] = {}
    if None in sides:
        chosen[None] = _single_person(tracks)
    if any(side is not None for side in sides):
        pair = _dominant_pair(tracks)
        chains = _grow({"left": [pair[0]], "right": [pair[1]]}, tracks) if pair else {"left": [], "right": []}
        chosen.update({side: chains[side] for side in sides if side is not None})
    return chosen
