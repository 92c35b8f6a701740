"""The local engine: N worker processes on one machine annotate a corpus.

    result = run_corpus("videos/", "out/", config, workers=None, resume=True)

Steps: list the inputs, probe which are videos (:mod:`.inputs`), refuse output
collisions, start the workers (:mod:`affstream.pipeline.workers`: each loads the models
once), compute the configuration fingerprint from the first loaded worker's model
identities, skip the finished videos (``resume``), then hand the others out longest
first (by file size). A worker that dies loses only the video it was on: that video is
retried once in a fresh worker, then marked failed; the rest go on. The manifest is
rewritten (atomically) after every video and at the end.

Worker count (``workers=None``): one per visible GPU when the pipeline's device is
``auto``/``cuda`` and CUDA is available (worker i on ``cuda:i``); otherwise
``max(1, cpus // CPU_THREADS_PER_WORKER)``. On the CPU each worker gets
``max(1, cpus // workers)`` torch threads, so N workers never oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..errors import CRASH_REPORT_HINT, AffstreamError, ConfigError
from ..pipeline.workers import _Worker
from ..records import InputResult
from .inputs import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_SKIPPED,
    CorpusItem,
    Prober,
    check_collisions,
    classify,
    list_inputs,
)
from .state import (
    check_run_outputs,
    config_fingerprint,
    finished_report,
    input_fingerprint,
    manifest_row,
    write_manifest,
)

log = logging.getLogger("affstream")

CPU_THREADS_PER_WORKER = 4
ATTEMPTS = 2  # a video whose worker dies is tried this many times in all


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def visible_gpus(config: PipelineConfig, gpus: int | None = None) -> int:
    """GPUs the corpus uses: none unless the pipeline's device is ``auto``/``cuda`` and
    CUDA is available; at most ``gpus`` of them (None: all visible)."""
    if gpus == 0 or config.device.strip().lower() not in ("auto", "cuda"):
        return 0
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return available if gpus is None else min(gpus, available)


def plan_workers(config: PipelineConfig, workers: int | None,
                 gpus: int | None = None) -> tuple[list[str | None], int | None]:
    """Per worker its device override (None: the config's), and torch threads per
    worker (None on GPUs: the default). ``gpus``: at most this many GPUs (None: all)."""
    gpus = visible_gpus(config, gpus)
    if gpus:
        count = workers or gpus
        return [f"cuda:{i % gpus}" for i in range(count)], None
    cpus = cpu_count()
    count = workers or max(1, cpus // CPU_THREADS_PER_WORKER)
    return [None] * count, max(1, cpus // count)


@dataclass
class CorpusResult:
    """What a corpus run did: every item with its final status, the manifest rows."""

    root: Path
    items: list[CorpusItem]
    rows: list[dict]
    manifest: Path
    config_fingerprint: str | None = None

    @property
    def failed(self) -> list[CorpusItem]:
        return [item for item in self.items if item.status == STATUS_FAILED]


@dataclass(eq=False)
class _Slot:
    worker: _Worker
    device: str | None
    loaded: bool = False
    item: CorpusItem | None = None
    retry: CorpusItem | None = None
    started: float = 0.0
    total: int | None = None  # declared frames of the video in progress

    @property
    def name(self) -> str:
        return f"pid {self.worker.process.pid}"


@dataclass
class CorpusRun:
    """The state of a corpus run shared by the engines: the items, their reports and
    seconds (keyed by ``id(item)``), input fingerprints, and the event callback."""

    out_dir: Path
    items: list[CorpusItem]
    on_event: Callable[[str, CorpusItem, dict], None]
    reports: dict[int, dict | None] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    fingerprints: dict[int, dict] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [manifest_row(item, self.out_dir, self.reports.get(id(item)), self.seconds.get(id(item)))
                for item in self.items]

    def publish(self) -> Path:
        return write_manifest(self.out_dir, self.rows())

    def finish(self, item: CorpusItem, status: str, error: str | None = None, report: dict | None = None,
               seconds: float | None = None) -> None:
        item.status, item.error = status, error
        self.reports[id(item)] = report
        if seconds is not None:
            self.seconds[id(item)] = seconds
        self.publish()
        self.on_event("finished", item, {"report": report})


def run_corpus(source: str | Path, out_dir: str | Path, config: PipelineConfig, *, workers: int | None = None,
               resume: bool = False, pattern: str | None = None,
               on_event: Callable[[str, CorpusItem, dict], None] | None = None,
               engine: str = "local", gpus: int | None = None, ray_address: str | None = None) -> CorpusResult:
    """Annotate every video of ``source`` into ``out_dir`` (see the module docstring).

    ``engine``: ``local`` (worker processes here) or ``ray`` (:mod:`.ray_engine`; Ray
    Data actors, locally or on the cluster at ``ray_address``); both write the same
    outputs and manifest. ``gpus``: use at most this many GPUs (0: none; None: all).

    ``on_event(kind, item, data)`` is called on the caller's thread: ``started``
    (data: ``worker``), ``progress`` (``worker``, ``done`` frames, ``total`` declared
    frames or None) and ``finished`` (``report``: the JSON report or None).

    Raises ConfigError before anything is annotated (no such input, an output
    collision, an unknown engine) and AffstreamError when the models cannot be loaded;
    a failing video is a failed row. KeyboardInterrupt propagates after the workers
    stopped and the manifest was written.
    """
    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown corpus engine {engine!r}; use 'local' or 'ray'")
    if engine == "ray":
        from .ray_engine import require_ray

        require_ray()
    out_dir = Path(out_dir)
    on_event = on_event or (lambda kind, item, data: None)
    root, items = list_inputs(source, out_dir, pattern)
    with Prober() as prober:
        classify(items, prober.probe)
    videos = [item for item in items if item.status is None]
    check_collisions(videos, out_dir)
    check_run_outputs(Path(source), videos, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = CorpusRun(out_dir, items, on_event)
    for item in items:
        if item.status is not None:
            on_event("finished", item, {"report": None})
    for item in videos:
        try:
            run.fingerprints[id(item)] = input_fingerprint(item.path)
        except OSError as exc:
            item.status, item.error = STATUS_FAILED, f"{item.path}: cannot be read ({exc.strerror or exc})"
            on_event("finished", item, {"report": None})
    videos = [item for item in videos if item.status is None]
    manifest = run.publish()
    on_event("planned", None, {"videos": len(videos), "bytes": sum(item.size for item in videos)})
    if not videos:
        return CorpusResult(root, items, run.rows(), manifest)
    if engine == "ray":
        from .ray_engine import run_on_ray

        fingerprint = run_on_ray(run, config, videos, resume=resume, workers=workers, gpus=gpus,
                                 address=ray_address)
    else:
        devices, threads = plan_workers(config, workers, gpus)
        devices = devices[:len(videos)]
        fingerprint = _Engine(run, config, devices, threads, resume, videos).run()
    manifest = run.publish()
    return CorpusResult(root, items, run.rows(), manifest, fingerprint)


class _Engine:
    def __init__(self, run: CorpusRun, config: PipelineConfig, devices: list[str | None], threads: int | None,
                 resume: bool, videos: list[CorpusItem]) -> None:
        self.run_state = run
        self.config = config
        self.threads = threads
        self.resume = resume
        self.videos = videos
        self.pending: list[CorpusItem] | None = None  # known once the config fingerprint is
        self.config_fp: str | None = None
        self.slots = [self._start(device) for device in devices]

    def _start(self, device: str | None, retry: CorpusItem | None = None) -> _Slot:
        config = self.config if device is None else self.config.with_overrides(device=device)
        slot = _Slot(_Worker(config, self.run_state.out_dir, False, self.threads), device, retry=retry)
        log.info("worker %s started (pid %s)", len(self.slots) if hasattr(self, "slots") else 0,
                 slot.worker.process.pid)
        return slot

    def run(self) -> str | None:
        try:
            while self.slots:
                self._dispatch()
                if not self.slots:
                    break
                ready = multiprocessing.connection.wait([slot.worker.conn for slot in self.slots], timeout=5.0)
                for slot in [s for s in self.slots if s.worker.conn in ready]:
                    self._handle(slot)
        except KeyboardInterrupt as exc:
            for slot in self.slots:
                slot.worker.interrupt(getattr(exc, "signum", signal.SIGINT))
            self.slots = []
            self.run_state.publish()
            raise
        finally:
            for slot in self.slots:
                slot.worker.stop()
            self.slots = []
        return self.config_fp

    # -- decisions

    def _decide(self, identity: dict[str, Any]) -> None:
        """The config fingerprint is known: skip the finished videos, order the rest."""
        self.config_fp = config_fingerprint(self.config.to_dict(), identity)
        run = self.run_state
        pending = []
        for item in self.videos:
            fingerprints = {"input": run.fingerprints[id(item)], "config": self.config_fp}
            report = finished_report(item, run.out_dir, fingerprints) if self.resume else None
            if report is not None:
                log.info("%s: done earlier with the same input and configuration; skipped", item.rel)
                item.status = STATUS_SKIPPED
                run.reports[id(item)] = report
                run.on_event("finished", item, {"report": report})
            else:
                pending.append(item)
        pending.sort(key=lambda item: (-item.size, item.rel.as_posix()))  # longest first
        self.pending = pending
        run.publish()

    def _dispatch(self) -> None:
        if self.pending is None:
            return
        for slot in list(self.slots):
            if not slot.loaded or slot.item is not None:
                continue
            item = slot.retry or (self.pending.pop(0) if self.pending else None)
            slot.retry = None
            if item is None:
                slot.worker.stop()
                self.slots.remove(slot)
                continue
            run = self.run_state
            csv_path, _ = item.outputs(run.out_dir)
            fingerprints = {"input": run.fingerprints[id(item)], "config": self.config_fp}
            run.attempts[id(item)] = run.attempts.get(id(item), 0) + 1
            slot.item, slot.started = item, time.perf_counter()
            slot.worker.conn.send(("run", str(item.path), str(csv_path.parent), fingerprints))
            slot.total = None
            run.on_event("started", item, {"worker": slot.name})

    def _handle(self, slot: _Slot) -> None:
        message = slot.worker.receive()
        if message is None:
            self._died(slot)
            return
        kind = message[0]
        if kind == "loaded":
            slot.loaded = True
            if self.config_fp is None:
                self._decide(message[2] or {})
        elif kind == "load_failed":
            raise message[1]
        elif kind in ("started", "frame") and slot.item is not None:
            if kind == "started":
                slot.total = message[2].frame_count
            done = 0 if kind == "started" else int(message[2])
            self.run_state.on_event("progress", slot.item, {"worker": slot.name, "done": done, "total": slot.total})
        elif kind == "log":
            log.log(message[1], "%s", message[2])
        elif kind == "result":
            self._result(slot, message[1])

    def _result(self, slot: _Slot, result: InputResult) -> None:
        item, slot.item = slot.item, None
        if item is None:
            return
        if result.ok:
            report = result.report.to_dict() if result.report is not None else None
            self.run_state.finish(item, STATUS_DONE, None, report, result.seconds)
        else:
            self.run_state.finish(item, STATUS_FAILED, result.error, None, result.seconds)

    def _died(self, slot: _Slot) -> None:
        reason = slot.worker.death()
        with contextlib.suppress(OSError):
            slot.worker.conn.close()
        self.slots.remove(slot)
        item = slot.item or slot.retry
        if item is None and not slot.loaded:
            raise AffstreamError(f"a worker process died while loading the models ({reason})")
        retry = None
        if item is not None:
            run = self.run_state
            if run.attempts.get(id(item), 0) < ATTEMPTS:
                log.warning("%s: the worker process died (%s) on this video; retrying it in a fresh worker",
                            item.path, reason)
                retry = item
            else:
                seconds = time.perf_counter() - slot.started
                run.finish(item, STATUS_FAILED, f"{item.path}: the worker process crashed ({reason}) on this "
                                                f"video, twice; the other videos went on; {CRASH_REPORT_HINT}",
                           None, seconds)
        if retry is not None or self.pending is None or self.pending:
            self.slots.append(self._start(slot.device, retry))
