"""The PyAV calls whose API moved (``affstream.io.avcompat``): both branches of each run
in every CI lane, the installed PyAV's for real, the other through a stand-in."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from affstream.io import avcompat
from affstream.io.avcompat import metadata_text, open_input

DATA = Path(__file__).parent / "data"
_INSTALLED_TAKES_IT = int(av.__version__.split(".")[0]) < 19


@pytest.fixture(autouse=True)
def _fresh_detection(monkeypatch):
    monkeypatch.setattr(avcompat, "_ACCEPTS_METADATA_ERRORS", None)


def test_open_input_with_the_installed_pyav():
    with open_input(str(DATA / "single_face.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    # learnt once, according to what this PyAV's av.open accepts
    assert avcompat._ACCEPTS_METADATA_ERRORS is _INSTALLED_TAKES_IT


def test_open_input_on_a_pyav_without_metadata_errors(monkeypatch):
    """PyAV 19 dropped the argument (and decodes metadata with surrogateescape)."""
    calls = []
    real_open = av.open

    def open_19(target, mode="r", **kwargs):
        calls.append(sorted(kwargs))
        if "metadata_errors" in kwargs:
            raise TypeError("open() got an unexpected keyword argument 'metadata_errors'")
        return real_open(target, mode=mode, **kwargs)

    monkeypatch.setattr(av, "open", open_19)
    for _ in range(2):
        with open_input(str(DATA / "single_face.mp4"), options={"probesize": "500000"}) as container:
            assert container.streams.video
    assert calls == [["metadata_errors", "options"], ["options"], ["options"]]  # the retry is learnt once


def test_open_input_on_a_pyav_with_metadata_errors(monkeypatch):
    seen = []
    real_open = av.open

    def open_18(target, mode="r", metadata_errors="strict", **kwargs):
        seen.append(metadata_errors)
        passed_on = {"metadata_errors": metadata_errors} if _INSTALLED_TAKES_IT else {}
        return real_open(target, mode=mode, **passed_on, **kwargs)

    monkeypatch.setattr(av, "open", open_18)
    with open_input(str(DATA / "single_face.mp4")):
        pass
    assert seen == ["replace"]


def test_other_type_errors_are_not_swallowed(monkeypatch):
    def broken(*_args, **_kwargs):
        raise TypeError("expected str, bytes or os.PathLike object, not int")

    monkeypatch.setattr(av, "open", broken)
    with pytest.raises(TypeError, match="PathLike"):
        open_input(3)


def test_metadata_text_of_either_decoding():
    assert metadata_text("Ünïcode title") == "Ünïcode title"
    # PyAV 19: the byte 0xff of a Latin-1 tag arrives as the lone surrogate U+DCFF
    raw = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    text = metadata_text(raw)
    text.encode("utf-8")  # printable, writable
    assert text == "caf\ufffd \ufffd"
    assert metadata_text(90) == "90"
