"""What the preprocess steps pass from one to the next: a row's conversation and what the steps so far made of it
(the messages to train, the rendering with its spans, the tokens, the labels, the split)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from pipeline.encoders.base import Encoded
from pipeline.errors import RowError
from schemas.records import Conversation


class Span(NamedTuple):
    """Characters [start, end) of the rendered text that hold one trainable piece of message `message`. A named
    tuple: a conversation makes a dozen or more, and a tuple is built in a third of a frozen dataclass's time."""

    message: int
    kind: str  # "content" | "reasoning" | "tool_name" | "opening" (template text before the first piece)
    start: int
    end: int
    piece: int = -1  # which wrapped piece (sentinel number); -1 for openings


@dataclass(frozen=True)
class Rendered:
    """One conversation's rendered text and the spans of its trainable pieces, in message order."""

    text: str
    spans: tuple[Span, ...]


@dataclass
class Row:
    """One conversation on its way through the steps. `trained`: the messages whose text the mask takes from the
    rendering, which the renderer must therefore find verbatim. `remarks`: remarks listed once the row is written.
    `split_key`: the id the split is chosen by, when not the conversation's (every draw of a record shares one)."""

    conversation: Conversation
    trained: frozenset[int] = frozenset()
    rendered: Rendered | None = None
    encoded: Encoded | None = None
    input_ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    split: str | None = None
    remarks: list[RowError] = field(default_factory=list)
    split_key: str | None = None
