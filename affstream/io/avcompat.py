"""PyAV's API where it moved between the releases affstream supports (18.0 onward), in
one place. Everything else in affstream calls these instead of the moving parts.

- :func:`open_input`: ``av.open`` for reading. Metadata that is not valid UTF-8 must never
  fail an open: PyAV up to 18 takes ``metadata_errors="replace"`` (its default, strict,
  raises), PyAV 19 dropped that argument and decodes with ``surrogateescape`` instead.
- :func:`metadata_text`: a metadata value as printable text on either (lone surrogates
  from PyAV 19 become U+FFFD, as PyAV 18's "replace" gave them), for anything that is
  written to a report, a CSV or a terminal.
- :func:`side_data_bytes`: a frame's side data of one type, whatever shape
  ``VideoFrame.side_data`` has (see its docstring).

Each branch is exercised in every CI lane: the installed PyAV runs its own, stand-ins
run the others (``tests/test_side_data.py``, ``tests/test_avcompat.py``).
"""

from __future__ import annotations

from enum import Enum

import av

_ACCEPTS_METADATA_ERRORS: bool | None = None  # learnt on the first open


def open_input(target: str, **kwargs):
    """``av.open(target, mode="r", **kwargs)`` with metadata decoding that never raises.

    Raises what ``av.open`` raises for the target itself (FFmpegError, OSError, ...)."""
    global _ACCEPTS_METADATA_ERRORS
    if _ACCEPTS_METADATA_ERRORS is not False:
        try:
            container = av.open(target, mode="r", metadata_errors="replace", **kwargs)
        except TypeError as error:
            if "metadata_errors" not in str(error):
                raise
            _ACCEPTS_METADATA_ERRORS = False  # PyAV 19+: surrogateescape, never raises
        else:
            _ACCEPTS_METADATA_ERRORS = True
            return container
    return av.open(target, mode="r", **kwargs)


def metadata_text(value: object) -> str:
    """A metadata value as text that encodes to UTF-8 (undecodable bytes become U+FFFD)."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def side_data_bytes(frame, kind: str) -> bytes | None:
    """The bytes of ``frame``'s first side data of type ``kind`` (a name of
    ``av.sidedata.sidedata.Type``, e.g. ``"DISPLAYMATRIX"``), or None.

    The one place affstream reads side data. ``VideoFrame.side_data`` has had three
    shapes, and iterating it yields either the ``SideData`` objects (each with a
    ``.type``: a plain sequence up to PyAV 14, a ``Mapping`` subclass from 15 to 18.1.0)
    or, from 18.1.1 on, the ``Type`` keys of a true mapping (``container[key]`` is the
    ``SideData``). Each entry is told apart by what it is, not by the PyAV version, and
    types are compared by name. Raises ValueError when PyAV cannot name a side data type
    (an older PyAV with a newer FFmpeg). Building the container wraps every side data of
    the frame: never call it on PNG/APNG frames (the ICC double free, see
    :mod:`affstream.io.orientation`).
    """
    container = frame.side_data
    for entry in container:
        if isinstance(entry, (Enum, str)) or not hasattr(entry, "type"):  # a key: PyAV >= 18.1.1
            if _type_name(entry) == kind:
                return bytes(container[entry])
        elif _type_name(entry.type) == kind:
            return bytes(entry)
    return None


def _type_name(kind) -> str:
    """``Type.DISPLAYMATRIX`` -> ``"DISPLAYMATRIX"`` (enum members and plain strings)."""
    return kind if isinstance(kind, str) else str(getattr(kind, "name", kind))
