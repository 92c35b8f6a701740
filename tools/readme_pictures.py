"""Regenerate the README's pictures in docs/images/ from a real clip of tests/data.

    python tools/readme_pictures.py [--csv WORK/clip.csv] [--frame 100]

1. annotates ``tests/data/WolfgangLanger_Pexels.mp4`` with the smoke pipeline (random
   weights: real decoding, face detection and tracking) unless ``--csv`` gives that CSV;
2. keeps its frames, timestamps and face boxes but replaces the affect values by smooth
   made-up signals (``tests/picture_inputs.varied_csv``): random weights give nearly
   constant values, which would show none of the drawing; the pictures are labelled
   "illustrative values" in the README;
3. writes ``overlay_frame.png`` (frame ``--frame`` of ``affstream render``),
   ``timeline.png`` (``affstream plot``) and ``report.png`` (a headless-Chromium
   screenshot of ``affstream report`` down to its per-face statistics, scaled to 900 px
   wide), each under 300 KB.

Needs the pictures extra (matplotlib) and Chromium (``tests/browser.py``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import av
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import Chromium, find_chromium  # noqa: E402
from picture_inputs import varied_csv  # noqa: E402

CLIP = ROOT / "tests" / "data" / "WolfgangLanger_Pexels.mp4"
IMAGES = ROOT / "docs" / "images"
MAX_BYTES = 300 * 1024


def affstream(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "affstream", *map(str, args)], check=True)


def save_small(image: Image.Image, path: Path, width: int | None = None) -> Path:
    """PNG under MAX_BYTES: scaled to ``width`` if given, then fewer colours until it fits
    (a last resort: a palette shifts the colour-coded classes)."""
    if width is not None and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image = image.convert("RGB")
    for colours in (None, 256, 128, 64):
        picture = image if colours is None else image.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=0)
        picture.save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES:
            return path
    raise SystemExit(f"{path}: still over {MAX_BYTES} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, help="an existing smoke CSV of the clip (skips annotating)")
    parser.add_argument("--frame", type=int, default=100, help="0-based frame of the overlay picture")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        csv = args.csv
        if csv is None:
            affstream("annotate", CLIP, "-o", work / "smoke", "--pipeline", "smoke")
            csv = work / "smoke" / f"{CLIP.stem}.csv"
        shown = varied_csv(csv, work / f"{CLIP.stem}.csv")
        overlay = work / "overlay.mp4"
        affstream("render", CLIP, "--annotations", shown, "-o", overlay)
        with av.open(str(overlay)) as container:
            for k, frame in enumerate(container.decode(video=0)):
                if k == args.frame:
                    save_small(frame.to_image(), IMAGES / "overlay_frame.png")
                    break
        affstream("plot", shown, "-o", work / "timeline.png")
        save_small(Image.open(work / "timeline.png"), IMAGES / "timeline.png", width=1100)
        affstream("report", shown, "--video", CLIP, "-o", work / "report.html")
        chromium = find_chromium()
        if chromium is None:
            raise SystemExit("Chromium is needed for the report screenshot (apt-get install chromium)")
        with Chromium(chromium, width=1280, height=900) as browser:
            browser.open((work / "report.html").as_uri())
            if browser.errors:
                raise SystemExit(f"the report page logged errors: {browser.errors}")
            # down to the end of the Faces section: below are the key frames, photographs that
            # would take the PNG over 300 KB (overlay_frame.png shows what they look like)
            bottom = browser.evaluate("document.querySelector('.faces').getBoundingClientRect().bottom + window.scrollY + 12")
            browser.screenshot(work / "report.png")
        page = Image.open(work / "report.png")
        save_small(page.crop((0, 0, page.width, min(page.height, round(bottom)))), IMAGES / "report.png", width=900)
    for name in ("overlay_frame.png", "timeline.png", "report.png"):
        path = IMAGES / name
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
