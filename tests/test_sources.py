"""affstream.io.sources: a source is opened once and gives its metadata and its frames."""

from __future__ import annotations

import threading

import av
import pytest

from affstream.errors import SourceError
from affstream.io import iter_frames, open_source, probe
from affstream.io.sources import SourceSettings, VideoSource, settings_for_file
from affstream.records import DecodeStats


@pytest.fixture()
def count_opens(monkeypatch):
    """Count every av.open call made through affstream's decoder."""
    from affstream.io import decode

    calls: list[str] = []
    real_open = av.open

    def counting_open(name, *args, **kwargs):
        calls.append(str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(decode.av, "open", counting_open)
    return calls


def test_info_and_frames_come_from_one_open(single_face_mp4, count_opens):
    with open_source(single_face_mp4) as source:
        info = source.info
        frames = list(source.frames())
    assert count_opens == [str(single_face_mp4)]
    assert info == probe(single_face_mp4)
    assert [f.frame_index for f in frames] == list(range(1, 73))
    assert source.stats.frames == 72 and source.stats.errors == 0


def test_source_frames_equal_iter_frames(cfr_clip):
    stats = DecodeStats()
    expected = list(iter_frames(cfr_clip, stats=stats))
    source = open_source(cfr_clip)
    got = list(source.frames())
    assert [(f.frame_index, f.time_s) for f in got] == [(f.frame_index, f.time_s) for f in expected]
    assert all((a.image == b.image).all() for a, b in zip(got, expected, strict=True))
    assert source.stats == stats


def test_frames_can_be_read_once(cfr_clip):
    source = open_source(cfr_clip)
    list(source.frames())
    with pytest.raises(RuntimeError, match="only once"):
        source.frames()


def test_file_settings_use_frame_threading(cfr_clip):
    settings = settings_for_file(threads=2)
    assert settings == SourceSettings(kind="file", frame_threading=True, threads=2)
    source = VideoSource(cfr_clip, settings)
    assert source._stream.codec_context.thread_type.name == "AUTO"  # frame + slice threading
    source.close()
    no_frame_threads = VideoSource(cfr_clip, SourceSettings(frame_threading=False))
    assert no_frame_threads._stream.codec_context.thread_type.name == "SLICE"  # FFmpeg's default
    no_frame_threads.close()


def test_a_source_never_iterated_is_closed(cfr_clip):
    source = open_source(cfr_clip)
    source.close()
    source.close()  # idempotent
    assert source._container is not None and not source._finalizer.alive


def test_close_from_another_thread_waits_for_the_decoding_thread(cfr_clip):
    """FFmpeg crashes when a container is closed under a decoding thread: a close()
    from another thread while frames() runs must leave the container to that thread."""
    source = open_source(cfr_clip)
    frames = source.frames()
    first_taken, closed_elsewhere = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def consume() -> None:
        next(frames)
        first_taken.set()
        closed_elsewhere.wait(10)
        result["rest"] = sum(1 for _ in frames)

    worker = threading.Thread(target=consume)
    worker.start()
    assert first_taken.wait(10)
    source.close()  # main thread: must not close under the decoding thread
    assert source._finalizer.alive
    closed_elsewhere.set()
    worker.join(10)
    assert result["rest"] == 29  # the decoding thread read to the end ...
    assert not source._finalizer.alive  # ... and closed the source itself


def test_bad_sources_fail_when_opened(zero_byte_file, text_file, audio_only_file, tmp_path):
    for path, words in ((zero_byte_file, "empty"), (text_file, "not"), (audio_only_file, "no video stream"),
                        (tmp_path / "missing.mp4", "no such file"), (tmp_path, "directory")):
        with pytest.raises(SourceError, match=words) as excinfo:
            open_source(path)
        assert "\n" not in str(excinfo.value)
