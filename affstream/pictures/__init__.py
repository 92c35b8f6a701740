"""Pictures of a run: the overlay video, static timeline plots and the HTML report.

Everything here is a second pass over what ``affstream annotate`` wrote (the per-frame
CSV, its JSON report) and, where pictures of the video are needed, the video itself;
CSV and video are streamed, so memory stays flat in the video's length.

    overlay.py    drawing one frame's annotations (Pillow); reusable by a live view
    frames.py     the video decoded again exactly as annotate did, paired with the CSV
    rows.py       the CSV grouped per frame
    video.py      render_overlay: the re-encoded video (same frames, timestamps, audio)
    summary.py    per-face statistics and the time-binned series
    plots.py      plot_timeline (matplotlib, the optional extra ``affstream[pictures]``)
    keyframes.py  the most intense moment of each expression, as pictures
    report.py     write_report: one self-contained HTML page per video
    index.py      write_reports: the pages of an output folder and its index page
    outputs.py    output checks: never an input, never another tool's file unasked
    palette.py    colour-blind-safe colours (Okabe-Ito, cividis)

Nothing is imported until used: ``import affstream.pictures`` costs nothing, and
matplotlib is needed only for :func:`plot_timeline`.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "render_overlay": "video",
    "plot_timeline": "plots",
    "write_report": "report",
    "write_reports": "index",
    "draw_overlay": "overlay",
    "TrailKeeper": "overlay",
    "summarise_csv": "summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
