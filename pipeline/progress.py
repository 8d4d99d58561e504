"""A tqdm progress bar on stderr, shown only when stderr is a terminal (never in CI logs or piped output)."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, unit: str = "rows", enabled: bool | None = None) -> Iterator[T]:
    """`items`, counted on a bar. `enabled=None`: on when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iter(items)
    return iter(tqdm(items, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5, dynamic_ncols=True))
