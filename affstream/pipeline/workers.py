"""Inputs annotated in a worker process, so that a native crash loses only that input.

A decoder or a model library can crash the process on a file nobody has seen (a
segmentation fault is not an exception). With several inputs, :func:`run_isolated`
starts one worker process (``spawn``), which loads the models once and annotates the
inputs one after another; the parent relays the worker's progress to the caller's
observer and its log records to the "affstream" logger. When the worker dies, the
input it was on is a failed result naming the signal, a fresh worker is started for
the inputs left, and the run goes on.

Signals: Ctrl-C reaches both processes (one process group); SIGTERM or SIGHUP sent to
the parent is passed on to the worker. Either way the worker discards the file it was
writing (nothing partial under a final name), the parent waits for it and re-raises.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..errors import CRASH_REPORT_HINT, AffstreamError
from ..records import INPUT_FAILED, InputResult, VideoInfo
from ..runtime import install_stop_signals

log = logging.getLogger("affstream")

FRAME_EVENT_EVERY = 8  # the worker reports progress every this many frames
STOP_WAIT_S = 30.0  # longest wait for a worker to finish its cleanup after a signal


# ------------------------------------------------------------------------------ worker


class _PipeLogHandler(logging.Handler):
    """Sends the worker's log records to the parent, which logs them as its own."""

    def __init__(self, conn: Any) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError, ValueError):  # the parent has gone: nobody to tell
            self.conn.send(("log", record.levelno, record.getMessage()))


class _PipeObserver:
    """The worker side of the observer: events become messages to the parent."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def loaded(self, meaningful: bool, identity: dict | None = None) -> None:
        self.conn.send(("loaded", meaningful, identity))

    def started(self, path: Path, info: VideoInfo) -> None:
        self.conn.send(("started", str(path), info))

    def frame(self, path: Path, done: int) -> None:
        if done % FRAME_EVENT_EVERY == 0:
            self.conn.send(("frame", str(path), done))

    def finished(self, result: InputResult) -> None:
        pass  # the result itself is sent back by the loop


def _worker_main(conn: Any, config: PipelineConfig, out_dir: str, log_level: int, overwrite: bool,
                 torch_threads: int | None = None) -> None:
    """Worker process: load the models once, then annotate each path sent until "stop".

    A message is ``("run", path)`` (into ``out_dir``) or ``("run", path, out_dir,
    fingerprints)`` (its own output folder, fingerprints recorded in the report).
    ``torch_threads``: intra-op threads of this worker (several workers on one CPU).
    """
    from . import load_stages
    from .offline import annotate_one

    if torch_threads is not None:
        import torch

        torch.set_num_threads(max(1, int(torch_threads)))
    install_stop_signals()
    logger = logging.getLogger("affstream")
    logger.handlers[:] = [_PipeLogHandler(conn)]
    logger.setLevel(log_level)
    logger.propagate = False
    observer = _PipeObserver(conn)
    try:
        try:
            stages = load_stages(config)
        except AffstreamError as exc:
            conn.send(("load_failed", exc))
            return
        identity = {"backbone": stages.backbone.identity(), "head": dict(stages.head_identity)}
        observer.loaded(stages.meaningful, identity)
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            target, fingerprints = (message[2], message[3]) if len(message) > 2 else (out_dir, None)
            result = annotate_one(message[1], target, stages, observer, overwrite=overwrite,
                                  fingerprints=fingerprints)
            conn.send(("result", result))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return  # stopped (the file in progress was discarded) or the parent has gone


# ------------------------------------------------------------------------------ parent


class _Worker:
    """One worker process and its end of the pipe."""

    def __init__(self, config: PipelineConfig, out_dir: str | Path, overwrite: bool,
                 torch_threads: int | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.identity: dict | None = None  # the models' identities, once loaded
        level = logging.getLogger("affstream").getEffectiveLevel()
        self.process = context.Process(target=_worker_main,
                                       args=(child, config, str(out_dir), level, overwrite, torch_threads),
                                       name="affstream-worker", daemon=True)
        self.process.start()
        child.close()

    def receive(self) -> tuple | None:
        """The next message, or None when the worker has died."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(STOP_WAIT_S)
            return None

    def death(self) -> str:
        """How the worker ended, in words: 'killed by SIGSEGV', 'exit code 1'."""
        self.process.join(STOP_WAIT_S)
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def stop(self) -> None:
        """Ask the worker to finish and wait; terminate it if it does not."""
        if self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("stop",))
            self.process.join(STOP_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_WAIT_S)
        self.conn.close()

    def interrupt(self, signum: int) -> None:
        """Pass a stop signal on and wait until the worker has cleaned up."""
        if self.process.is_alive() and signum != signal.SIGINT and self.process.pid is not None:
            # Ctrl-C reached the worker already (same process group); other signals do not
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)
        self.process.join(STOP_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_WAIT_S)


def run_isolated(paths: Sequence[str | Path], out_dir: str | Path, config: PipelineConfig, observer, *,
                 overwrite: bool = False) -> list[InputResult]:
    """Annotate ``paths`` (already checked to exist) in worker processes, in order.

    Returns one result per path. A worker that dies fails only the input it was on
    (its error names the signal); a model that cannot be loaded raises its
    AffstreamError, as in-process loading does. KeyboardInterrupt (Ctrl-C, or SIGTERM /
    SIGHUP turned into :class:`~affstream.errors.Interrupted`) propagates after the
    worker has stopped.
    """
    results: list[InputResult] = []
    pending = [Path(p) for p in paths]
    worker: _Worker | None = None
    announced = False
    try:
        while pending:
            if worker is None:
                worker = _Worker(config, out_dir, overwrite)
                loaded = _wait_loaded(worker)
                if not announced:
                    observer.loaded(loaded)
                    announced = True
            path = pending.pop(0)
            result = _run_one(worker, path, observer)
            if result is None:  # the worker died on this input
                reason = worker.death()
                worker = None
                result = InputResult(str(path), INPUT_FAILED,
                                     error=f"{path}: the worker process crashed ({reason}) on this input; "
                                           f"the other inputs go on; {CRASH_REPORT_HINT}")
                observer.finished(result)
            results.append(result)
    except KeyboardInterrupt as exc:
        if worker is not None:
            worker.interrupt(getattr(exc, "signum", signal.SIGINT))
            worker = None
        raise
    finally:
        if worker is not None:
            worker.stop()
    return results


def _wait_loaded(worker: _Worker) -> bool:
    """Wait until the worker has its models; returns whether they are meaningful."""
    while True:
        message = worker.receive()
        if message is None:
            raise AffstreamError(f"the worker process died while loading the models ({worker.death()})")
        kind = message[0]
        if kind == "loaded":
            worker.identity = message[2] if len(message) > 2 else None
            return bool(message[1])
        if kind == "load_failed":
            worker.stop()
            raise message[1]
        if kind == "log":
            log.log(message[1], "%s", message[2])


def _run_one(worker: _Worker, path: Path, observer) -> InputResult | None:
    """Send one input, relay its events; its result, or None if the worker died."""
    worker.conn.send(("run", str(path)))
    while True:
        message = worker.receive()
        if message is None:
            return None
        kind = message[0]
        if kind == "result":
            result = message[1]
            observer.finished(result)
            return result
        if kind == "started":
            observer.started(Path(message[1]), message[2])
        elif kind == "frame":
            observer.frame(Path(message[1]), message[2])
        elif kind == "log":
            log.log(message[1], "%s", message[2])
        elif kind == "load_failed":  # cannot happen after loading; keep the contract
            raise message[1]
