"""Corpus throughput: local engine with 1 and 2 workers, and the Ray engine, in one run.

    python benchmarks/bench_corpus.py --pipeline smoke --copies 3 --repeat 2

A corpus of ``--copies`` copies of each clip in tests/data (nested folders) is built
once; every setting runs ``affstream corpus`` as a user would (a fresh process, a fresh
output folder), the settings interleaved ``--repeat`` times so that load on a shared
machine hits them alike. "wall" is the whole command (start-up, model loading in each
worker, Ray's start when used); frames/s is frames written over wall. The table's
ratios compare medians measured in this run.

Prints a Markdown table (a benchmark script may print; the library never does).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ["single_face.mp4", "WolfgangLanger_Pexels.mp4", "no_face.mp4"]

SETTINGS = {
    "local, 1 worker": ["--engine", "local", "--workers", "1"],
    "local, 2 workers": ["--engine", "local", "--workers", "2"],
    "ray, 2 actors": ["--engine", "ray", "--workers", "2"],
}


def build_corpus(folder: Path, copies: int) -> int:
    """Copies of the test clips in nested folders; returns the number of videos."""
    count = 0
    for copy in range(copies):
        for name in CLIPS:
            target = folder / f"set{copy}" / ("deep" if count % 2 else "") / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "tests" / "data" / name, target)
            count += 1
    return count


def run_setting(corpus: Path, extra: list[str], args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "affstream", "corpus", str(corpus), "-o", out, "--pipeline", args.pipeline,
                   "--device", "cpu", *extra]
        if args.backbone:
            command += ["--backbone", args.backbone]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(extra)} failed ({done.returncode}): {done.stderr[-2000:]}")
        with open(Path(out) / "manifest.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    frames = sum(int(row["frames"] or 0) for row in rows)
    return {"wall": wall, "frames": frames, "videos": sum(row["status"] == "done" for row in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="smoke")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "corpus"
        videos = build_corpus(corpus, args.copies)
        for _ in range(args.repeat):
            for name, extra in SETTINGS.items():
                results[name].append(run_setting(corpus, extra, args))
                print(f"# {name}: {results[name][-1]['wall']:.1f} s", file=sys.stderr)
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
          f"{os.getloadavg()[0]:.2f} at the end; "
          f"pipeline {args.pipeline}{', backbone ' + args.backbone if args.backbone else ''}; "
          f"{videos} videos; median of {args.repeat} interleaved runs\n")
    print("| setting | videos | frames | wall s (median) | frames/s | runs (s) |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for name, runs in results.items():
        wall = statistics.median(run["wall"] for run in runs)
        medians[name] = wall
        frames = runs[0]["frames"]
        print(f"| {name} | {runs[0]['videos']} | {frames} | {wall:.1f} | {frames / wall:.1f} | "
              f"{', '.join(format(run['wall'], '.1f') for run in runs)} |")
    print()
    print(f"- speed-up of 2 local workers over 1: {medians['local, 1 worker'] / medians['local, 2 workers']:.2f}x")
    print(f"- Ray engine wall over local engine, both with 2 workers: "
          f"{medians['ray, 2 actors'] / medians['local, 2 workers']:.2f}x "
          f"({medians['ray, 2 actors'] - medians['local, 2 workers']:+.1f} s)")


if __name__ == "__main__":
    main()
