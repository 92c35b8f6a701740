"""affstream.io.sources: a source is opened once and gives its metadata and its frames."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import av
import media
import pytest

from affstream.config import PipelineConfig
from affstream.errors import ConfigError, SourceError
from affstream.io import count_frames, iter_frames, open_source, probe
from affstream.io.sources import SourceSettings, VideoSource, describe_unusable_input, settings_for_file
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
    assert settings.redecode_tail and settings.video_stream == -1
    assert settings_for_file(video_stream=1).video_stream == 1
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


def test_a_cut_file_is_opened_again_only_for_its_tail(tmp_path, count_opens):
    path = media.write_truncated_clip(tmp_path / "cut.mp4", frames=72, keep_fraction=0.5)
    expected = len(media.reference_decode(path))
    count_opens.clear()
    assert count_frames(path) == expected == 35
    assert count_opens == [str(path), str(path)]  # the second open re-decodes the tail
    count_opens.clear()
    # a kind that cannot be opened twice (live) never is: it keeps what frame threads gave
    live = VideoSource(path, SourceSettings(redecode_tail=False))
    assert live.count() == 33 and count_opens == [str(path)]


def test_video_stream_setting_is_validated():
    assert PipelineConfig().decode.video_stream == -1
    assert PipelineConfig().with_overrides(decode={"video_stream": 1}).decode.video_stream == 1
    for bad in (-2, 1024, "1", 1.0, True):
        with pytest.raises(ConfigError, match=r"^decode\.video_stream must be -1 \(the best video stream\) "
                                              r"or an integer in 0\.\.1023, got "):
            PipelineConfig().with_overrides(decode={"video_stream": bad})
    with pytest.raises(ConfigError, match="video_stream"):
        settings_for_file(video_stream=-2)


# ------------------------------------------------------------------ unusable inputs


def _special_files(tmp_path) -> dict[str, tuple[object, str]]:
    """name -> (path, words its message must hold)."""
    fifo = tmp_path / "camera feed.mp4"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.mp4"
    zero.symlink_to("/dev/zero")
    loop_a, loop_b = tmp_path / "loop_a.mp4", tmp_path / "loop_b.mp4"
    loop_a.symlink_to(loop_b.name)
    loop_b.symlink_to(loop_a.name)
    dangling = tmp_path / "dangling.mp4"
    dangling.symlink_to(tmp_path / "gone.mp4")
    folder = tmp_path / "clips"
    folder.mkdir()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    return {
        "fifo": (fifo, "is a named pipe (FIFO), not a regular file"),
        "dev_zero_link": (zero, "is a character device (symbolic link to /dev/zero), not a regular file"),
        "dev_null": ("/dev/null", "is a character device, not a regular file"),
        "symlink_loop": (loop_a, "symbolic link loop"),
        "dangling_link": (dangling, "broken symbolic link"),
        "missing": (tmp_path / "missing.mp4", "no such file"),
        "directory": (folder, "is a directory"),
        "empty": (empty, "file is empty"),
    }


@pytest.mark.parametrize("kind", ["fifo", "dev_zero_link", "dev_null", "symlink_loop", "dangling_link",
                                  "missing", "directory", "empty"])
def test_unusable_inputs_are_described_without_opening_them(tmp_path, kind):
    path, words = _special_files(tmp_path)[kind]
    message = describe_unusable_input(path)
    assert message is not None and message.startswith(f"{path}: ") and words in message
    assert "\n" not in message and ";" in message  # one line: the problem; what to do


def test_special_files_fail_at_open_without_reading(tmp_path):
    """open_source on a FIFO or /dev/zero must not open it (it would block or read
    forever): run in a child with a deadline."""
    files = _special_files(tmp_path)
    paths = [str(files[kind][0]) for kind in ("fifo", "dev_zero_link", "symlink_loop", "dangling_link")]
    code = (
        "import sys\n"
        "from affstream.errors import SourceError\n"
        "from affstream.io import open_source\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        open_source(path)\n"
        "    except SourceError as error:\n"
        "        print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [describe_unusable_input(path) for path in paths]


def test_usable_inputs_have_no_problem(cfr_clip, tmp_path):
    assert describe_unusable_input(cfr_clip) is None
    assert describe_unusable_input("rtsp://camera.local/stream") is None
    link = tmp_path / "link.mp4"
    link.symlink_to(cfr_clip)
    assert describe_unusable_input(link) is None and probe(link).frame_count == 30
