"""Errors a user can act on.

Every error raised for a user's mistake derives from :class:`AffstreamError`; its
message is one line that names the input and says what to do. The CLI prints that
line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AffstreamError(Exception):
    """Base class: a problem with the user's input, configuration or environment."""


class SourceError(AffstreamError):
    """A video or image source cannot be opened or holds no decodable video."""


class WeightsError(AffstreamError):
    """Model weights are missing, cannot be downloaded, or fail their checksum."""


class ConfigError(AffstreamError):
    """A preset, option or head card is invalid or inconsistent."""


class DataError(AffstreamError):
    """A dataset, annotation file or feature bank is malformed."""


class OutputError(AffstreamError):
    """An output file or folder cannot be created, written or published."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (or its type name), at most ``limit`` characters,
    for quoting a library's error inside one of ours."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


BUG_REPORT_HINT = "please report it with the output of `affstream doctor`"
# a native crash (a signal, not an exception) on one file: the file is part of the report
CRASH_REPORT_HINT = "please report it with the file and the output of `affstream doctor`"


def internal_error(where: str, exc: BaseException) -> str:
    """One line for an exception that is not a user's mistake (a defect in affstream, or a
    dependency whose API moved): where it happened, the exception's type and message, and
    how to report it. The traceback belongs in the debug log, not in this line."""
    return (f"{where}: affstream failed with an internal error ({type(exc).__name__}: {first_line(exc)}); "
            f"this is not a problem with the input: {BUG_REPORT_HINT}")
