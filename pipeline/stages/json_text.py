"""One row's JSON text -> its value, read the same wherever the text is: a JSON Lines line, a JSON array element, a CSV
messages cell, a string field holding tools or tool-call arguments. What cannot be used raises `JsonProblem`, which
rejects that row (never the run).

- Numbers are exact. orjson reads most text fast, but turns an integer wider than 64 bits into a float (silently
  rounded), and refuses what Python's json reads (NaN, Infinity, 1e400, lone surrogate escapes). So text that could
  hold such an integer (20 digits in a row, or `-` and 19: every integer orjson cannot hold has one) or that orjson
  refuses is read by Python's json, which keeps integers exact. Floats come out the same from both (correctly rounded).
- Nesting is bounded: arrays and objects nested deeper than `MAX_DEPTH` are refused. Python's parser, pydantic's
  serializer, `json.dumps`, pickling to workers and Jinja all recurse, and a deep enough value would stop the run with
  a RecursionError in any of them; the limit is far above real chat data and far below where any of them fails.
- An integer longer than Python's digit limit (`sys.get_int_max_str_digits()`, 4300 by default) is refused, as
  Python refuses to convert it.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

MAX_DEPTH = 100
"""The deepest nesting of arrays and objects one JSON text may have (`{"a": [1]}` is 2 levels)."""

_TOO_DEEP = f"invalid JSON: arrays and objects nested deeper than {MAX_DEPTH} levels"
_WIDE, _WIDE_NEGATIVE = b"0" * 20, b"-" + b"0" * 19  # past 2**64 - 1, and below -2**63, as a text's shape
_SHAPE = bytes(ord("0") if c in b"0123456789" else c if c in b"[-" else ord("[") if c == ord("{") else ord(" ")
               for c in range(256))
"""Maps a text's bytes to what the cheap checks look at: digits as `0`, `-`, and openings of arrays and objects as
`[`."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the only way a lone surrogate gets into decoded text
_PIECE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+|.', re.S)
_SCALAR = re.compile(r"[^\s,\]}]*")


class JsonProblem(ValueError):
    """Why one row's JSON text cannot be used; the message says so in a user's terms."""


def loads(text: str) -> Any:
    """The value of `text`, with exact numbers and bounded nesting; `JsonProblem` when it cannot be used."""
    shape = text.encode("utf-8", "surrogatepass").translate(_SHAPE)
    if _WIDE in shape or _WIDE_NEGATIVE in shape:
        value = _python_loads(text)
    else:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = _python_loads(text)
    _check_depth(value, shape.count(b"["))
    return value


def check(value: Any, text: str, start: int, end: int) -> None:
    """The checks `loads` makes, for a value Python's json decoded from `text[start:end]` (a JSON array's element)."""
    _check_surrogates(value, text, start, end)
    _check_depth(value, text.count("[", start, end) + text.count("{", start, end))


def problem_of(error: RecursionError | ValueError) -> JsonProblem:
    """What Python's json raised on text it could not build a value from, as the row's problem."""
    if isinstance(error, json.JSONDecodeError):
        return JsonProblem(f"invalid JSON at column {error.colno}: {error.msg}")
    if isinstance(error, RecursionError):
        return JsonProblem(_TOO_DEEP)
    return JsonProblem(f"invalid JSON: {str(error).split(';')[0]}")  # an integer past the digit limit


def value_end(text: str, start: int) -> int | None:
    """Where the JSON value at `start` ends, found from its brackets and strings alone (no recursion, so at any depth),
    or None when `text` ends first. Lets a reader step over a value that could not be decoded, to the next one."""
    if text[start] not in "[{":
        return _SCALAR.match(text, start).end()
    depth, pos = 0, start
    while pos < len(text):
        piece = _PIECE.match(text, pos)
        pos = piece.end()
        token = piece.group()
        if token in ("[", "{"):
            depth += 1
        elif token in ("]", "}"):
            depth -= 1
            if depth == 0:
                return pos
        elif token == '"':
            return None  # a string the text ends inside
    return None


def _python_loads(text: str) -> Any:
    try:
        value = json.loads(text)
    except (RecursionError, ValueError) as e:
        raise problem_of(e) from None
    _check_surrogates(value, text, 0, len(text))
    return value


def _check_surrogates(value: Any, text: str, start: int, end: int) -> None:
    """A `\\uD800`-style escape with no pair decodes, but no UTF-8 text (nor a tokenizer) can hold it. Looked for only
    when the text has such an escape."""
    if _SURROGATE_ESCAPE.search(text, start, end) is None:
        return
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start]
        raise JsonProblem(f"invalid JSON: a lone surrogate {bad!r} escape (not a Unicode character)") from None


def _check_depth(value: Any, openings: int) -> None:
    """`openings`: how many `[` and `{` the text holds (in strings too). The nesting cannot be deeper, so only a text
    with more than `MAX_DEPTH` of them has its value walked."""
    if openings <= MAX_DEPTH:
        return
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise JsonProblem(_TOO_DEEP)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
