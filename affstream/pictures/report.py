"""``affstream report``: one self-contained HTML page per annotated video.

The page needs no network: its stylesheet, its script (a hand-written timeline, no
library: ``assets/report.js``), its data (JSON) and its pictures (JPEG data URIs) are all
inline. It shows the source metadata and the run report (the JSON written beside the
CSV), the interactive timeline, per face the share of time per expression, the mean and
spread of valence and arousal and the AU rates (static SVG), and the key frames -- the
most intense moment of each expression with the overlay drawn -- when the video can be
found and matches the CSV.

Inputs: the CSV, its run report ``<stem>.json`` beside it (optional), and the video: given,
or found from the run report's ``source.path`` (as given when annotating: relative to the
current folder, else to the CSV's folder).
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_text
from ..labels import AU_LABELS, EXPR_LABELS
from .keyframes import KeyFrame, key_moments, try_key_frames
from .outputs import GENERATOR, TEXT_MARK, check_output
from .pages import asset, script_json
from .palette import _CIVIDIS, AROUSAL_COLOUR, EXPR_COLOURS, VALENCE_COLOUR, track_colour
from .report_svg import au_rates_svg, expression_share_svg, va_summary_svg
from .summary import CsvSummary, FaceSummary, summarise_csv

REPORT_SUFFIX = ".report.html"
_AU_THRESHOLD = 0.5  # the tooltip lists the AUs whose mean probability in a bin reaches this


@dataclass(frozen=True)
class ReportResult:
    """One page written: its ``path``, the CSV's ``summary``, how many ``key_frames``
    (pictures) it shows, and ``note``: why it shows none, or None."""

    path: Path
    summary: CsvSummary
    key_frames: int
    note: str | None


def report_path(csv: str | Path) -> Path:
    """``<csv folder>/<stem>.report.html``: the default page of ``csv``."""
    csv = Path(csv)
    return csv.with_name(csv.stem + REPORT_SUFFIX)


def read_run_report(csv: str | Path) -> dict[str, Any] | None:
    """The run report ``<stem>.json`` beside ``csv`` (an object with ``affstream_version``),
    or None when it is missing or not affstream's."""
    path = Path(csv).with_suffix(".json")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and "affstream_version" in value else None


def find_video(run_report: dict[str, Any] | None, csv: str | Path) -> Path | None:
    """The annotated video, from the run report's ``source.path``: as given (absolute,
    or relative to the current folder), else relative to the CSV's folder, else its
    file name in the CSV's folder; None if none of these is a file."""
    source = ((run_report or {}).get("source") or {}).get("path")
    if not isinstance(source, str) or not source:
        return None
    given, folder = Path(source), Path(csv).parent
    for candidate in (given, folder / given, folder / given.name):
        if candidate.is_file():
            return candidate
    return None


def write_report(
    csv: str | Path,
    out: str | Path | None = None,
    *,
    video: str | Path | None = None,
    run_report: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> ReportResult:
    """Write the page of ``csv`` to ``out`` (default :func:`report_path`), atomically.

    video: the annotated video (default: :func:`find_video`); run_report: its JSON report
    (default: :func:`read_run_report`). Raises DataError for a CSV that is not affstream's,
    OutputError for an output that would replace an input or another tool's file. A
    missing or mismatching video is no error: the page says why it has no key frames.
    """
    csv = Path(csv)
    out = Path(out) if out is not None else report_path(csv)
    run_report = run_report if run_report is not None else read_run_report(csv)
    video = Path(video) if video is not None else find_video(run_report, csv)
    check_output(out, inputs=[csv, csv.with_suffix(".json"), video], overwrite=overwrite)
    summary = summarise_csv(csv)
    stream = ((run_report or {}).get("source") or {}).get("stream_index", -1)
    frames, note = try_key_frames(video, csv, key_moments(summary), video_stream=int(stream))
    title = Path(((run_report or {}).get("source") or {}).get("path") or csv.stem).name
    atomic_write_text(out, report_html(summary, run_report, frames, note, title=title))
    return ReportResult(out, summary, len(frames), note)


# ---------------------------------------------------------------------------- the page


def page(title: str, body: str) -> str:
    """A complete HTML document with the inline stylesheet and :data:`~.outputs.TEXT_MARK`."""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="generator" content="{escape(GENERATOR)}">\n<!-- {TEXT_MARK} -->\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>\n{asset('report.css')}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def clock(seconds: float) -> str:
    """``12.34 s`` below two minutes, else ``m:ss.s``."""
    if not math.isfinite(seconds):
        return "?"
    if abs(seconds) < 120:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def report_html(
    summary: CsvSummary, run_report: dict[str, Any] | None, frames: list[KeyFrame], note: str | None, *, title: str
) -> str:
    """The whole page as text (see the module docstring)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f'<header><h1>{escape(title)}</h1><p class="sub">affstream report · {escape(now)} · '
        f"{summary.frames} frames, {clock(summary.duration_s)}, {len(summary.faces)} face(s)</p></header>"
    ]
    if run_report is not None and run_report.get("meaningful") is False:
        parts.append(f'<div class="banner" role="alert">{escape(str(run_report.get("warning") or ""))}</div>')
    parts.append(_facts_section(summary, run_report))
    parts.append(_timeline_section(summary))
    parts.append(_faces_section(summary))
    parts.append(_key_frames_section(frames, note, bool(summary.faces)))
    parts.append(
        f"<footer>Written by {escape(GENERATOR)} from {escape(summary.path.name)}. "
        "Shares, means and rates weight every frame by its display time. "
        "This page is self-contained: it needs no network.</footer>"
    )
    parts.append(
        f'<script type="application/json" id="affstream-data">{script_json(_timeline_data(summary))}'
        f"</script>\n<script>\n{asset('report.js')}</script>"
    )
    return page(f"{title}: affstream report", "\n".join(parts))


def _dl(items: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in items if v not in (None, ""))
    return f"<dl>{rows}</dl>"


def _number(value: Any, pattern: str) -> str | None:
    return pattern.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _facts_section(summary: CsvSummary, report: dict[str, Any] | None) -> str:
    csv_facts = [
        ("CSV", summary.path.name),
        ("frames", summary.frames),
        ("rows", summary.rows),
        ("frames with a face", summary.frames_with_faces),
        ("time span", clock(summary.duration_s)),
        ("faces (tracks)", len(summary.faces)),
    ]
    if report is None:
        return (
            f'<section><h2>Source and run</h2><div class="facts">{_dl(csv_facts)}</div>'
            f'<p class="note">No run report (JSON) beside the CSV: source metadata unknown.</p></section>'
        )
    source = report.get("source") or {}
    counts = report.get("counts") or {}
    timings = report.get("timings") or {}
    backbone, head = report.get("backbone") or {}, report.get("head") or {}
    size = f"{source.get('width')} x {source.get('height')} px" if source.get("width") else None
    fps = source.get("average_fps")
    source_facts = [
        ("video", source.get("path")),
        ("codec", source.get("codec")),
        ("size (upright)", size),
        ("rotation", f"{source.get('rotation_deg')} deg" if source.get("rotation_deg") else None),
        ("frame rate", f"{fps:.3f} frames/s" if isinstance(fps, (int, float)) else None),
        ("declared frames", source.get("frame_count")),
        ("duration", clock(source["duration_s"]) if isinstance(source.get("duration_s"), (int, float)) else None),
        ("time base", source.get("time_base")),
        ("video stream", f"{source.get('stream_index', 0)} of {source.get('video_streams', 1)}"),
    ]
    run_facts = [
        ("affstream", report.get("affstream_version")),
        ("pipeline", (report.get("config") or {}).get("name")),
        ("device", report.get("device")),
        ("backbone", backbone.get("spec")),
        ("head", " / ".join(str(head[k]) for k in ("name", "kind") if head.get(k))),
        ("frames decoded", counts.get("frames_decoded")),
        ("frames written", counts.get("frames_written")),
        ("decode errors", counts.get("decode_errors")),
        ("wall time", _number(timings.get("wall_s"), "{:.1f} s")),
        ("speed", _number(timings.get("frames_per_s"), "{:.1f} frames/s")),
    ]
    messages = counts.get("decode_error_messages") or []
    errors = "".join(f"<li>{escape(str(m))}</li>" for m in messages)
    return (
        f'<section><h2>Source and run</h2><div class="facts">{_dl(source_facts)}{_dl(run_facts + csv_facts[1:4])}</div>'
        + (f"<h3>Decode messages</h3><ul>{errors}</ul>" if errors else "")
        + f"<details><summary>Full run report (JSON)</summary><pre>{escape(json.dumps(report, indent=2))}</pre>"
        "</details></section>"
    )


def _legend() -> str:
    chips = "".join(
        f'<span><span class="chip" style="background:{EXPR_COLOURS[label]}"></span>{escape(label)}</span>'
        for label in EXPR_LABELS
    )
    ramp = ", ".join(_CIVIDIS)
    return (
        f'<div class="legend"><span><span class="va-line" style="border-color:{VALENCE_COLOUR}"></span>valence</span>'
        f'<span><span class="va-line" style="border-color:{AROUSAL_COLOUR};border-top-style:dashed"></span>arousal</span>'
        f'{chips}<span>AU probability 0<span class="ramp" style="background:linear-gradient(to right, {ramp})">'
        "</span>1</span></div>"
    )


def _timeline_section(summary: CsvSummary) -> str:
    hidden = len(summary.faces) - len(summary.series.track_ids)
    more = f" {hidden} more face(s), seen for fewer frames, have statistics below but no timeline." if hidden else ""
    return (
        "<section><h2>Timeline</h2>"
        + _legend()
        + '<div class="toolbar"><button id="reset-zoom" type="button" disabled>Reset zoom</button>'
        "<span>Hover for values; drag to zoom into a time range; double-click to show all. Lanes: opacity = "
        f"probability; the top lane is the most probable expression.{escape(more)}</span></div>"
        '<div id="timeline"></div><noscript><p class="note">The timeline needs JavaScript; the statistics '
        "below do not.</p></noscript></section>"
    )


def _rounded(values: np.ndarray) -> list:
    """Floats to 3 decimals, NaN to null (JSON), any shape."""
    return [None if not math.isfinite(v) else round(float(v), 3) for v in values]


def _face_title(summary: CsvSummary, face: FaceSummary) -> str:
    share = face.time_s / summary.duration_s if summary.duration_s > 0 else 0.0
    text = f"face {face.track_id} · on screen {clock(face.time_s)} ({share:.0%})"
    if face.dominant is not None:
        text += f" · mostly {EXPR_LABELS[face.dominant]} ({face.expr_share[face.dominant]:.0%})"
    return text


def _timeline_data(summary: CsvSummary) -> dict[str, Any]:
    series = summary.series
    faces = []
    for k, track in enumerate(series.track_ids):
        expr = [None if np.isnan(row).all() else _rounded(row) for row in series.expr[k]]
        au = [None if np.isnan(row).all() else _rounded(row) for row in series.au[k]]
        faces.append(
            {
                "id": int(track),
                "title": _face_title(summary, summary.face(track)),
                "valence": _rounded(series.valence[k]),
                "arousal": _rounded(series.arousal[k]),
                "expr": expr,
                "au": au,
            }
        )
    moments = [
        {
            "face": m.track_id,
            "expr": m.expression,
            "time_s": round(m.time_s, 4),
            "p": round(m.probability, 4),
            "frame": m.frame_index,
        }
        for m in key_moments(summary)
    ]
    return {
        "edges_s": [round(float(t), 4) for t in series.edges_s],
        "expr_labels": list(EXPR_LABELS),
        "au_labels": list(AU_LABELS),
        "expr_colours": [EXPR_COLOURS[label] for label in EXPR_LABELS],
        "valence_colour": VALENCE_COLOUR,
        "arousal_colour": AROUSAL_COLOUR,
        "cividis": list(_CIVIDIS),
        "au_threshold": _AU_THRESHOLD,
        "faces": faces,
        "key_moments": moments,
    }


def _faces_section(summary: CsvSummary) -> str:
    if not summary.faces:
        return '<section><h2>Faces</h2><p class="note">No face was found.</p></section>'
    cards = []
    for face in summary.faces:
        colour = track_colour(face.track_id)
        charts = []
        if face.expr_share is not None:
            charts.append(
                f"<figure><figcaption>share of time per expression</figcaption>{expression_share_svg(face.expr_share)}</figure>"
            )
        if face.valence_mean is not None:
            charts.append(
                "<figure><figcaption>valence / arousal: mean ± 1 sd</figcaption>"
                f"{va_summary_svg((face.valence_mean, face.valence_sd), (face.arousal_mean, face.arousal_sd), colour)}"
                f"<figcaption>valence {face.valence_mean:+.2f} ± {face.valence_sd:.2f}<br>"
                f"arousal {face.arousal_mean:+.2f} ± {face.arousal_sd:.2f}</figcaption></figure>"
            )
        if face.au_rate is not None:
            charts.append(
                f"<figure><figcaption>share of time each AU is present (mean probability)</figcaption>"
                f"{au_rates_svg(face.au_rate, face.au_mean)}</figure>"
            )
        span = f"{clock(face.first_s)} to {clock(face.last_s)}, {face.frames} frames"
        cards.append(
            f'<div class="face-card" data-face="{face.track_id}"><h3><span class="swatch" '
            f'style="background:{colour}"></span>{escape(_face_title(summary, face))}</h3>'
            f'<p class="note">{escape(span)}</p><div class="charts">{"".join(charts)}</div></div>'
        )
    return f'<section><h2>Faces</h2><div class="faces">{"".join(cards)}</div></section>'


def _key_frames_section(frames: list[KeyFrame], note: str | None, has_faces: bool) -> str:
    if not frames:
        text = note or (
            "No key frames: no face has expression outputs." if has_faces else "No face was found, so there are no key frames."
        )
        return f'<section><h2>Key frames</h2><p class="note">{escape(text)}</p></section>'
    cards = []
    for frame in frames:
        data = base64.b64encode(frame.jpeg).decode("ascii")
        lines = []
        for m in frame.moments:
            label = EXPR_LABELS[m.expression]
            lines.append(
                f'<span class="swatch" style="background:{EXPR_COLOURS[label]}"></span>'
                f"<b>{escape(label)} {m.probability:.0%}</b> · face {m.track_id}"
            )
        alt = f"frame {frame.frame_index}: " + ", ".join(
            f"face {m.track_id} {EXPR_LABELS[m.expression]} {m.probability:.0%}" for m in frame.moments
        )
        faces = " ".join(str(m.track_id) for m in frame.moments)
        exprs = " ".join(EXPR_LABELS[m.expression] for m in frame.moments)
        cards.append(
            f'<figure class="keyframe" data-face="{faces}" data-expr="{escape(exprs)}">'
            f'<img src="data:image/jpeg;base64,{data}" width="{frame.size[0]}" height="{frame.size[1]}" '
            f'alt="{escape(alt)}"><figcaption>{"<br>".join(lines)}<br>'
            f"{escape(clock(frame.time_s))} · frame {frame.frame_index}<br>"
            f'<button type="button" data-time="{frame.time_s:.6f}">show on timeline</button></figcaption></figure>'
        )
    return (
        '<section><h2>Key frames</h2><p class="note">Per face, the frame where each expression is the top '
        f'class with its highest probability.</p><div class="keyframes">{"".join(cards)}</div></section>'
    )
