"""Checks of untrusted values: one primitive per kind of value, shared by every checker.

Pipeline presets and CLI overrides (:mod:`affstream.config`) and head cards
(:mod:`affstream.heads.base` and the heads' dims) are checked with these functions.

Each primitive takes the value, its dotted ``name`` (``track.iou_min``,
``config.tcn_dilations[1]``), the limits it allows, and two keywords:

* ``where``: what holds the value (a file path, a card path, ``MLPDims``), or "" for
  nothing; it starts the message, followed by ": ".
* ``allowed``: replaces the default words saying what is allowed, for a caller whose
  rule is narrower than the limits say.

It returns the value (as an ``int``, ``float``, ``str``, ``bool`` or ``tuple``), or raises
a one-line :class:`~affstream.errors.ConfigError` of the form
``<where>: <name> must be <what is allowed>, got <value>`` (:func:`refused`), the value
rendered by :func:`show`.

This module is at the bottom layer: it imports only :mod:`affstream.errors` (no torch,
no numpy), so anything may use it.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ConfigError

SHOW_LIMIT = 80
"""Most characters :func:`show` gives for one value."""


def show(value: Any, limit: int = SHOW_LIMIT, *, as_repr: bool = False) -> str:
    """``value`` for an error message: one line of at most ``limit`` characters (>= 4).

    A string is shown as a JSON/TOML literal in double quotes (``"x"``, how a preset or
    card spells it), or with ``as_repr`` by its Python repr (``'x'``, for names quoted in
    prose); anything else by its repr. Line breaks and other unprintable characters are
    escaped (``\\n``), and a longer text is cut to ``limit`` characters ending in "...".
    Never raises for a value whose repr fails for size (a huge int, a deep nesting).
    """
    if isinstance(value, str):
        value = value[:limit]  # every character renders to at least one: enough to cut
        text = repr(value) if as_repr else json.dumps(value, ensure_ascii=False)
    else:
        try:
            text = repr(value)
        except (ValueError, RecursionError):  # int beyond the str-conversion limit; deep nesting
            text = f"<{type(value).__name__} too large to show>"
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def refused(value: Any, name: str, allowed: str, *, where: str = "") -> ConfigError:
    """The error for ``value`` refused as option or field ``name``, to raise:
    ``<where>: <name> must be <allowed>, got <show(value)>`` (no ``<where>: `` when
    ``where`` is empty). ``allowed`` completes "<name> must be ..."."""
    prefix = f"{where}: " if where else ""
    return ConfigError(f"{prefix}{name} must be {allowed}, got {show(value)}")


def interval(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> str:
    """The interval from ``lo`` to ``hi`` as text: ``[0, 1]``, ``(0, 1]``, ``[0, 1)``;
    an open end excludes its bound. Bounds are written with ``:g``."""
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _is_int(value: Any) -> bool:
    """An integral number that is not a bool (Python or numpy ints; not floats, not strings)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(
    value: Any,
    name: str,
    lo: int,
    hi: int,
    *,
    where: str = "",
    special: int | None = None,
    meaning: str = "",
    brackets: bool = False,
    allowed: str | None = None,
) -> int:
    """``value`` as an int in lo..hi (both included), or equal to ``special``.

    Accepts Python and numpy integers; refuses bools, floats (even ``2.0``), strings and
    anything else. ``special`` is one more allowed value outside the range (``0`` for "full
    size"), described in the message by ``meaning``. The range is written ``lo..hi``, or
    ``[lo, hi]`` with ``brackets``; e.g. "an integer in 0..256", "0 (full size) or an
    integer in 32..8192", "an integer in [1, 64]".
    """
    if _is_int(value) and (lo <= value <= hi or value == special):
        return int(value)
    if allowed is None:
        allowed = f"an integer in {f'[{lo}, {hi}]' if brackets else f'{lo}..{hi}'}"
        if special is not None:
            allowed = f"{special} ({meaning}) or {allowed}" if meaning else f"{special} or {allowed}"
    raise refused(value, name, allowed, where=where)


def check_number(
    value: Any,
    name: str,
    lo: float,
    hi: float,
    *,
    where: str = "",
    lo_open: bool = False,
    hi_open: bool = False,
    allowed: str | None = None,
) -> float:
    """``value`` as a float between the finite bounds ``lo`` and ``hi``; an open end
    (``lo_open``, ``hi_open``) excludes its bound.

    Accepts ints and real numbers (Python or numpy floats, fractions), compared as given
    (a huge int is refused, not overflowed); refuses bools, strings, NaN and infinities.
    Message: "a number in (0, 1]".
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and (_is_int(value) or math.isfinite(value)):
        above = lo < value if lo_open else lo <= value
        below = value < hi if hi_open else value <= hi
        if above and below:
            return float(value)
    raise refused(value, name, allowed or f"a number in {interval(lo, hi, lo_open=lo_open, hi_open=hi_open)}",
                  where=where)


def check_str(
    value: Any,
    name: str,
    *,
    where: str = "",
    nonempty: bool = False,
    printable: bool = False,
    max_chars: int | None = None,
    test: Callable[[str], bool] | None = None,
    allowed: str | None = None,
) -> str:
    """``value`` as a str; refuses anything else.

    nonempty:  refuse "" (a string of spaces is not empty).
    printable: refuse unprintable characters (``str.isprintable``), so the string is one
               line: no line breaks, tabs or control characters.
    max_chars: refuse longer strings.
    test:      a further rule, true for an allowed string (give ``allowed`` with it).

    The default message comes from the flags: "a string", "a non-empty printable string
    of at most 200 characters".
    """
    ok = (
        isinstance(value, str)
        and (not nonempty or bool(value))
        and (max_chars is None or len(value) <= max_chars)
        and (not printable or value.isprintable())
        and (test is None or test(value))
    )
    if ok:
        return value
    if allowed is None:
        words = " non-empty" * nonempty + " printable" * printable
        allowed = f"a{words} string" + (f" of at most {max_chars} characters" if max_chars is not None else "")
    raise refused(value, name, allowed, where=where)


def check_bool(value: Any, name: str, *, where: str = "", allowed: str | None = None) -> bool:
    """``value`` if it is ``True`` or ``False``; refuses 0, 1, "true", None and numpy bools.
    Message: "true or false"."""
    if isinstance(value, bool):
        return value
    raise refused(value, name, allowed or "true or false", where=where)


def check_choice(
    value: Any,
    name: str,
    options: Sequence[str],
    *,
    where: str = "",
    fold: bool = False,
    allowed: str | None = None,
) -> str:
    """``value`` if it is a str among ``options``, returned as given.

    fold: ignore letter case and surrounding spaces (for values read as
          ``value.strip().lower()``); ``options`` are then lower case.
    Message: "one of auto, fp32, bf16, fp16" (just the option for a single one).
    """
    if isinstance(value, str) and (value.strip().lower() if fold else value) in options:
        return value
    if allowed is None:
        allowed = options[0] if len(options) == 1 else f"one of {', '.join(options)}"
    raise refused(value, name, allowed, where=where)


def check_sequence(
    value: Any,
    name: str,
    item: Callable[..., Any],
    *,
    length: int | range,
    where: str = "",
    kinds: tuple[type, ...] = (list, tuple),
    allowed: str | None = None,
) -> tuple[Any, ...]:
    """``value`` as a tuple of its checked elements.

    value:  an instance of one of ``kinds`` (lists and tuples by default; never a str)
            whose length is ``length``, or in it when ``length`` is a range.
    item:   the check of each element, called as ``item(element, f"{name}[{i}]",
            where=where)`` and returning the element to keep: a primitive with its
            limits bound, e.g. ``functools.partial(check_number, lo=0, hi=1)``.

    The container is checked first, then each element in order, so the message names
    the first bad one (``detect.thresholds[1] must be ...``). The default message is
    "a list of 3 values"; a caller usually says what the elements must be.
    """
    size_ok = (
        isinstance(value, kinds)
        and not isinstance(value, str)
        and (len(value) in length if isinstance(length, range) else len(value) == length)
    )
    if not size_ok:
        if allowed is None:
            count = f"{length.start} to {length.stop - 1}" if isinstance(length, range) else str(length)
            allowed = f"a list of {count} values"
        raise refused(value, name, allowed, where=where)
    return tuple(item(element, f"{name}[{i}]", where=where) for i, element in enumerate(value))
