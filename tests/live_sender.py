"""A live sender for the stream tests: a real clip re-encoded with PyAV (H.264, short
GOP, zero latency) and sent as MPEG-TS to a URL, paced at ``--speed`` x real time.

    python tests/live_sender.py CLIP udp://127.0.0.1:5000 --speed 1 --loops 2
    python tests/live_sender.py CLIP "tcp://127.0.0.1:5001?listen=1"     # waits for the receiver

Runs in its own process: a sender in the receiver's process can deadlock on the GIL
while FFmpeg writes its header. ``--frames N`` stops after N frames (a sender that goes
away mid-stream); the process then exits without closing the stream politely.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from fractions import Fraction

import av


def frames(clip: str, loops: int):
    for _ in range(loops):
        with av.open(clip) as source:
            yield from source.decode(video=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clip")
    parser.add_argument("url")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--frames", type=int, default=0)
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args()
    with av.open(args.clip) as probe:
        stream_in = probe.streams.video[0]
        width, height = stream_in.codec_context.width, stream_in.codec_context.height
    options = {}
    url = args.url
    if url.startswith("udp://"):
        url += ("&" if "?" in url else "?") + "pkt_size=1316"
    out = av.open(url, mode="w", format="mpegts", options=options)
    stream = out.add_stream("libx264", rate=args.fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "10", "bf": "0"}
    start = time.monotonic()
    print("sending", flush=True)
    for index, frame in enumerate(frames(args.clip, args.loops)):
        due = start + index / (args.fps * args.speed)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = frame.reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = Fraction(1, args.fps)  # else PyAV rescales the index from the source's time base
        for packet in stream.encode(frame):
            out.mux(packet)
        if args.frames and index + 1 >= args.frames:
            sys.stdout.flush()
            os._exit(0)  # gone mid-stream, as a camera that loses power
    for packet in stream.encode():
        out.mux(packet)
    out.close()


if __name__ == "__main__":
    main()
