"""Length limits. Strategies: cut the tail (GLM-4's behaviour), drop the sample, or drop whole oldest turns.

A sample left with no trained token is dropped with a reason: it would give a NaN or zero loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import Reason, RowError
from pipeline.shards.format import IGNORE_INDEX
from pipeline.stages.mask import ChooseTrained, Label
from pipeline.stages.render import Renderer
from pipeline.stages.row import Row
from pipeline.stages.tokenize import Encoder
from pipeline.step import RowStep, Tally
from schemas.records import Conversation


@dataclass(frozen=True)
class Cut:
    """The outcome for one sample: its (possibly shortened) arrays, or a filter reason; `truncated` if cut."""

    input_ids: np.ndarray | None
    labels: np.ndarray | None
    reason: Reason | None = None
    truncated: bool = False


def apply_limit(input_ids: np.ndarray, labels: np.ndarray, *, limit: int | None, strategy: str) -> Cut:
    """Cut or drop one tokenized sample. `drop_oldest_turns` is handled before, on the conversation itself."""
    truncated = False
    if limit is not None and len(input_ids) > limit:
        if strategy == "drop":
            return Cut(None, None, reason=Reason.TOO_LONG)
        if strategy == "drop_oldest_turns":
            return Cut(None, None, reason=Reason.TOO_LONG_AFTER_DROPPING_TURNS)
        input_ids, labels, truncated = input_ids[:limit], labels[:limit], True
    if not np.any(labels != IGNORE_INDEX):
        reason = Reason.NO_TRAINED_TOKENS_AFTER_TRUNCATION if truncated else Reason.NO_TRAINED_TOKENS
        return Cut(None, None, reason=reason)
    return Cut(input_ids, labels, truncated=truncated)


def drop_oldest_turn(conversation: Conversation) -> Conversation | None:
    """The conversation without its oldest round (the first non-system message up to the next user message).

    System messages stay. Returns None when only one round is left, so the caller stops shortening."""
    messages = conversation.messages
    first = next((i for i, m in enumerate(messages) if m.role != "system"), None)
    if first is None:
        return None
    nxt = next((i for i in range(first + 1, len(messages)) if messages[i].role == "user"), None)
    if nxt is None:
        return None
    return conversation.model_copy(update={"messages": messages[:first] + messages[nxt:]})


_FILTER_MESSAGES = {
    Reason.TOO_LONG: "longer than the limit of {limit} tokens (truncation strategy 'drop')",
    Reason.TOO_LONG_AFTER_DROPPING_TURNS: "still longer than {limit} tokens with only its last round left",
    Reason.NO_TRAINED_TOKENS: "no token is trained under the mask policy",
    Reason.NO_TRAINED_TOKENS_AFTER_TRUNCATION: "no trained token is left after cutting to {limit} tokens",
}


class Truncate(RowStep):
    """The truncate step: each sample cut or filtered by `apply_limit`; a cut is noted (`truncated`)."""

    name = "truncate"

    def __init__(self, *, limit: int | None, strategy: str):
        self.limit, self.strategy = limit, strategy

    def row(self, row: Row, tally: Tally) -> Row | None:
        cut = apply_limit(row.input_ids, row.labels, limit=self.limit, strategy=self.strategy)
        if cut.reason is not None:
            message = _FILTER_MESSAGES[cut.reason].format(limit=self.limit)
            tally.drop(RowError.of(row.conversation, cut.reason, "", message))
            return None
        if cut.truncated:
            tally.note(Reason.TRUNCATED)
        row.input_ids, row.labels = cut.input_ids, cut.labels
        return row


class DropOldestTurns(RowStep):
    """The `drop_oldest_turns` strategy, before `Truncate`: a sample over the limit is made again from its
    conversation without its oldest rounds (system kept), chosen, rendered, encoded and labelled as the steps
    before did it, until it fits (noted `turns_dropped`). One that never fits is left for `Truncate` to filter; one
    whose shortened conversation the template refuses is rejected (`template_error`)."""

    name = "drop_oldest_turns"

    def __init__(self, *, choose: ChooseTrained, renderer: Renderer, encode: Encoder, label: Label, limit: int):
        self.choose, self.renderer, self.encode, self.label, self.limit = choose, renderer, encode, label, limit

    def row(self, row: Row, tally: Tally) -> Row | None:
        if len(row.input_ids) <= self.limit:
            return row
        current = drop_oldest_turn(row.conversation)
        while current is not None:
            trained = self.choose.of(current)
            try:
                rendered = self.renderer(current, trained)
            except RowError as error:  # the row is the input's conversation, not the shortened one
                error.raw = row.conversation.model_dump(mode="json", exclude_none=True)
                tally.drop(error)
                return None
            (encoded,) = self.encode([rendered.text])
            if len(encoded.input_ids) <= self.limit:
                row.rendered, row.encoded = rendered, encoded
                row.input_ids, row.labels = encoded.input_ids, self.label.labels(rendered, encoded, trained)
                tally.note(Reason.TURNS_DROPPED)
                return row
            current = drop_oldest_turn(current)
        return row
