"""Small static SVG charts of the report's per-face statistics (no script needed).

Each function returns one ``<svg>`` element as text, sized in CSS pixels, with a
``<title>`` for screen readers; every bar carries its number as text, so colour is never
the only cue.
"""

from __future__ import annotations

from html import escape

import numpy as np

from ..labels import AU_LABELS, EXPR_LABELS
from .palette import AROUSAL_COLOUR, EXPR_COLOURS, VALENCE_COLOUR

_ROW_PX = 17
_LABEL_PX = 74
_BAR_PX = 130
_TEXT = "#222"
_MUTED = "#666"


def _svg(width: int, height: int, title: str, body: list[str], css_class: str) -> str:
    return (
        f'<svg class="{css_class}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img"><title>{escape(title)}</title>{"".join(body)}</svg>'
    )


def _bar_rows(labels: list[str], values: np.ndarray, colours: list[str], texts: list[str]) -> list[str]:
    body = []
    for k, (label, value, colour, text) in enumerate(zip(labels, values, colours, texts, strict=True)):
        y = 4 + k * _ROW_PX
        width = max(0.0, min(1.0, float(value))) * _BAR_PX
        body.append(
            f'<text x="{_LABEL_PX - 6}" y="{y + 12}" text-anchor="end" font-size="11" fill="{_TEXT}">{escape(label)}</text>'
        )
        body.append(f'<rect x="{_LABEL_PX}" y="{y + 2}" width="{_BAR_PX}" height="{_ROW_PX - 5}" fill="#eef0f3"/>')
        if width > 0:
            body.append(
                f'<rect x="{_LABEL_PX}" y="{y + 2}" width="{width:.1f}" height="{_ROW_PX - 5}" '
                f'fill="{colour}" stroke="#00000040" stroke-width="0.5"/>'
            )
        body.append(f'<text x="{_LABEL_PX + _BAR_PX + 6}" y="{y + 12}" font-size="11" fill="{_MUTED}">{escape(text)}</text>')
    return body


def expression_share_svg(share: np.ndarray) -> str:
    """(8,) share of face time per top expression -> horizontal bars, largest share marked."""
    texts = [f"{100 * float(v):.1f}%" for v in share]
    body = _bar_rows(list(EXPR_LABELS), share, [EXPR_COLOURS[label] for label in EXPR_LABELS], texts)
    height = 8 + len(EXPR_LABELS) * _ROW_PX
    return _svg(_LABEL_PX + _BAR_PX + 52, height, "share of face time per top expression", body, "chart-share")


def au_rates_svg(rate: np.ndarray, mean: np.ndarray | None) -> str:
    """(12,) share of face time each AU is present (and its mean probability) -> bars."""
    texts = [
        f"{100 * float(r):.0f}%" + ("" if mean is None else f"  (p {float(m):.2f})")
        for r, m in zip(rate, mean if mean is not None else rate, strict=True)
    ]
    body = _bar_rows(list(AU_LABELS), rate, ["#56B4E9"] * len(AU_LABELS), texts)
    height = 8 + len(AU_LABELS) * _ROW_PX
    return _svg(_LABEL_PX + _BAR_PX + 92, height, "share of face time each action unit is present", body, "chart-au")


def va_summary_svg(valence: tuple[float, float], arousal: tuple[float, float], colour: str) -> str:
    """Mean (valence, arousal) in the circumplex, with one standard deviation each way
    (a cross and an ellipse); (mean, sd) pairs in [-1, 1]."""
    size, pad = 150, 16
    radius = size / 2 - pad
    cx = cy = size / 2

    def x(v: float) -> float:
        return cx + max(-1.0, min(1.0, v)) * radius

    def y(a: float) -> float:
        return cy - max(-1.0, min(1.0, a)) * radius

    (vm, vs), (am, asd) = valence, arousal
    body = [
        f'<circle cx="{cx}" cy="{cy}" r="{radius}" fill="#f6f7f9" stroke="#bbb"/>',
        f'<line x1="{cx - radius}" y1="{cy}" x2="{cx + radius}" y2="{cy}" stroke="#ccc"/>',
        f'<line x1="{cx}" y1="{cy - radius}" x2="{cx}" y2="{cy + radius}" stroke="#ccc"/>',
        f'<text x="{cx + radius + 2}" y="{cy + 4}" font-size="10" fill="{_MUTED}">V</text>',
        f'<text x="{cx + 3}" y="{pad - 4}" font-size="10" fill="{_MUTED}">A</text>',
        f'<ellipse cx="{x(vm):.1f}" cy="{y(am):.1f}" rx="{max(0.5, vs * radius):.1f}" ry="{max(0.5, asd * radius):.1f}" '
        f'fill="{colour}" fill-opacity="0.25" stroke="{colour}"/>',
        f'<line x1="{x(vm - vs):.1f}" y1="{y(am):.1f}" x2="{x(vm + vs):.1f}" y2="{y(am):.1f}" '
        f'stroke="{VALENCE_COLOUR}" stroke-width="2"/>',
        f'<line x1="{x(vm):.1f}" y1="{y(am - asd):.1f}" x2="{x(vm):.1f}" y2="{y(am + asd):.1f}" '
        f'stroke="{AROUSAL_COLOUR}" stroke-width="2" stroke-dasharray="3 2"/>',
        f'<circle cx="{x(vm):.1f}" cy="{y(am):.1f}" r="4" fill="{colour}" stroke="#000"/>',
    ]
    title = f"mean valence {vm:.2f} (sd {vs:.2f}), mean arousal {am:.2f} (sd {asd:.2f})"
    return _svg(size, size, title, body, "chart-va")
