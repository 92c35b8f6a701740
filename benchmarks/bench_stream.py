"""Live latency, output rate and drop rate of ``affstream stream`` at 30 fps input.

    python benchmarks/bench_stream.py --frames 600
    python benchmarks/bench_stream.py --backbones smoke ViT-B-32:random --every 1 3

A sender process (tests/live_sender.py: a real clip re-encoded to H.264, MPEG-TS over
UDP on 127.0.0.1, paced at 30 frames/s) feeds ``affstream stream udp://...`` as a
camera would; the session stops after ``--frames`` frames received. Numbers come from
the session's JSON report: latency (arrival to row written) median / p95 over every
row, frames/s analysed, and the share of frames dropped (newest frame wins).

Prints a Markdown table (a benchmark script may print; the library never does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENDER = ROOT / "tests" / "live_sender.py"
CLIP = ROOT / "tests" / "data" / "WolfgangLanger_Pexels.mp4"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_bound(port: int, process: subprocess.Popen, timeout: float = 300.0) -> None:
    wanted = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(line.split()[1] == wanted for line in Path("/proc/net/udp").read_text().splitlines()[1:]):
            return
        time.sleep(0.05)
    raise SystemExit(f"the receiver never bound UDP port {port}")


def run(backbone: str, every: int, frames: int, device: str) -> dict:
    port = free_udp_port()
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "affstream", "stream", f"udp://127.0.0.1:{port}", "-o", out, "--pipeline",
                   "smoke", "--device", device, "--quiet", "--max-frames", str(frames), "--detect-every", str(every)]
        if backbone != "smoke":
            command += ["--backbone", backbone]
        receiver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_bound(port, receiver)
        loops = 1 + frames // 472
        sender = subprocess.Popen([sys.executable, str(SENDER), str(CLIP), f"udp://127.0.0.1:{port}", "--fps", "30",
                                   "--loops", str(loops)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, stderr = receiver.communicate(timeout=900)
        sender.kill()
        if receiver.returncode != 0:
            raise SystemExit(f"stream failed ({receiver.returncode}): {stderr[-1500:]}")
        report = json.loads(next(Path(out).glob("*.json")).read_text())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["smoke", "ViT-B-32:random"])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, device {args.device}; input 30 frames/s over UDP "
          f"(H.264 MPEG-TS, 640x360); {args.frames} frames per run; load average at start {load:.2f}\n")
    print("| backbone | detect every | frames in | analysed | dropped | drop rate | frames/s out | latency median ms "
          "| latency p95 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for every in args.every:
            report = run(backbone, every, args.frames, args.device)
            counts, latency = report["counts"], report["latency"]
            print(f"| {backbone} | {every} | {counts['frames_received']} | {counts['frames_analysed']} | "
                  f"{counts['frames_dropped']} | {report['drop_rate']:.2f} | {report['frames_per_s']['out']:.1f} | "
                  f"{latency['median_ms']:.0f} | {latency['p95_ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
