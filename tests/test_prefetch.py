"""Tests of affstream.io.prefetch: order, errors, early stop, bounded memory."""

from __future__ import annotations

import threading
import time

import pytest

from affstream.errors import ConfigError
from affstream.io import iter_frames, prefetch
from affstream.records import DecodeStats

THREAD_NAME = "affstream-prefetch"


def producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def new_producer(before: list[threading.Thread]) -> threading.Thread:
    fresh = [t for t in producer_threads() if t not in before]
    assert len(fresh) == 1
    return fresh[0]


class Boom(RuntimeError):
    pass


def counting_source(counter: dict, closed: threading.Event, limit: int | None = None):
    """Generator of 0, 1, 2...; counts items produced; sets ``closed`` when it ends."""
    try:
        k = 0
        while limit is None or k < limit:
            counter["produced"] = k + 1
            counter["thread"] = threading.current_thread().name
            yield k
            k += 1
    finally:
        closed.set()


def test_items_arrive_in_order():
    assert list(prefetch(range(500), 4)) == list(range(500))
    assert list(prefetch([], 1)) == []
    assert producer_threads() == []


def test_source_runs_on_the_background_thread():
    counter: dict = {}
    closed = threading.Event()
    assert list(prefetch(counting_source(counter, closed, limit=3), 2)) == [0, 1, 2]
    assert counter["thread"] == THREAD_NAME and closed.is_set()


def test_producer_exception_reaches_the_consumer_with_its_type():
    def failing():
        yield 1
        yield 2
        raise Boom("decoder exploded")

    received = []
    with pytest.raises(Boom, match="decoder exploded"):
        for item in prefetch(failing(), 8):
            received.append(item)
    assert received == [1, 2]
    assert producer_threads() == []


def test_early_close_stops_and_joins_the_producer():
    counter: dict = {}
    closed = threading.Event()
    before = producer_threads()
    stream = prefetch(counting_source(counter, closed), 2)  # endless source
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    thread = new_producer(before)
    started = time.monotonic()
    stream.close()
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.0
    assert closed.is_set()  # the source generator was closed (its finally ran)


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError])
def test_consumer_interrupt_stops_the_producer(error):
    counter: dict = {}
    closed = threading.Event()
    before = producer_threads()
    stream = prefetch(counting_source(counter, closed), 1)
    next(stream)
    thread = new_producer(before)
    with pytest.raises(error):
        stream.throw(error())
    assert not thread.is_alive() and closed.is_set()


def test_memory_is_bounded_by_maxsize():
    counter: dict = {"produced": 0}
    closed = threading.Event()
    maxsize = 3
    stream = prefetch(counting_source(counter, closed), maxsize)
    assert next(stream) == 0
    # the producer runs ahead until the queue is full...
    deadline = time.monotonic() + 5.0
    while counter["produced"] < maxsize + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counter["produced"] >= maxsize + 1
    # ...then blocks: 1 consumed + maxsize queued + 1 held by the producer at most
    time.sleep(0.3)
    assert counter["produced"] <= maxsize + 2
    assert next(stream) == 1  # still flowing after the stall
    stream.close()
    assert closed.is_set()


def test_maxsize_must_be_positive():
    with pytest.raises(ConfigError, match="queue"):
        prefetch(range(3), 0)


def test_prefetch_decoded_frames(cfr_clip):
    stats = DecodeStats()
    frames = list(prefetch(iter_frames(cfr_clip, stats=stats), 4))
    assert [frame.frame_index for frame in frames] == list(range(1, 31))
    assert stats.frames == 30 and stats.errors == 0


def test_prefetch_closes_the_decoder_early(cfr_clip):
    stats = DecodeStats()
    stream = prefetch(iter_frames(cfr_clip, stats=stats), 2)
    first = next(stream)
    stream.close()
    assert first.frame_index == 1
    assert stats.frames < 30  # decoding stopped with the consumer
    assert producer_threads() == []
