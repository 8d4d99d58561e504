"""One row's JSON text: exact integers on the fast path and off it, the nesting limit, and stepping over a value."""
from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.stages.json_text import MAX_DEPTH, JsonProblem, loads, value_end
from tests.containers import nested


@pytest.mark.parametrize("number", [2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, -(10**19), 10**40, -(10**40)])
def test_integers_at_and_past_64_bits_are_exact(number):
    got = loads(f'{{"n": {number}, "s": "{number}"}}')
    assert type(got["n"]) is int and got["n"] == number and got["s"] == str(number)


NUMBER = r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][-+]?[0-9]{1,3})?"


@given(st.from_regex(NUMBER, fullmatch=True))
def test_any_number_reads_as_python_reads_it(text):
    """The fast path and Python's json give the same value (integers exact, floats correctly rounded); orjson, where
    it reads a number without refusing it, gives the same float."""
    expected = json.loads(text)
    assert repr(loads(f"[{text}]")[0]) == repr(expected)
    if isinstance(expected, float):
        try:
            assert repr(orjson.loads(text)) == repr(expected)
        except orjson.JSONDecodeError:  # infinity: Python's json decides
            pass


def test_twenty_digits_in_a_string_change_nothing():
    text = '{"phone": "+1 55512345678901234567", "x": 0.1, "y": [1, 2]}'
    assert loads(text) == json.loads(text)


@pytest.mark.parametrize("depth", [2, MAX_DEPTH])
def test_nesting_up_to_the_limit_is_read(depth):
    assert loads(nested(depth)) == json.loads(nested(depth))
    assert loads('{"a": ' + nested(depth - 1) + "}")["a"] == json.loads(nested(depth - 1))


@pytest.mark.parametrize(
    "text, message",
    [
        (nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
        ('{"a": ' + nested(MAX_DEPTH) + "}", f"nested deeper than {MAX_DEPTH} levels"),
        (nested(5000), f"nested deeper than {MAX_DEPTH} levels"),
        ("[" + "9" * 4301 + "]", "value has 4301 digits"),
        ('{"a": "\\ud800"}', "lone surrogate"),
        ('{"a": 1,}', "invalid JSON at column 9"),
    ],
    ids=["limit + 1", "limit + 1 in an object", "5000 levels", "4301 digits", "lone surrogate", "syntax"],
)
def test_problems_name_their_cause(text, message):
    with pytest.raises(JsonProblem, match=message):
        loads(text)


def test_brackets_in_strings_count_only_when_the_value_is_walked():
    text = '{"a": "' + "[{" * (MAX_DEPTH + 5) + '"}'
    assert loads(text) == {"a": "[{" * (MAX_DEPTH + 5)}


@pytest.mark.parametrize(
    "text, start, end",
    [
        ('[1, "]", {"a": "\\"}"}] , 2', 0, 22),
        ('x [[[]]]]', 2, 8),
        ("[-12e3, 7]", 1, 6),
        ("123", 0, 3),
        ('{"a": [1, 2], "b": "}"}]', 0, 23),
    ],
)
def test_value_end_steps_over_one_value(text, start, end):
    assert value_end(text, start) == end


@pytest.mark.parametrize("text", ["[[[]]", '{"a": "}', '[1, "\\"]'])
def test_value_end_is_none_when_the_text_ends_first(text):
    assert value_end(text, 0) is None
