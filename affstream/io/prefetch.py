"""Run an iterable ahead of its consumer on a background thread, with bounded memory.

Used to decode frames while the device works on earlier ones. The producer thread pulls
items from the source and puts them into a ``queue.Queue(maxsize)``; the consumer gets
them in order. At most ``maxsize`` items wait in the queue, plus one the producer holds
while the queue is full, plus the one the consumer is working on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

from ..errors import ConfigError

T = TypeVar("T")

_LOG = logging.getLogger("affstream")

_POLL_S = 0.05  # how often a producer blocked on a full queue checks for "stop"
JOIN_TIMEOUT_S = 10.0  # longest wait for the producer after the consumer stops


class _End:
    """Queue marker: the source is exhausted."""


class _Failure:
    """Queue marker: the source raised ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(iterable: Iterable[T], maxsize: int) -> Iterator[T]:
    """Yield the items of ``iterable`` in order, produced on a daemon thread.

    maxsize: bound of the queue between the threads, in items (>= 1).

    The thread starts at the first ``next``. An exception raised by the source is
    re-raised in the consumer with its original type. When the consumer stops early
    (``close()``, an exception, KeyboardInterrupt), the producer is told to stop, the
    source is closed on the producer's thread (so a generator's ``finally`` runs), and
    the thread is joined (up to JOIN_TIMEOUT_S if the source is stuck in a slow ``next``).
    """
    if int(maxsize) < 1:
        raise ConfigError(f"prefetch queue size must be >= 1 (got {maxsize}); "
                          "raise schedule.queue_frames")
    return _consume(iterable, int(maxsize))


def _consume(iterable: Iterable[T], maxsize: int) -> Iterator[T]:
    items: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(iterable, items, stop),
                              name="affstream-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                error, item = item.error, None
                raise error
            yield item
    finally:
        stop.set()
        _drain(items)  # free queued items now; a producer waiting in put() sees "stop"
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            _LOG.warning("prefetch: producer thread still busy %.0f s after stop; "
                         "leaving it (daemon)", JOIN_TIMEOUT_S)


def _produce(iterable: Iterable[T], items: queue.Queue, stop: threading.Event) -> None:
    """Producer thread body: fill ``items`` until the source ends, fails or ``stop``."""
    iterator = None
    try:
        iterator = iter(iterable)
        for item in iterator:
            if not _put(items, item, stop):
                return
        _put(items, _End(), stop)
    except BaseException as error:  # noqa: BLE001 - handed to the consumer
        _put(items, _Failure(error), stop)
    finally:
        _close(iterator)


def _put(items: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item``, waiting while the queue is full; False if told to stop first."""
    while not stop.is_set():
        try:
            items.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _drain(items: queue.Queue) -> None:
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return


def _close(iterator: object) -> None:
    """Close a generator-like source on the producer thread, logging failures."""
    close = getattr(iterator, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # noqa: BLE001 - the consumer has gone; nothing to raise to
        _LOG.debug("prefetch: closing the source failed", exc_info=True)
