"""Colours shared by the overlay, the static plots and the HTML report.

All colours come from the Okabe-Ito palette (Okabe & Ito, "Color Universal Design",
2008), chosen to stay distinguishable under the common forms of colour blindness; a grey
stands for Neutral. Colour is never the only cue: every colour-coded element also
carries its name (labels, legends, tooltips), and valence / arousal lines also differ by
line style.
"""

from __future__ import annotations

OKABE_ITO: dict[str, str] = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "black": "#000000",
}
GREY = "#999999"

EXPR_COLOURS: dict[str, str] = {
    "Neutral": GREY,
    "Anger": OKABE_ITO["vermillion"],
    "Disgust": OKABE_ITO["bluish_green"],
    "Fear": OKABE_ITO["reddish_purple"],
    "Happiness": OKABE_ITO["orange"],
    "Sadness": OKABE_ITO["blue"],
    "Surprise": OKABE_ITO["sky_blue"],
    "Other": OKABE_ITO["yellow"],
}
"""One colour per expression class, keyed by ``labels.EXPR_LABELS``."""

VALENCE_COLOUR = OKABE_ITO["blue"]
AROUSAL_COLOUR = OKABE_ITO["vermillion"]

# Face boxes on video: the light members of the palette first (they stand out on dark and
# busy pictures; every box also gets a dark outline and its face_id as text).
TRACK_COLOURS: tuple[str, ...] = (
    OKABE_ITO["sky_blue"],
    OKABE_ITO["orange"],
    OKABE_ITO["bluish_green"],
    OKABE_ITO["yellow"],
    OKABE_ITO["reddish_purple"],
    OKABE_ITO["vermillion"],
    OKABE_ITO["blue"],
)

AU_COLORMAP = "cividis"
"""Matplotlib colormap of the AU heatmap: sequential and designed for colour-blind readers."""


def track_colour(track_id: int) -> str:
    """The colour of face ``track_id`` (cycles through :data:`TRACK_COLOURS`)."""
    return TRACK_COLOURS[int(track_id) % len(TRACK_COLOURS)]


def rgb(colour: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` -> (r, g, b), each 0-255."""
    text = colour.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def cividis_hex(value: float) -> str:
    """An approximation of matplotlib's cividis colormap at ``value`` in [0, 1] (clipped),
    as ``"#RRGGBB"``: for the HTML report, which must not need matplotlib.

    Linear interpolation between 9 samples of the map (within a few levels of it).
    """
    v = min(1.0, max(0.0, float(value))) * (len(_CIVIDIS) - 1)
    low = int(v)
    high = min(low + 1, len(_CIVIDIS) - 1)
    frac = v - low
    a, b = rgb(_CIVIDIS[low]), rgb(_CIVIDIS[high])
    mixed = (round(x + (y - x) * frac) for x, y in zip(a, b, strict=True))
    return "#" + "".join(f"{c:02X}" for c in mixed)


# cividis at 0, 1/8, ..., 1 (matplotlib's table)
_CIVIDIS: tuple[str, ...] = (
    "#00224E",
    "#1A386F",
    "#434E6C",
    "#61656F",
    "#7D7C78",
    "#9B9476",
    "#BCAE6C",
    "#DEC958",
    "#FEE838",
)
