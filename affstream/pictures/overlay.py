"""Drawing the annotations of one frame onto its picture (Pillow only).

Per face: its box and ``face_id``, a tag with the top expression and its probability,
and a side panel with a small valence/arousal circumplex (the current point and a short
trail of the last second) above bars for the action units present. Everything is sized
from the frame (:class:`OverlayScale`: one unit is 1/360 of the shorter side), so the
overlay reads the same from 360p to 4K.

The drawing knows nothing about files or codecs: :func:`draw_overlay` takes an upright
RGB picture and the faces of that frame and returns a new picture plus the rectangles it
drew into, and :class:`TrailKeeper` turns a stream of per-frame rows into those faces. So
the video renderer, the report's key frames and a live preview share it.

Regions. Pixels outside the returned rectangles are exactly the input's. The rectangles
are snapped outwards to even coordinates, so a 4:2:0 encoder (2x2 chroma blocks) can keep
the original samples outside them as well (:mod:`affstream.pictures.video` does).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..labels import AU_LABELS, EXPR_LABELS
from ..records import FrameAnnotation
from .palette import EXPR_COLOURS, rgb, track_colour

Region = tuple[int, int, int, int]
"""A rectangle (x0, y0, x1, y1) in pixels of the upright frame, end-exclusive."""

TRAIL_S = 1.0  # seconds of valence/arousal history drawn behind the current point
TRAIL_MAX_POINTS = 90  # at most this many trail points per face (3 s at 30 fps)

_PANEL_RGBA = (16, 18, 24, 176)  # dark, 70 % opaque: readable on any picture
_TEXT = (245, 245, 245, 255)
_MUTED = (170, 176, 186, 255)
_GUIDE = (120, 126, 138, 255)
_OUTLINE = (0, 0, 0)


@dataclass(frozen=True)
class FaceOverlay:
    """What is drawn for one face.

    row:   the face's row of this frame (``success`` True, ``box_xyxy`` set).
    trail: (n, 2) float32 (valence, arousal) of its recent frames, oldest first, the
           current frame last; (0, 2) when the head predicts no valence/arousal.
    """

    row: FrameAnnotation
    trail: np.ndarray


class TrailKeeper:
    """Per face, the last :data:`TRAIL_S` seconds of (valence, arousal), fed frame by frame.

    Memory is bounded (:data:`TRAIL_MAX_POINTS` per face; faces unseen for longer than
    ``trail_s`` are forgotten), so it suits an endless live stream as well as a file.
    """

    def __init__(self, trail_s: float = TRAIL_S, max_points: int = TRAIL_MAX_POINTS) -> None:
        self.trail_s = float(trail_s)
        self.max_points = int(max_points)
        self._points: dict[int, deque[tuple[float, float, float]]] = {}

    def update(self, time_s: float, faces: Sequence[FrameAnnotation]) -> list[FaceOverlay]:
        """Add the faces of the frame at ``time_s`` (seconds); their :class:`FaceOverlay`."""
        overlays = []
        for row in faces:
            points = self._points.setdefault(row.track_id, deque(maxlen=self.max_points))
            if row.valence is not None and row.arousal is not None:
                points.append((time_s, float(row.valence), float(row.arousal)))
            while points and time_s - points[0][0] > self.trail_s:
                points.popleft()
            trail = np.array([(v, a) for _, v, a in points], dtype=np.float32).reshape(-1, 2)
            if row.valence is None or row.arousal is None:
                trail = np.zeros((0, 2), dtype=np.float32)
            overlays.append(FaceOverlay(row, trail))
        for track in [t for t, p in self._points.items() if not p or time_s - p[-1][0] > self.trail_s]:
            del self._points[track]
        return overlays


@dataclass(frozen=True)
class OverlayScale:
    """Sizes in pixels for a frame; ``unit`` is the shorter side / 360 (1.0 at 360p,
    6.0 at 2160p). Minimums keep text legible on very small frames."""

    unit: float
    font_px: int
    small_px: int
    line_px: int
    pad_px: int
    panel_px: int

    @classmethod
    def for_frame(cls, width: int, height: int) -> OverlayScale:
        unit = max(1, min(int(width), int(height))) / 360.0
        return cls(
            unit=unit,
            font_px=max(10, round(13 * unit)),
            small_px=max(9, round(10.5 * unit)),
            line_px=max(1, round(2 * unit)),
            pad_px=max(3, round(5 * unit)),
            panel_px=max(56, round(92 * unit)),
        )


@functools.lru_cache(maxsize=32)
def _font(size_px: int):
    """Pillow's bundled scalable font (Aileron) at ``size_px``: no system font needed."""
    from PIL import ImageFont

    return ImageFont.load_default(size_px)


def _even_out(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> Region | None:
    """The rectangle grown to even coordinates and clipped to the frame; None if empty."""
    left = max(0, (math.floor(x0) // 2) * 2)
    top = max(0, (math.floor(y0) // 2) * 2)
    right = min(width, -(-math.ceil(x1) // 2) * 2)
    bottom = min(height, -(-math.ceil(y1) // 2) * 2)
    return (left, top, right, bottom) if right > left and bottom > top else None


def draw_overlay(image: np.ndarray, faces: Sequence[FaceOverlay]) -> tuple[np.ndarray, list[Region]]:
    """Draw ``faces`` onto a copy of ``image``.

    image: (H, W, 3) uint8 RGB, upright (the coordinates of the CSV's face boxes).
    Returns the new (H, W, 3) uint8 picture and the regions drawn into (see the module
    docstring); with no faces, the input itself and no regions.
    """
    if not faces:
        return image, []
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    scale = OverlayScale.for_frame(width, height)
    canvas = Image.fromarray(np.ascontiguousarray(image[..., :3]), "RGB")
    draw = ImageDraw.Draw(canvas)
    regions: list[Region] = []
    boxes = [face.row.box_xyxy for face in faces]
    for face in faces:
        if face.row.box_xyxy is None:
            continue
        regions += _draw_box(draw, face.row, scale, width, height)
    for face in faces:
        if face.row.box_xyxy is None:
            continue
        regions += _draw_tag(canvas, face.row, scale)
        panel = _panel(face, scale)
        if panel is not None:
            regions += _place_panel(canvas, panel, face.row.box_xyxy, boxes, scale)
    return np.asarray(canvas), [r for r in regions if r is not None]


# ----------------------------------------------------------------------------- box and tag


def _draw_box(draw, row: FrameAnnotation, scale: OverlayScale, width: int, height: int) -> list[Region | None]:
    x0, y0, x1, y1 = (float(v) for v in row.box_xyxy)
    line = scale.line_px
    outer = line + 1  # a one-pixel dark outline on both sides of the coloured line
    colour = rgb(track_colour(row.track_id))
    rect = [round(x0), round(y0), round(x1), round(y1)]
    draw.rectangle([rect[0] - outer, rect[1] - outer, rect[2] + outer, rect[3] + outer], outline=_OUTLINE, width=line + 2)
    draw.rectangle([rect[0] - line, rect[1] - line, rect[2] + line, rect[3] + line], outline=colour, width=line)
    # four strips along the edges: the face inside the box is not drawn on and keeps its samples
    left, top, right, bottom = rect[0] - outer - 1, rect[1] - outer - 1, rect[2] + outer + 2, rect[3] + outer + 2
    return [
        _even_out(left, top, right, rect[1] + 2, width, height),
        _even_out(left, rect[3] - 1, right, bottom, width, height),
        _even_out(left, top, rect[0] + 2, bottom, width, height),
        _even_out(rect[2] - 1, top, right, bottom, width, height),
    ]


def _tag_text(row: FrameAnnotation) -> tuple[str, str | None]:
    """("face N", "Happiness 87%") -- the second part None without expression outputs."""
    name = f"face {row.track_id}"
    if row.expression is None:
        return name, None
    label = EXPR_LABELS[row.expression]
    if row.expr_probs is None:
        return name, label
    return name, f"{label} {float(row.expr_probs[row.expression]) * 100:.0f}%"


def _draw_tag(canvas, row: FrameAnnotation, scale: OverlayScale) -> list[Region | None]:
    """The tag above the face box (below it when the box touches the top edge)."""
    from PIL import Image, ImageDraw

    font = _font(scale.font_px)
    name, expression = _tag_text(row)
    pad = scale.pad_px
    swatch = scale.font_px if expression else 0
    gap = pad if expression else 0
    name_w = math.ceil(font.getlength(name))
    expr_w = math.ceil(font.getlength(expression)) if expression else 0
    tag_w = pad + name_w + (gap * 2 + swatch + pad // 2 + expr_w if expression else 0) + pad
    tag_h = scale.font_px + 2 * pad
    tag = Image.new("RGBA", (tag_w, tag_h), _PANEL_RGBA)
    draw = ImageDraw.Draw(tag)
    # the face's colour as a bar along the left edge ties the tag to its box
    draw.rectangle([0, 0, max(1, scale.line_px + 1) - 1, tag_h - 1], fill=rgb(track_colour(row.track_id)) + (255,))
    middle = tag_h / 2
    draw.text((pad, middle), name, font=font, fill=_TEXT, anchor="lm")
    if expression:
        x = pad + name_w + gap * 2
        colour = EXPR_COLOURS[EXPR_LABELS[row.expression]]
        draw.rectangle(
            [x, middle - swatch / 2, x + swatch - 1, middle + swatch / 2 - 1], fill=rgb(colour) + (255,), outline=(0, 0, 0, 255)
        )
        draw.text((x + swatch + pad // 2, middle), expression, font=font, fill=_TEXT, anchor="lm")
    x0, y0, _, y1 = (float(v) for v in row.box_xyxy)
    above = y0 - scale.line_px - 2 - tag_h
    top = above if above >= 0 else y1 + scale.line_px + 2
    left = min(max(0.0, x0 - scale.line_px - 1), canvas.width - tag_w)
    return [_composite(canvas, tag, left, top)]


def _composite(canvas, layer, left: float, top: float) -> Region | None:
    """Alpha-blend the RGBA ``layer`` onto ``canvas`` with its top-left at (left, top),
    clipped to the canvas; the region touched (even-aligned), or None if off-canvas."""
    from PIL import Image

    width, height = canvas.size
    region = _even_out(left, top, left + layer.width, top + layer.height, width, height)
    if region is None:
        return None
    x, y = round(left), round(top)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + layer.width), min(height, y + layer.height)
    if x1 <= x0 or y1 <= y0:
        return None
    piece = layer.crop((x0 - x, y0 - y, x1 - x, y1 - y))
    base = canvas.crop((x0, y0, x1, y1)).convert("RGBA")
    canvas.paste(Image.alpha_composite(base, piece).convert("RGB"), (x0, y0))
    return region


# --------------------------------------------------------------------------- side panel


def _present_aus(row: FrameAnnotation) -> list[tuple[str, float]]:
    """(AU name, probability) of the AUs present in ``row``, in AU order."""
    if row.au_present is None:
        return []
    probs = row.au_probs if row.au_probs is not None else np.ones(len(AU_LABELS), dtype=np.float32)
    return [(AU_LABELS[i], float(probs[i])) for i in range(len(AU_LABELS)) if bool(row.au_present[i])]


def _panel(face: FaceOverlay, scale: OverlayScale):
    """The side panel of one face (RGBA image): circumplex, then AU bars; None if the
    row has neither valence/arousal nor AU outputs."""
    from PIL import Image, ImageDraw

    row = face.row
    has_va = row.valence is not None and row.arousal is not None
    has_au = row.au_present is not None
    if not (has_va or has_au):
        return None
    aus = _present_aus(row)
    pad = scale.pad_px
    small = _font(scale.small_px)
    width = scale.panel_px
    circle = width - 2 * pad if has_va else 0
    bar_h = scale.small_px + max(2, round(3 * scale.unit))
    title_h = scale.small_px + pad if has_au else 0
    bars_h = title_h + (len(aus) if aus else 1) * bar_h if has_au else 0
    height = pad + circle + (pad if has_va and has_au else 0) + bars_h + pad
    panel = Image.new("RGBA", (width, height), _PANEL_RGBA)
    draw = ImageDraw.Draw(panel)
    y = pad
    if has_va:
        _draw_circumplex(draw, face, pad, y, circle, scale)
        y += circle + pad
    if has_au:
        draw.text((pad, y), "AUs present", font=small, fill=_MUTED, anchor="lt")
        y += title_h
        _draw_au_bars(draw, aus, pad, y, width - 2 * pad, bar_h, scale)
    return panel


def _draw_circumplex(draw, face: FaceOverlay, left: int, top: int, size: int, scale: OverlayScale) -> None:
    """Valence on x (negative left), arousal on y (high up), the unit circle as frame."""
    small = _font(scale.small_px)
    radius = size / 2
    cx, cy = left + radius, top + radius
    line = max(1, round(scale.unit))
    draw.ellipse([left, top, left + size - 1, top + size - 1], outline=_GUIDE, width=line)
    draw.line([left, cy, left + size - 1, cy], fill=_GUIDE, width=line)
    draw.line([cx, top, cx, top + size - 1], fill=_GUIDE, width=line)
    inset = max(2, round(2 * scale.unit))
    draw.text((left + size - inset, cy - inset), "V", font=small, fill=_MUTED, anchor="rb")
    draw.text((cx + inset * 2, top + inset), "A", font=small, fill=_MUTED, anchor="lt")

    def point(v: float, a: float) -> tuple[float, float]:
        v, a = min(1.0, max(-1.0, float(v))), min(1.0, max(-1.0, float(a)))
        return cx + v * (radius - line), cy - a * (radius - line)

    colour = rgb(track_colour(face.row.track_id))
    trail = face.trail
    width = max(1, round(1.5 * scale.unit))
    for i in range(1, len(trail)):
        alpha = round(255 * (0.25 + 0.75 * i / max(1, len(trail) - 1)))
        draw.line([point(*trail[i - 1]), point(*trail[i])], fill=colour + (alpha,), width=width)
    dot = max(3, round(4 * scale.unit))
    x, y = point(face.row.valence, face.row.arousal)
    draw.ellipse(
        [x - dot, y - dot, x + dot, y + dot], fill=colour + (255,), outline=(0, 0, 0, 255), width=max(1, round(scale.unit))
    )


def _draw_au_bars(draw, aus: list[tuple[str, float]], left: int, top: int, width: int, row_h: int, scale: OverlayScale) -> None:
    small = _font(scale.small_px)
    if not aus:
        draw.text((left, top), "none", font=small, fill=_MUTED, anchor="lt")
        return
    label_w = math.ceil(small.getlength("AU26")) + scale.pad_px
    bar_w = max(4, width - label_w)
    thick = max(3, round(row_h * 0.55))
    for k, (name, prob) in enumerate(aus):
        y = top + k * row_h
        middle = y + row_h / 2 - 1
        draw.text((left, middle), name, font=small, fill=_TEXT, anchor="lm")
        x0 = left + label_w
        draw.rectangle([x0, middle - thick / 2, x0 + bar_w - 1, middle + thick / 2], fill=(70, 76, 88, 255))
        filled = round(bar_w * float(np.clip(prob, 0, 1)))
        if filled > 0:
            draw.rectangle([x0, middle - thick / 2, x0 + filled - 1, middle + thick / 2], fill=(235, 235, 235, 255))


def _place_panel(canvas, panel, box_xyxy, boxes, scale: OverlayScale) -> list[Region | None]:
    """Put the panel beside the face: right of its box if it fits in the frame and
    overlaps no other face, else left, else whichever side has more room."""
    width, height = canvas.size
    if panel.width > width or panel.height > height:
        return []  # frame too small for a panel: the box and tag still show
    x0, y0, x1, _ = (float(v) for v in box_xyxy)
    gap = scale.pad_px + scale.line_px
    top = min(max(0.0, y0), height - panel.height)
    right, left = x1 + gap, x0 - gap - panel.width

    def clear(x: float) -> bool:
        if x < 0 or x + panel.width > width:
            return False
        for other in boxes:
            if other is None or other is box_xyxy:
                continue
            ox0, oy0, ox1, oy1 = (float(v) for v in other)
            if x < ox1 and ox0 < x + panel.width and top < oy1 and oy0 < top + panel.height:
                return False
        return True

    if clear(right):
        x = right
    elif clear(left):
        x = left
    else:
        x = right if width - x1 >= x0 else left
        x = min(max(0.0, x), width - panel.width)
    return [_composite(canvas, panel, x, top)]
