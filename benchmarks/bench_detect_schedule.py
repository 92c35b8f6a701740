"""What detecting every k-th frame costs in agreement with detecting every frame.

    python benchmarks/bench_detect_schedule.py --every 3 5 10

For each clip, annotate runs once with ``schedule.detect_every = 1`` (the reference)
and once per k. Per frame, faces of the two runs are matched greedily by box IoU
(>= 0.5 counts as found). Reported: face recall (reference faces found), precision,
mean and 5th-percentile IoU of the matched boxes, and the detector's seconds
(``detect`` stage) of each run. Boxes do not depend on the backbone, so the smoke
preset is used.

Prints a Markdown table (a benchmark script may print; the library never does).
"""

from __future__ import annotations

import argparse
import os
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ["single_face.mp4", "WolfgangLanger_Pexels.mp4", "no_face.mp4"]


def boxes_by_frame(clip: Path, every: int) -> tuple[dict[int, list[np.ndarray]], float]:
    from affstream.api import annotate, resolve_config

    config = resolve_config("smoke", device="cpu").with_overrides(schedule={"detect_every": every})
    run = annotate(clip, pipeline=config)
    found: dict[int, list[np.ndarray]] = defaultdict(list)
    for row in run:
        if row.success:
            found[row.frame_index].append(np.asarray(row.box_xyxy, dtype=np.float64))
    return found, float(run.report().stage_times.get("detect", {}).get("seconds", 0.0))


def agreement(reference: dict, other: dict) -> tuple[int, int, int, list[float]]:
    from affstream.detect.track import box_iou

    ref_faces = other_faces = matched = 0
    ious: list[float] = []
    for frame in set(reference) | set(other):
        a, b = reference.get(frame, []), other.get(frame, [])
        ref_faces += len(a)
        other_faces += len(b)
        if not a or not b:
            continue
        iou = box_iou(np.stack(a), np.stack(b))
        while iou.size and iou.max() >= 0.5:
            i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
            ious.append(float(iou[i, j]))
            matched += 1
            iou[i, :] = -1
            iou[:, j] = -1
    return ref_faces, other_faces, matched, ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--clips", nargs="+", default=[str(ROOT / "tests" / "data" / c) for c in CLIPS])
    args = parser.parse_args()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; smoke preset, CPU\n")
    print("| clip | k | reference faces | faces | recall | precision | mean IoU | p5 IoU | detect s (k=1) | detect s (k) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clip in map(Path, args.clips):
        reference, ref_s = boxes_by_frame(clip, 1)
        for every in args.every:
            other, other_s = boxes_by_frame(clip, every)
            ref_n, other_n, matched, ious = agreement(reference, other)
            recall = matched / ref_n if ref_n else float("nan")
            precision = matched / other_n if other_n else float("nan")
            mean_iou = float(np.mean(ious)) if ious else float("nan")
            p5 = float(np.percentile(ious, 5)) if ious else float("nan")
            print(f"| {clip.name} | {every} | {ref_n} | {other_n} | {recall:.3f} | {precision:.3f} | {mean_iou:.3f} | "
                  f"{p5:.3f} | {ref_s:.2f} | {other_s:.2f} |")


if __name__ == "__main__":
    main()
