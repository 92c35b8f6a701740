"""The shared checks of untrusted values (affstream.validate): types, ranges, the special
value, NaN and infinities, bools refused as ints, and one-line, truncated messages."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import affstream.validate as validate
from affstream.errors import ConfigError
from affstream.validate import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_sequence,
    check_str,
    interval,
    refused,
    show,
)

NAN, INF = float("nan"), float("inf")


def _message(check, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        check(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.isprintable(), message
    return message


# ------------------------------------------------------------------------------- integers


@pytest.mark.parametrize("value", [0, 5, 10, np.int64(7), np.uint8(3)])
def test_int_accepts_integers_in_the_inclusive_range(value):
    result = check_int(value, "n", 0, 10)
    assert result == value and type(result) is int


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, 2.5, "2", None, [2], NAN, Fraction(2)])
def test_int_refuses_bools_floats_and_strings(value):
    assert _message(check_int, value, "n", 0, 10).startswith("n must be an integer in 0..10, got ")


@pytest.mark.parametrize("value", [-1, 11, 10**400, -(10**400)])
def test_int_refuses_values_out_of_range(value):
    _message(check_int, value, "n", 0, 10)


def test_int_special_value():
    assert check_int(0, "detect.size", 32, 8192, special=0, meaning="full size") == 0
    assert check_int(32, "detect.size", 32, 8192, special=0, meaning="full size") == 32
    assert _message(check_int, 1, "detect.size", 32, 8192, special=0, meaning="full size") == \
        "detect.size must be 0 (full size) or an integer in 32..8192, got 1"
    assert _message(check_int, False, "n", 1, 9, special=0) == "n must be 0 or an integer in 1..9, got False"


def test_int_message_forms():
    assert _message(check_int, "x", "track.max_missed_frames", 0, 100_000) == \
        'track.max_missed_frames must be an integer in 0..100000, got "x"'
    assert _message(check_int, 60000, "config.hidden_layers", 1, 64, where="c.json", brackets=True) == \
        "c.json: config.hidden_layers must be an integer in [1, 64], got 60000"
    assert _message(check_int, 9, "stride", 1, 8, allowed="at most the length (8)") == \
        "stride must be at most the length (8), got 9"


# -------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("value", [0, 1, 0.0, 0.5, 1.0, np.float32(0.25), np.int64(1), Fraction(1, 3)])
def test_number_accepts_finite_numbers_in_a_closed_range(value):
    result = check_number(value, "x", 0, 1)
    assert type(result) is float and result == float(value)


@pytest.mark.parametrize("value", [NAN, INF, -INF, np.float64("nan"), True, False, "0.5", None, -0.01, 1.01, 10**400])
def test_number_refuses_nan_inf_bools_strings_and_out_of_range(value):
    assert _message(check_number, value, "x", 0, 1).startswith("x must be a number in [0, 1], got ")


def test_number_open_bounds():
    assert _message(check_number, 0, "track.iou_min", 0, 1, lo_open=True) == \
        "track.iou_min must be a number in (0, 1], got 0"
    assert check_number(1e-9, "t", 0, 1, lo_open=True) == 1e-9
    assert check_number(1, "t", 0, 1, lo_open=True) == 1.0
    assert check_number(0, "p", 0, 1, hi_open=True) == 0.0
    assert _message(check_number, 1.0, "p", 0.0, 1.0, hi_open=True, where="card") == \
        "card: p must be a number in [0, 1), got 1.0"
    assert interval(0.1, 0.95, lo_open=True, hi_open=True) == "(0.1, 0.95)"


# -------------------------------------------------------------------------- strings, bools


def test_str_flags():
    assert check_str("", "name") == ""
    assert check_str(" ", "name", nonempty=True) == " "  # not empty, only blank
    assert _message(check_str, 5, "name") == "name must be a string, got 5"
    card = {"nonempty": True, "printable": True, "max_chars": 5}
    assert check_str("a b", "name", **card) == "a b"
    for bad in ("", "two\nlines", "tab\there", "x" * 6, b"bytes", None):
        assert _message(check_str, bad, "name", where="h.json", **card).startswith(
            "h.json: name must be a non-empty printable string of at most 5 characters, got "
        )


def test_str_test_with_its_words():
    device = {"test": lambda s: s.strip().lower() in ("cpu", "cuda"), "allowed": "cpu or cuda"}
    assert check_str(" CPU", "device", **device) == " CPU"
    assert _message(check_str, "gpu", "device", **device) == 'device must be cpu or cuda, got "gpu"'
    assert _message(check_str, 0, "device", **device) == "device must be cpu or cuda, got 0"  # test not called


def test_bool_refuses_everything_but_true_and_false():
    assert check_bool(True, "causal") is True and check_bool(False, "causal") is False
    for bad in (0, 1, "true", None, np.bool_(True)):
        assert _message(check_bool, bad, "causal").startswith("causal must be true or false, got ")


def test_choice():
    assert check_choice("fp16", "p", ("auto", "fp16")) == "fp16"
    assert _message(check_choice, "FP16", "p", ("auto", "fp16")) == 'p must be one of auto, fp16, got "FP16"'
    assert check_choice(" FP16 ", "p", ("auto", "fp16"), fold=True) == " FP16 "  # returned as given
    assert _message(check_choice, 16, "p", ("auto", "fp16"), fold=True) == "p must be one of auto, fp16, got 16"
    assert _message(check_choice, "learned", "enc", ("sinusoidal",), where="c") == \
        'c: enc must be sinusoidal, got "learned"'


# ------------------------------------------------------------------------------ sequences


def test_sequence_fixed_length_of_checked_elements():
    item = functools.partial(check_number, lo=0, hi=1, lo_open=True)
    assert check_sequence([1, 0.5, 0.25], "t", item, length=3) == (1.0, 0.5, 0.25)
    assert _message(check_sequence, (0.6, 0, 0.7), "detect.thresholds", item, length=3) == \
        "detect.thresholds[1] must be a number in (0, 1], got 0"
    assert _message(check_sequence, (0.6, 0.7), "t", item, length=3) == "t must be a list of 3 values, got (0.6, 0.7)"
    for bad in ("abc", 0.5, None, {0: 1, 1: 1, 2: 1}):
        assert _message(check_sequence, bad, "t", item, length=3).startswith("t must be a list of 3 values, got ")
    # kinds: a tuple-only option refuses a list; the first bad element is named with where
    assert _message(check_sequence, [1, 1, 1], "t", item, length=3, kinds=(tuple,), allowed="a tuple") == \
        "t must be a tuple, got [1, 1, 1]"
    assert _message(check_sequence, [1, 1, "x"], "t", item, length=3, where="f.toml").startswith("f.toml: t[2] must ")


def test_sequence_length_range():
    item = functools.partial(check_int, lo=1, hi=8, brackets=True)
    assert check_sequence((), "d", item, length=range(3)) == ()
    assert check_sequence([1, 2], "d", item, length=range(3)) == (1, 2)
    assert _message(check_sequence, [1, 2, 3], "d", item, length=range(3)) == \
        "d must be a list of 0 to 2 values, got [1, 2, 3]"
    assert _message(check_sequence, [1, True], "d", item, length=range(3)) == \
        "d[1] must be an integer in [1, 8], got True"


# --------------------------------------------------------------------------- the messages


def test_refused_form():
    assert str(refused(3, "a.b", "even")) == "a.b must be even, got 3"
    assert str(refused(3, "a.b", "even", where="/p/x.toml")) == "/p/x.toml: a.b must be even, got 3"
    assert isinstance(refused(3, "a", "b"), ConfigError)


def test_show_strings_in_double_quotes_or_as_repr():
    assert show("x") == '"x"' and show("it's") == '"it\'s"'
    assert show("x", as_repr=True) == "'x'"
    assert show(5) == "5" and show(None) == "None" and show((0.6, 0.7)) == "(0.6, 0.7)"
    assert show(NAN) == "nan" and show(["a"]) == "['a']"


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\u2028b", "a\x85b", "a\x0bb", "a\tb", "\ud800", ["x\ny"]])
def test_show_is_one_line(value):
    text = show(value)
    assert text.isprintable() and len(text.splitlines()) == 1, text


@pytest.mark.parametrize(
    "value",
    ["x" * 1_000_000, "\n" * 1000, list(range(100_000)), 10**4000, 10**5000, {"k": "v" * 500}],
    ids=["long-str", "newlines", "long-list", "big-int", "huge-int", "dict"],
)
def test_show_truncates_a_huge_value(value):
    text = show(value)
    assert len(text) <= validate.SHOW_LIMIT and text.endswith(("...", ">")) and text.isprintable()
    assert len(show(value, 20)) <= 20


def test_show_of_a_value_too_large_for_repr():
    assert show(10**5000) == "<int too large to show>"  # beyond Python's int-to-str digit limit


def test_primitive_message_is_one_line_with_a_huge_value():
    huge = "bad\n" * 100_000
    shown = '"' + "bad\\n" * 15 + "b..."  # 80 characters
    assert show(huge) == shown and len(shown) == validate.SHOW_LIMIT
    for check, args in ((check_int, (0, 1)), (check_number, (0, 1)), (check_bool, ()), (check_choice, (("a",),)),
                        (check_str, ()), (check_sequence, (check_bool,))):
        kwargs = {"length": 2} if check is check_sequence else {"printable": True} if check is check_str else {}
        message = _message(check, huge, "opt", *args, where="f.json", **kwargs)
        assert message.startswith("f.json: opt must be ") and message.endswith(f", got {shown}"), message


def test_nothing_is_shown_unbounded_by_check_sequence():
    message = _message(check_sequence, list(range(10**5)), "t", check_bool, length=3)
    assert len(message) < 200 and message.endswith("...")


# ------------------------------------------------------------------------------ the layer


def test_validate_imports_only_the_errors_module():
    tree = ast.parse(Path(validate.__file__).read_text(encoding="utf-8"))
    local = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert [(node.module, node.level) for node in local] == [("errors", 1)]
    absolute = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    absolute |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and not node.level and node.module}
    assert absolute <= set(sys.stdlib_module_names), absolute


def test_importing_validate_loads_no_torch_or_numpy():
    code = "import sys, affstream.validate; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

