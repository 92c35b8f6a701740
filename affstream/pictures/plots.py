"""``affstream plot``: a static timeline of a per-frame CSV (PNG or SVG, matplotlib).

Per face, three panels on one time axis (seconds from the CSV's timestamps):

* valence (solid) and arousal (dashed) in [-1, 1], with gaps where the face is absent;
* the expression ribbon: one lane per class in its colour, opacity = its probability;
* the AU heatmap: AU x time, colour = probability (cividis, readable in colour blindness).

Several faces are stacked panels (the ``max_faces`` seen longest). Values are the
time-binned means of :mod:`.summary` (at most ~1200 bins: one per frame for short clips).
matplotlib is the optional extra ``affstream[pictures]``, imported only here, lazily;
without it the error says how to install it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ..errors import ConfigError, OutputError
from ..files import atomic_path
from ..labels import AU_LABELS, EXPR_LABELS
from .outputs import GENERATOR, TEXT_MARK, check_output
from .palette import AROUSAL_COLOUR, AU_COLORMAP, EXPR_COLOURS, VALENCE_COLOUR, rgb
from .summary import CsvSummary, summarise_csv

INSTALL_HINT = "pip install 'affstream[pictures]'"
FORMATS = ("png", "svg")
DEFAULT_MAX_FACES = 6
_WIDTH_IN = 11.0
_FACE_HEIGHT_IN = 4.4
_DPI = 130


def require_matplotlib():
    """The matplotlib module, or ConfigError with the one-line install hint."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(f"plots need matplotlib, which is not installed; install it with {INSTALL_HINT}") from None
    return matplotlib


def plot_timeline(
    csv: str | Path,
    out: str | Path,
    *,
    max_faces: int = DEFAULT_MAX_FACES,
    title: str | None = None,
    note: str | None = None,
    overwrite: bool = False,
    summary: CsvSummary | None = None,
) -> Path:
    """Draw the timeline of ``csv`` into ``out`` (.png or .svg, atomically); returns ``out``.

    title: the heading (default: the CSV's file name); note: a line under it (e.g. the run
    report's warning that the weights are random). Raises DataError for a CSV that is not
    affstream's, OutputError for a bad output (see :func:`~.outputs.check_output`),
    ConfigError without matplotlib.
    """
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise OutputError(f"{out}: give a .png or .svg output name")
    check_output(out, inputs=[csv], overwrite=overwrite)
    require_matplotlib()
    summary = summary or summarise_csv(csv)
    figure = timeline_figure(summary, max_faces=max_faces, title=title or Path(csv).name, note=note)
    metadata = {"Software": GENERATOR} if fmt == "png" else {"Creator": GENERATOR, "Description": TEXT_MARK}
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format=fmt, dpi=_DPI, metadata=metadata)
    return out


def _chosen_faces(summary: CsvSummary, max_faces: int) -> list[int]:
    """Rows of ``summary.series`` to draw: the faces seen longest, shown in id order."""
    series = summary.series
    frames = {face.track_id: face.frames for face in summary.faces}
    ranked = sorted(range(len(series.track_ids)), key=lambda k: (-frames[series.track_ids[k]], series.track_ids[k]))
    return sorted(ranked[: max(1, int(max_faces))])


def timeline_figure(summary: CsvSummary, *, max_faces: int = DEFAULT_MAX_FACES, title: str = "", note: str | None = None):
    """The matplotlib Figure of the timeline (no pyplot, no global state): a header (title,
    note) above one subfigure per face."""
    require_matplotlib()
    from matplotlib.figure import Figure

    chosen = _chosen_faces(summary, max_faces) if summary.series.track_ids else []
    panels = max(1, len(chosen))
    note_lines = textwrap.wrap(note, 160) if note else []
    header_in = 0.34 + 0.16 * len(note_lines)
    body_in = (panels * _FACE_HEIGHT_IN if chosen else 1.2) + 0.3
    figure = Figure(figsize=(_WIDTH_IN, header_in + body_in), layout="constrained")
    figure.get_layout_engine().set(h_pad=0.04, hspace=0.0)
    header, body = figure.subfigures(2, 1, height_ratios=(header_in, body_in), hspace=0.0)
    header.text(0.01, 1.0 - 0.05 / header_in, title, ha="left", va="top", fontsize=11, fontweight="bold")
    if note_lines:  # in the report banner's amber
        header.text(0.01, 1.0 - 0.24 / header_in, "\n".join(note_lines), ha="left", va="top", fontsize=8, color="#8a5a00")
    if not chosen:
        axes = body.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, f"no face in any of the {summary.frames} frames", ha="center", va="center", fontsize=12)
        return figure
    rows = body.subfigures(panels, 1, hspace=0.02) if panels > 1 else [body]
    for k, (sub, index) in enumerate(zip(np.atleast_1d(rows), chosen, strict=True)):
        _face_panels(sub, summary, index, last=k == panels - 1)
    hidden = len(summary.faces) - len(chosen)
    if hidden > 0:
        body.supxlabel(f"{hidden} more face(s) not shown (seen for fewer frames)", x=0.99, ha="right", fontsize=8)
    return figure


def _face_panels(sub, summary: CsvSummary, index: int, last: bool) -> None:
    series = summary.series
    track = series.track_ids[index]
    face = summary.face(track)
    grid = sub.add_gridspec(3, 2, height_ratios=(2.2, 1.5, 2.0), width_ratios=(1, 0.018), wspace=0.01)
    ax_va = sub.add_subplot(grid[0, 0])
    ax_ex = sub.add_subplot(grid[1, 0], sharex=ax_va)
    ax_au = sub.add_subplot(grid[2, 0], sharex=ax_va)
    extent = (float(series.edges_s[0]), float(series.edges_s[-1]))
    _va_axes(ax_va, series.centres_s, series.valence[index], series.arousal[index], extent)
    _expr_axes(ax_ex, series.expr[index], extent)
    image = _au_axes(ax_au, series.au[index], extent)
    bar = sub.colorbar(image, cax=sub.add_subplot(grid[2, 1]))
    bar.set_label("probability", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    sub.add_subplot(grid[0, 1]).set_axis_off()
    sub.add_subplot(grid[1, 1]).set_axis_off()
    for axes in (ax_va, ax_ex):
        axes.tick_params(labelbottom=False)
    _time_axis(ax_au, summary.duration_s, label=last)
    share = face.time_s / summary.duration_s if summary.duration_s > 0 else 0.0
    parts = [f"face {track}", f"on screen {face.time_s:.1f} s ({share:.0%})"]
    if face.dominant is not None:
        parts.append(f"mostly {EXPR_LABELS[face.dominant]} ({face.expr_share[face.dominant]:.0%} of its time)")
    ax_va.set_title("   ".join(parts), loc="left", fontsize=10, fontweight="bold")


def _isolated(values: np.ndarray) -> np.ndarray:
    """Finite values whose neighbours are both NaN: a line cannot show them, a marker can."""
    finite = np.isfinite(values)
    before = np.concatenate(([False], finite[:-1]))
    after = np.concatenate((finite[1:], [False]))
    return finite & ~before & ~after


def _va_axes(axes, centres: np.ndarray, valence: np.ndarray, arousal: np.ndarray, extent) -> None:
    axes.axhline(0, color="#888888", linewidth=0.6)
    for values, colour, style, label in (
        (valence, VALENCE_COLOUR, "-", "valence"),
        (arousal, AROUSAL_COLOUR, (0, (4, 2)), "arousal"),
    ):
        axes.plot(centres, values, color=colour, linewidth=1.4, linestyle=style, label=label)
        alone = _isolated(values)
        if alone.any():
            axes.plot(centres[alone], values[alone], linestyle="none", marker="o", markersize=3, color=colour)
    axes.set_ylim(-1.05, 1.05)
    axes.set_yticks([-1, 0, 1])
    axes.set_xlim(*extent)
    axes.set_ylabel("valence /\narousal", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(axis="y", color="#dddddd", linewidth=0.5)
    axes.legend(loc="upper right", fontsize=7, ncols=2, frameon=False)


def _expr_axes(axes, expr: np.ndarray, extent) -> None:
    """A "top" lane (the most probable class, opaque), then one lane per class: its
    colour, alpha = its probability; NaN (face absent) stays clear."""
    names = ("top", *EXPR_LABELS)
    colours = np.array([rgb(EXPR_COLOURS[label]) for label in EXPR_LABELS], dtype=np.float32) / 255.0
    lanes = np.zeros((len(names), expr.shape[0], 4), dtype=np.float32)
    present = ~np.isnan(expr).any(axis=1)
    top = np.argmax(np.nan_to_num(expr, nan=-1.0), axis=1)
    lanes[0, :, :3] = colours[top]
    lanes[0, :, 3] = present
    for k in range(len(EXPR_LABELS)):
        lanes[k + 1, :, :3] = colours[k]
        lanes[k + 1, :, 3] = np.nan_to_num(np.clip(expr[:, k], 0, 1), nan=0.0)
    axes.imshow(lanes, aspect="auto", interpolation="nearest", extent=(*extent, len(names), 0))
    axes.set_yticks(np.arange(len(names)) + 0.5, names, fontsize=7)
    for tick, label in zip(axes.get_yticklabels()[1:], EXPR_LABELS, strict=True):
        tick.set_bbox({"boxstyle": "square,pad=0.1", "facecolor": EXPR_COLOURS[label], "alpha": 0.35, "edgecolor": "none"})
    axes.tick_params(axis="y", length=0)
    axes.set_ylabel("expression", fontsize=8)
    axes.axhline(1, color="#555555", linewidth=0.8)
    for y in range(2, len(names)):
        axes.axhline(y, color="white", linewidth=0.6)


def _au_axes(axes, au: np.ndarray, extent):
    from matplotlib import colormaps

    cmap = colormaps[AU_COLORMAP].with_extremes(bad="#f2f2f2")
    image = axes.imshow(
        np.ma.masked_invalid(au.T),
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        extent=(*extent, len(AU_LABELS), 0),
    )
    axes.set_yticks(np.arange(len(AU_LABELS)) + 0.5, AU_LABELS, fontsize=7)
    axes.tick_params(axis="y", length=0)
    axes.set_ylabel("action unit", fontsize=8)
    return image


def _time_axis(axes, duration_s: float, label: bool) -> None:
    from matplotlib.ticker import FuncFormatter

    axes.tick_params(axis="x", labelsize=7)
    if duration_s >= 120:
        axes.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{int(t // 60)}:{int(t % 60):02d}"))
        text = "time (min:s)"
    else:
        text = "time (s)"
    if label:
        axes.set_xlabel(text, fontsize=8)
