"""Tokenize each rendering once, the whole batch in one call to the run's encoder (`pipeline.encoders`)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.encoders.base import Encoded
from pipeline.stages.row import Row
from pipeline.step import Step, Tally

Encoder = Callable[[Sequence[str]], list[Encoded]]
"""Texts -> one `Encoded` each, with `add_special_tokens=False` (`pipeline.encoders.choose.make_encoder`)."""


class Tokenize(Step):
    """The tokenize step: a batch step, since encoders are fastest on many texts at once."""

    name = "tokenize"

    def __init__(self, encode: Encoder):
        self.encode = encode

    def process(self, items: list[Row], tally: Tally) -> list[Row]:
        for row, encoded in zip(items, self.encode([row.rendered.text for row in items])):
            row.encoded, row.input_ids = encoded, encoded.input_ids
        return items
