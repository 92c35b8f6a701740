"""End-to-end annotate benchmark: frames/s, time per stage and peak memory.

Each (clip, pipeline) pair runs in its own subprocess so peak RSS is per run:

    python benchmarks/bench_annotate.py --pipeline smoke --clips tests/data/single_face.mp4 tests/data/WolfgangLanger_Pexels.mp4
    python benchmarks/bench_annotate.py --backbone ViT-B-32:random --device cuda

Before/after a change, in one run: check the old commit out beside the tree
(``git worktree add /tmp/old COMMIT``) and pass ``--baseline-tree /tmp/old --repeat 5``;
runs of the two trees are interleaved and the table gains a ratio row (median
frames/s of this tree over the baseline's).

Prints a Markdown table (a benchmark script may print; the library never does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time, torch
from affstream.api import annotate_to_files, resolve_config
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
t0 = time.perf_counter()
config = resolve_config(args["pipeline"], backbone=args["backbone"], device=args["device"], batch_size=args["batch_size"])
if args["detect_batch"]:
    try:
        config = config.with_overrides(schedule={"detect_batch_frames": args["detect_batch"]})
    except Exception:  # an older affstream (baseline tree): the knob was detect.batch_frames
        config = config.with_overrides(detect={"batch_frames": args["detect_batch"]})
files = annotate_to_files(args["clip"], args["out"], pipeline=config)
total = time.perf_counter() - t0
r = files.report
r = r.to_dict() if hasattr(r, "to_dict") else r  # a RunReport (older versions: a dict)
peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
print(json.dumps({"counts": r["counts"], "timings": r["timings"], "device": r["device"], "backbone": r["backbone"]["spec"],
                  "total_s_with_load": total, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_gpu_mib": peak_gpu}))
"""


def run_one(clip: str, args: argparse.Namespace, tree: str | None = None) -> dict:
    """One annotation in a fresh process; ``tree``: import affstream from that source tree."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(tree), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as out:
        payload = json.dumps({"clip": os.path.abspath(clip), "out": out, "pipeline": args.pipeline,
                              "backbone": args.backbone, "device": args.device, "batch_size": args.batch_size,
                              "threads": args.threads, "detect_batch": args.detect_batch})
        proc = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True,
                              env=env, cwd=out, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{clip}: benchmark run failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+", default=["tests/data/single_face.mp4", "tests/data/WolfgangLanger_Pexels.mp4"])
    parser.add_argument("--pipeline", default="smoke")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--detect-batch", type=int, default=None, help="frames per detector call")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--json", action="store_true", help="print raw JSON lines instead of a table")
    parser.add_argument("--baseline-tree", default=None, help="source tree of an older commit to compare with")
    parser.add_argument("--repeat", type=int, default=1, help="runs per clip (and per tree); the median is shown")
    args = parser.parse_args()
    if args.baseline_tree:
        compare(args)
        return
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}")
    stages = ("decode", "detect", "track", "align", "embed", "head")
    stage_cells = " | ".join(f"{s} s" for s in stages)
    print(f"| clip | backbone | device | frames | rows | wall s | frames/s | {stage_cells} | peak RSS MiB | peak GPU MiB |")
    print("|" + "---|" * (10 + len(stages)))
    for clip in args.clips:
        r = run_one(clip, args)
        if args.json:
            print(json.dumps(r))
            continue
        st = r["timings"]["stages"]
        cells = [f"{st.get(s, {}).get('seconds', 0.0):.2f}" for s in stages]
        gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        counts, timings = r["counts"], r["timings"]
        print(f"| {clip.split('/')[-1]} | {r['backbone']} | {r['device']} | {counts['frames_written']} | {counts['rows']} | "
              f"{timings['wall_s']:.2f} | {timings['frames_per_s']:.1f} | " + " | ".join(cells)
              + f" | {r['peak_rss_mib']:.0f} | {gpu} |")


def compare(args: argparse.Namespace) -> None:
    """Interleaved runs of the baseline tree and this tree; median frames/s and their ratio."""
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; {args.repeat} interleaved run(s) per tree")
    print("| clip | baseline frames/s (runs) | this tree frames/s (runs) | ratio this/baseline | "
          "ratio of total s incl. load (baseline/this) |")
    print("|---|---|---|---|---|")
    for clip in args.clips:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        rates: dict[str, list[float]] = {"baseline": [], "this": []}
        totals: dict[str, list[float]] = {"baseline": [], "this": []}
        for _ in range(args.repeat):
            for name, tree in (("baseline", args.baseline_tree), ("this", here)):
                result = run_one(clip, args, tree)
                rates[name].append(result["timings"]["frames_per_s"])
                totals[name].append(result["total_s_with_load"])
        base, this = statistics.median(rates["baseline"]), statistics.median(rates["this"])
        total_ratio = statistics.median(totals["baseline"]) / statistics.median(totals["this"])
        print(f"| {clip.split('/')[-1]} | {base:.2f} ({', '.join(f'{r:.1f}' for r in rates['baseline'])}) | "
              f"{this:.2f} ({', '.join(f'{r:.1f}' for r in rates['this'])}) | {this / base:.3f} | {total_ratio:.3f} |")


if __name__ == "__main__":
    main()
