"""The Ray engine: the same corpus run as the local engine, on Ray Data actors.

    run_corpus("videos/", "out/", config, engine="ray")                   # ray.init() here
    run_corpus("/shared/videos", "/shared/out", config, engine="ray",
               ray_address="auto")                                        # join a cluster

The dataset is one row per video (never per frame: frames stay inside the actor that
decodes them), built with ``from_items`` (no read tasks that the actors could starve
of CPUs), longest first. ``map_batches(_CorpusActor, batch_size=1,
compute=ActorPoolStrategy(size=N))`` runs the videos: each actor loads the pipeline
once, writes its videos' outputs itself (atomically, exactly as the local engine) and
returns one small status row per video, which the driver turns into the manifest.
Outputs and manifest are therefore the local engine's.

What Ray would otherwise get wrong, and what is done about it:

* an exception escaping an actor fails the whole dataset: every video is caught in
  the actor and becomes a status row (``failed`` with the one-line error);
* a native crash kills the actor, and Ray restarts it and retries the video without
  limit: attempts are counted outside the workers, in one small :class:`_Ledger`
  actor. A video is tried at most :data:`~affstream.corpus.engine.ATTEMPTS` times;
  the next attempt returns a ``failed`` row without touching the file;
* resume: each actor computes the configuration fingerprint from its own loaded
  models and skips a video whose report on the (shared) output storage carries it.

On a cluster, every node needs affstream installed (same version) and the input and
output paths mounted at the same place (shared storage). Inputs are probed and
fingerprinted by the driver, so it must see them too.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..errors import CRASH_REPORT_HINT, AffstreamError, ConfigError
from ..records import InputResult, VideoInfo
from .engine import ATTEMPTS, CorpusRun, cpu_count, visible_gpus
from .inputs import STATUS_DONE, STATUS_FAILED, STATUS_SKIPPED, CorpusItem
from .state import config_fingerprint, finished_report

log = logging.getLogger("affstream")

RAY_HINT = "the Ray engine needs Ray: pip install 'affstream[ray]' (Ray Data 2.60, the tested release)"
POLL_S = 0.5  # how often the driver asks the ledger what the workers are doing
PROGRESS_EVERY = 8  # frames between an actor's progress reports
STATUS_LOAD_FAILED = "load failed"  # an actor could not load the models: the run stops


def require_ray() -> Any:
    """``ray`` (with Ray Data), or ConfigError with the install hint."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(RAY_HINT) from None
    return ray


# ------------------------------------------------------------------------------ actors


class _Ledger:
    """What the workers are doing, kept outside them (a Ray actor of its own):
    attempts per video, and per worker its video and frame progress."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.running: dict[str, tuple[str, int, int | None]] = {}

    def begin(self, key: str, worker: str) -> int:
        """Record an attempt at ``key`` by ``worker``; returns the attempt number (1, 2, ...)."""
        self.attempts[key] = self.attempts.get(key, 0) + 1
        for other, (running, _, _) in list(self.running.items()):
            if running == key:  # the attempt of a worker that died
                del self.running[other]
        self.running[worker] = (key, 0, None)
        return self.attempts[key]

    def progress(self, worker: str, key: str, done: int, total: int | None) -> None:
        if worker in self.running and self.running[worker][0] == key:
            self.running[worker] = (key, done, total)

    def end(self, worker: str) -> None:
        self.running.pop(worker, None)

    def snapshot(self) -> dict[str, tuple[str, int, int | None]]:
        return dict(self.running)


class _LedgerObserver:
    """The pipeline's observer inside an actor: frame progress to the ledger (fire and forget)."""

    def __init__(self, ledger: Any, worker: str, key: str) -> None:
        self.ledger, self.worker, self.key = ledger, worker, key
        self.total: int | None = None

    def loaded(self, meaningful: bool) -> None:
        pass

    def started(self, path: Path, info: VideoInfo) -> None:
        self.total = info.frame_count
        self.ledger.progress.remote(self.worker, self.key, 0, self.total)

    def frame(self, path: Path, done: int) -> None:
        if done % PROGRESS_EVERY == 0:
            self.ledger.progress.remote(self.worker, self.key, done, self.total)

    def finished(self, result: InputResult) -> None:
        pass


def _status_row(key: str, status: str, *, error: str = "", report: dict | None = None, seconds: float = 0.0,
                worker: str = "", config_fp: str = "", attempt: int = 1) -> dict[str, Any]:
    """The small row an actor returns per video (strings and numbers: Arrow-friendly)."""
    return {"key": key, "status": status, "error": error, "seconds": float(seconds), "worker": worker,
            "report": json.dumps(report) if report is not None else "", "config_fp": config_fp,
            "attempt": int(attempt)}


class _CorpusActor:
    """A Ray Data callable class: loads the pipeline once, annotates one video per call."""

    def __init__(self, config: PipelineConfig, out_dir: str, resume: bool, ledger: Any,
                 torch_threads: int | None) -> None:
        from ..pipeline import load_stages

        if torch_threads is not None:
            import torch

            torch.set_num_threads(max(1, int(torch_threads)))
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.ledger = ledger
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.load_error: str | None = None
        self.config_fp = ""
        try:  # raised here, Ray would retry the actor and print its traceback: a status row says it
            self.stages = load_stages(config)
        except AffstreamError as exc:
            self.load_error = str(exc)
            return
        identity = {"backbone": self.stages.backbone.identity(), "head": dict(self.stages.head_identity)}
        self.config_fp = config_fingerprint(config.to_dict(), identity)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import ray

        if self.load_error is not None:
            return {name: [value] * len(batch["key"]) for name, value in
                    _status_row("", STATUS_LOAD_FAILED, error=self.load_error, worker=self.worker).items()}
        rows = [self._one(ray, batch["key"][i], batch["path"][i], batch["rel"][i], batch["input_fp"][i])
                for i in range(len(batch["key"]))]
        return {name: [row[name] for row in rows] for name in rows[0]}

    def _one(self, ray: Any, key: str, path: str, rel: str, input_fp: str) -> dict[str, Any]:
        from ..pipeline.offline import annotate_one

        start = time.perf_counter()
        item = CorpusItem(Path(path), Path(rel))
        fingerprints = {"input": json.loads(input_fp), "config": self.config_fp}
        attempt = 1

        def row(status: str, **fields: Any) -> dict[str, Any]:
            return _status_row(key, status, worker=self.worker, config_fp=self.config_fp, attempt=attempt, **fields)

        try:
            attempt = ray.get(self.ledger.begin.remote(key, self.worker))
            if attempt > ATTEMPTS:
                return row(STATUS_FAILED, error=f"{path}: the worker process crashed on this video, {ATTEMPTS} "
                                                f"times; the other videos went on; {CRASH_REPORT_HINT}")
            if self.resume:
                report = finished_report(item, self.out_dir, fingerprints)
                if report is not None:
                    return row(STATUS_SKIPPED, report=report)
            csv_path, _ = item.outputs(self.out_dir)
            result = annotate_one(path, csv_path.parent, self.stages,
                                  _LedgerObserver(self.ledger, self.worker, key), fingerprints=fingerprints)
            if result.ok:
                return row(STATUS_DONE, report=result.report.to_dict() if result.report is not None else None,
                           seconds=result.seconds)
            return row(STATUS_FAILED, error=result.error or f"{path}: failed", seconds=result.seconds)
        except Exception as exc:  # noqa: BLE001 - one video's failure must never fail the dataset
            return row(STATUS_FAILED, error=f"{path}: {type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        finally:
            self.ledger.end.remote(self.worker)


# ------------------------------------------------------------------------------ driver


def _init_ray(ray: Any, address: str | None, local_cpus: int) -> bool:
    """Connect (``address``) or start a local Ray; returns True when this call started it."""
    if ray.is_initialized():
        return False
    # Ray's own chatter (token notice, object-store notes, dataset start/finish lines)
    # would bury the CLI's lines; a user may set these themselves to see it.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.ERROR, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=local_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise AffstreamError(f"cannot start or join {where} ({str(exc).splitlines()[0] if str(exc) else exc}); "
                             "check --ray-address and that `ray status` works there") from None
    if not log.isEnabledFor(logging.INFO):  # affstream -v shows Ray's own lines too
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return True


def _plan(ray: Any, config: PipelineConfig, workers: int | None, gpus: int | None,
          address: str | None) -> tuple[int, float, float, int | None]:
    """Actors, CPUs and GPUs per actor, torch threads per actor."""
    if address:
        resources = ray.cluster_resources()
        cluster_gpus = int(resources.get("GPU", 0)) if config.device.strip().lower() in ("auto", "cuda") else 0
        use_gpus = cluster_gpus if gpus is None else min(gpus, cluster_gpus)
        cpus = max(1, int(resources.get("CPU", 1)))
    else:
        use_gpus = visible_gpus(config, gpus)
        cpus = cpu_count()
    if use_gpus:
        return workers or use_gpus, 1.0, 1.0, None
    from .engine import CPU_THREADS_PER_WORKER

    count = workers or max(1, cpus // CPU_THREADS_PER_WORKER)
    per_actor = max(1, cpus // count)
    return count, float(per_actor), 0.0, per_actor


def run_on_ray(run: CorpusRun, config: PipelineConfig, videos: list[CorpusItem], *, resume: bool,
               workers: int | None, gpus: int | None, address: str | None) -> str | None:
    """Annotate ``videos`` on Ray actors, updating ``run`` (manifest, events) as rows
    come back; returns the configuration fingerprint (None if no video reached a worker)."""
    ray = require_ray()
    from ray.data import ActorPoolStrategy, DataContext

    if config.device.strip().lower() == "cpu":
        gpus = 0
    started_here = _init_ray(ray, address, cpu_count())
    try:
        count, cpus, gpus_each, threads = _plan(ray, config, workers, gpus, address)
        count = max(1, min(count, len(videos)))
        context = DataContext.get_current()
        context.enable_progress_bars = False  # the CLI draws its own
        context.print_on_execution_start = False
        ordered = sorted(videos, key=lambda item: (-item.size, item.rel.as_posix()))  # longest first
        by_key = {str(i): item for i, item in enumerate(ordered)}
        rows = [{"key": key, "path": str(item.path), "rel": item.rel.as_posix(),
                 "input_fp": json.dumps(run.fingerprints[id(item)])} for key, item in by_key.items()]
        ledger = ray.remote(num_cpus=0)(_Ledger).remote()
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _CorpusActor, batch_size=1, batch_format="default",
            fn_constructor_kwargs={"config": config, "out_dir": str(run.out_dir), "resume": resume,
                                   "ledger": ledger, "torch_threads": threads},
            compute=ActorPoolStrategy(size=count), num_cpus=cpus, num_gpus=gpus_each)
        log.info("Ray engine: %d actor(s), %.0f CPU(s) and %.0f GPU(s) each", count, cpus, gpus_each)
        return _collect(ray, dataset, ledger, run, by_key)
    finally:
        if started_here:
            ray.shutdown()


def _collect(ray: Any, dataset: Any, ledger: Any, run: CorpusRun, by_key: dict[str, CorpusItem]) -> str | None:
    """Consume the status rows (on a thread) while relaying the ledger's progress."""
    rows: queue.Queue = queue.Queue()
    end = object()

    def consume() -> None:
        try:
            for row in dataset.iter_rows():
                rows.put(row)
            rows.put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver thread, raised there
            rows.put(exc)

    thread = threading.Thread(target=consume, name="affstream-ray-rows", daemon=True)
    thread.start()
    config_fp: str | None = None
    seen: dict[str, tuple[str, int, int | None]] = {}
    finished: set[str] = set()
    while True:
        try:
            row = rows.get(timeout=POLL_S)
        except queue.Empty:
            row = None
        if row is end:
            break
        if isinstance(row, BaseException):
            raise AffstreamError(f"the Ray engine stopped: {str(row).splitlines()[0] if str(row) else row!r}")
        if row is not None and row["status"] == STATUS_LOAD_FAILED:
            raise AffstreamError(row["error"])
        if row is not None:
            item = by_key[row["key"]]
            if int(row["attempt"]) > 1:
                log.warning("%s: a worker process died on this video; it was retried in a fresh worker "
                            "(attempt %d of %d)", item.path, min(int(row["attempt"]), ATTEMPTS), ATTEMPTS)
            finished.add(row["key"])
            config_fp = row["config_fp"] or config_fp
            report = json.loads(row["report"]) if row["report"] else None
            run.finish(item, row["status"], row["error"] or None, report, float(row["seconds"]) or None)
        _relay_progress(ray.get(ledger.snapshot.remote()), seen, finished, run, by_key)
    thread.join()
    return config_fp


def _relay_progress(now: dict[str, tuple[str, int, int | None]], seen: dict[str, tuple[str, int, int | None]],
                    finished: set[str], run: CorpusRun, by_key: dict[str, CorpusItem]) -> None:
    """``started`` and ``progress`` events for what changed since the last poll."""
    for worker, (key, done, total) in now.items():
        if key in finished:
            continue
        before = seen.get(worker)
        item = by_key[key]
        if before is None or before[0] != key:
            run.on_event("started", item, {"worker": worker})
        if before != (key, done, total):
            run.on_event("progress", item, {"worker": worker, "done": done, "total": total})
    seen.clear()
    seen.update(now)
