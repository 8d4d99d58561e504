"""Bounds on one chat-template rendering: how long it may take and how much text it may produce.

A chat template is code, and it comes with the data or the tokenizer: a loop over `range(100000)` inside another
never ends, `'a' * 10**9` allocates a gigabyte, and either may happen for every row or only for a few. So every
rendering runs under a time limit and a size limit (`render.time_limit`, `render.max_chars`); going over one raises
`RenderLimitExceeded`, whose message names the limit and its value.

- Time: in the main thread (where the pipeline and each of its worker processes render) an `ITIMER_REAL` timer
  ticks four times per time limit while renderings go on (`render_timer`: once per batch), and its SIGALRM handler
  stops a rendering older than its limit by raising inside the template. A rendering itself makes no system call:
  it only notes when it started. Elsewhere, or while the caller has a timer of its own running, the time is checked
  as the output grows.
- Size: the output is taken from the template in blocks and counted before it is joined, and `*` and `**` are checked
  before they compute, so a huge string, list or integer is refused before it exists.
"""
from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from schemas.config import RenderConfig

MAX_INTEGER_DIGITS = 4300
"""The largest integer a template may compute with `*` or `**`: Python's own limit for printing one."""
_MAX_INTEGER_BITS = math.ceil(MAX_INTEGER_DIGITS * math.log2(10))
_BLOCK = 1024
"""Output pieces taken from the template between two size checks (a typical rendering is one block)."""


class RenderLimitExceeded(Exception):
    """A rendering went over `render.time_limit` or `render.max_chars`; the message says which, and its value."""


class _Expired(BaseException):
    """Raised by the SIGALRM handler inside the template. A BaseException, so that no `except Exception` in code the
    template calls can swallow it; `RenderLimits` turns it into RenderLimitExceeded."""


@dataclass(frozen=True)
class RenderLimits:
    """The limits of one rendering: `render.time_limit` seconds and `render.max_chars` characters."""

    seconds: float
    max_chars: int

    @classmethod
    def of(cls, config: RenderConfig) -> "RenderLimits":
        return cls(seconds=config.time_limit, max_chars=config.max_chars)

    def render(self, template: Any, variables: dict[str, Any]) -> str:
        """`template.render(variables)` within the limits (`template`: a compiled jinja2 Template)."""
        if _watch.thread == threading.get_ident():
            return self._render_watched(template, variables)
        if _timer_available():
            with render_timer():
                return self._render_watched(template, variables)
        return self._collect(template, variables, deadline=time.monotonic() + self.seconds)

    def _render_watched(self, template: Any, variables: dict[str, Any]) -> str:
        if _watch.limit != self.seconds:
            _watch.arm(self.seconds)
        _watch.started = time.monotonic()
        try:
            return self._collect(template, variables, deadline=None)
        except _Expired:
            raise self._too_slow() from None
        finally:
            _watch.started = None

    def _collect(self, template: Any, variables: dict[str, Any], deadline: float | None) -> str:
        """What `Template.render` does (join the pieces the template yields), counting the pieces first."""
        pieces = template.root_render_func(template.new_context(variables))
        block = list(itertools.islice(pieces, _BLOCK))
        size = sum(map(len, block))
        if len(block) < _BLOCK and size <= self.max_chars:
            return "".join(block)  # the whole rendering (almost always)
        parts: list[str] = []
        while block:
            if size > self.max_chars:
                raise RenderLimitExceeded(
                    f"the rendered text is longer than render.max_chars ({self.max_chars:,} characters)"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise self._too_slow()
            parts += block
            block = list(itertools.islice(pieces, _BLOCK))
            size += sum(map(len, block))
        return "".join(parts)

    def _too_slow(self) -> RenderLimitExceeded:
        return RenderLimitExceeded(f"rendering took longer than render.time_limit ({self.seconds:g} s)")


class _Watch:
    """The main thread's rendering timer while `render_timer` has installed its SIGALRM handler."""

    thread: int | None = None
    """The thread it serves (the main thread), while installed."""
    limit: float | None = None
    """The time limit the timer ticks for (four ticks per limit), once a rendering has armed it."""
    started: float | None = None
    """When the rendering in progress started (`time.monotonic()`); None between renderings."""

    def arm(self, limit: float) -> None:
        self.limit = limit
        signal.setitimer(signal.ITIMER_REAL, limit / 4, limit / 4)


_watch = _Watch()


def _timer_available() -> bool:
    """SIGALRM reaches only the main thread, and a timer the caller armed must not be cancelled or replaced."""
    return threading.current_thread() is threading.main_thread() and signal.getitimer(signal.ITIMER_REAL)[0] == 0


def _on_tick(signum: int, frame: Any) -> None:
    """SIGALRM: stop the rendering in progress once it is older than its limit (so within a quarter of the limit
    after it is reached); a tick between renderings does nothing."""
    started = _watch.started
    if started is not None and time.monotonic() - started >= _watch.limit:
        _watch.started = None  # once per rendering: a later tick cannot raise again while this one unwinds
        raise _Expired


@contextmanager
def render_timer() -> Iterator[None]:
    """Watch a stretch of renderings (a batch) with one SIGALRM handler and one ticking timer, put back as they were
    found afterwards. Does nothing where the timer cannot be used (renderings then check the time as their output
    grows) or while already in force."""
    if _watch.thread is not None or not _timer_available():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_tick)
    _watch.thread = threading.get_ident()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _watch.thread = _watch.limit = None
        signal.signal(signal.SIGALRM, previous)


def bound_operators(environment: Any, max_chars: int) -> None:
    """Route a sandboxed environment's `*` and `**` through a size check made before they compute. Set it before
    compiling: jinja then also leaves these operators out of the constants it folds while compiling, where
    `{{ 'a' * 10**9 }}` would otherwise be computed once and written into the compiled template."""
    table = environment.binop_table

    def call_binop(context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_size(operator, left, right, max_chars)
        return table[operator](left, right)

    environment.intercepted_binops = frozenset({"*", "**"})
    environment.call_binop = call_binop


def _check_size(operator: str, left: Any, right: Any, max_chars: int) -> None:
    """Refuse a `*` or `**` whose result would be too large, from its operands' sizes, before it is computed."""
    integers = isinstance(left, int) and isinstance(right, int)
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(times, int) and len(sequence) * times > max_chars:
                unit = "characters" if isinstance(sequence, str) else "items"
                raise RenderLimitExceeded(f"`*` would build a {type(sequence).__name__} of {len(sequence) * times:,} "
                                          f"{unit}, over render.max_chars ({max_chars:,} characters)")
        if integers and left.bit_length() + right.bit_length() > _MAX_INTEGER_BITS:
            raise _too_large_integer(operator)
    elif integers and right > 0 and (abs(left).bit_length() - 1) * right > _MAX_INTEGER_BITS:
        raise _too_large_integer(operator)  # |left| ** right has at least (bit_length - 1) * right bits


def _too_large_integer(operator: str) -> RenderLimitExceeded:
    return RenderLimitExceeded(f"`{operator}` would compute an integer of more than {MAX_INTEGER_DIGITS:,} digits")
