"""Annotate one video from Python and summarise the rows.

    python examples/annotate_video.py                       # smoke preset on the bundled clip
    python examples/annotate_video.py my.mp4 --pipeline default

Writes nothing; see `affstream annotate` for CSV/JSON output.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import affstream
from affstream.labels import EXPR_LABELS

CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "single_face.mp4"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("video", nargs="?", default=str(CLIP))
    parser.add_argument("--pipeline", default="smoke")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    run = affstream.annotate(args.video, pipeline=args.pipeline, device=args.device)
    expressions: Counter[str] = Counter()
    for row in run:
        if row.success:
            expressions[EXPR_LABELS[row.expression]] += 1
    report = run.report()  # a RunReport; report.to_dict() is the JSON report
    if not report.meaningful:
        print("note:", report.warning)
    counts = report.counts
    print(f"{counts.frames_written} frames, {counts.frames_with_faces} with a face, {counts.tracks} track(s)")
    print("most frequent expressions:", expressions.most_common(3))
    print(f"{report.frames_per_s:.1f} frames/s on {report.device}")


if __name__ == "__main__":
    main()
