"""The report in a real browser: headless Chromium (Debian's ``chromium``, which .ci/run
installs) opens the pages from disk with the network off, and the test checks that the
script ran without a console error, that the charts and key frames are there, that
hover and zoom work, and saves screenshots (to ``$AFFSTREAM_TEST_SCREENSHOTS`` as well,
when set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from browser import Chromium, find_chromium
from picture_inputs import annotated, copy_outputs
from PIL import Image
from two_faces import make_two_face_clip

from affstream.pictures.index import write_reports

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"
    ),
]

_STATE = """(() => {
  const charts = document.querySelectorAll('svg.timeline-chart');
  return {
    ready: document.documentElement.getAttribute('data-timeline'),
    charts: charts.length,
    faces: Array.from(charts).map(c => Number(c.getAttribute('data-face'))),
    lines: document.querySelectorAll('svg.timeline-chart path.line-valence[d^="M"]').length,
    heat: Array.from(document.querySelectorAll('svg.timeline-chart image.heat'))
      .map(i => i.getAttribute('href').startsWith('data:image/png')),
    keyframes: Array.from(document.querySelectorAll('figure.keyframe img')).map(i => [i.complete, i.naturalWidth]),
    stats: document.querySelectorAll('svg.chart-share, svg.chart-va, svg.chart-au').length,
    ticks: Array.from(charts[0] ? charts[0].querySelectorAll('text.tick') : []).map(t => t.textContent).join(' '),
  };
})()"""


def keep(shot: Path) -> None:
    folder = os.environ.get("AFFSTREAM_TEST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(folder) / shot.name)


@pytest.fixture(scope="module")
def pages(single_face_mp4, tmp_path_factory) -> dict[str, Path]:
    """Report pages of the real clip and of the two-face clip, and their folder's index."""
    base = tmp_path_factory.getbasetemp()
    media = base / "pictures-media"
    media.mkdir(exist_ok=True)
    clip = media / "two_faces.mp4"
    if not clip.exists():
        make_two_face_clip(clip)
    folder = tmp_path_factory.mktemp("browser")
    for video in (single_face_mp4, clip):
        copy_outputs(annotated(video, base / "pictures-annotated"), folder)
    result = write_reports(folder)
    assert not result.failed
    return {"single": folder / "single_face.report.html", "two": folder / "two_faces.report.html", "index": result.path}


def check_clean(browser: Chromium) -> None:
    assert browser.errors == []
    outside = [url for url in browser.requests if not url.startswith(("file:", "data:", "about:"))]
    assert outside == [], "the page asked for the network"


def test_report_of_the_real_clip(pages, tmp_path):
    with Chromium(CHROMIUM, width=1280, height=900) as browser:
        browser.open(pages["single"].as_uri())
        state = browser.evaluate(_STATE)
        assert state["ready"] == "ready"
        assert state["charts"] == 1 and state["faces"] == [0] and state["lines"] == 1
        assert state["heat"] == [True, True]
        assert state["keyframes"] and all(done and width > 0 for done, width in state["keyframes"])
        assert state["stats"] == 3
        check_clean(browser)

        # hover: the tooltip shows the values under the cursor
        browser.evaluate("document.getElementById('timeline').scrollIntoView()")
        left, top, width = browser.evaluate(
            "(() => { const r = document.querySelector('svg.timeline-chart').getBoundingClientRect();"
            " return [r.left, r.top, r.width]; })()"
        )
        browser.mouse("mouseMoved", left + 92 + (width - 106) * 0.5, top + 40)
        hidden, text = browser.evaluate(
            "(() => { const t = document.querySelector('.tooltip'); return [t.hidden, t.textContent]; })()"
        )
        assert not hidden and "valence" in text and "face 0" in text and "1.2" in text  # the middle of 2.4 s

        # drag from 25 % to 50 % of the plot: zoomed in, the reset button comes alive
        x0, x1 = left + 92 + (width - 106) * 0.25, left + 92 + (width - 106) * 0.5
        browser.mouse("mousePressed", x0, top + 40, buttons=1)
        browser.mouse("mouseMoved", x1, top + 40, buttons=1)
        browser.mouse("mouseReleased", x1, top + 40)
        zoomed = browser.evaluate(_STATE)
        assert browser.evaluate("document.getElementById('reset-zoom').disabled") is False
        assert zoomed["ticks"] != state["ticks"]
        browser.evaluate("document.getElementById('reset-zoom').click()")
        assert browser.evaluate(_STATE)["ticks"] == state["ticks"]
        check_clean(browser)
        shot = browser.screenshot(tmp_path / "report_single_face.png")
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 1500
    keep(shot)


def test_report_of_the_two_face_clip_and_the_index(pages, tmp_path):
    with Chromium(CHROMIUM, width=1280, height=900) as browser:
        browser.open(pages["two"].as_uri())
        state = browser.evaluate(_STATE)
        assert state["charts"] == 2 and state["faces"] == [0, 1] and state["lines"] == 2
        assert len(state["keyframes"]) >= 1 and all(w > 0 for _, w in state["keyframes"])
        assert state["stats"] == 6
        check_clean(browser)
        keep(browser.screenshot(tmp_path / "report_two_faces.png"))
    with Chromium(CHROMIUM, width=1280, height=700) as browser:
        browser.open(pages["index"].as_uri())
        links = browser.evaluate("Array.from(document.querySelectorAll('table.videos a')).map(a => a.getAttribute('href'))")
        assert links == ["single_face.report.html", "two_faces.report.html"]
        check_clean(browser)
        keep(browser.screenshot(tmp_path / "index.png", full_page=False))
