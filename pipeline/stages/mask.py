"""Character spans to token labels, vectorised with numpy.

A token is trained when its characters overlap a trained region (the rule of `return_assistant_tokens_mask`). The
trained region of a message runs from its first trainable piece to its last; its end-of-turn is the first special
token after that, provided it comes before the next message's text. Labels are unshifted: `labels[i] = input_ids[i]`
where trained, else -100 (the model shifts).
"""
from __future__ import annotations

import bisect
from abc import abstractmethod
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from pipeline.encoders.base import Encoded
from pipeline.encoders.token_spans import TokenSpans
from pipeline.shards.format import IGNORE_INDEX
from pipeline.stages.row import Rendered, Row
from pipeline.step import RowStep, Tally
from schemas.config import MaskConfig
from schemas.records import Conversation


@dataclass(frozen=True)
class Region:
    """The trained character range of one message, and whether its end-of-turn token is trained too."""

    message: int
    start: int
    end: int
    eot: bool


def trained_messages(conversation: Conversation, policy: MaskConfig) -> list[int]:
    """Indices of the messages whose text is trained, by role policy, last-turn rule and per-message override."""
    roles = set(policy.roles_to_train)
    chosen = [
        i
        for i, m in enumerate(conversation.messages)
        if (m.loss if m.loss is not None else (policy.train_on_prompt or m.role in roles))
    ]
    if policy.last_turn_only:
        last = max((i for i in chosen if conversation.messages[i].role == "assistant"), default=None)
        chosen = [i for i in chosen if conversation.messages[i].role != "assistant" or i == last]
    return chosen


def message_regions(rendered: Rendered, messages: Collection[int], *, train_eot: bool) -> list[Region]:
    """The hull of each chosen message's spans, in rendered-text characters."""
    hulls: dict[int, list[int]] = {}
    for span in rendered.spans:
        if span.message in messages:
            lo, hi = hulls.setdefault(span.message, [span.start, span.end])
            hulls[span.message] = [min(lo, span.start), max(hi, span.end)]
    return [Region(i, lo, hi, train_eot) for i, (lo, hi) in sorted(hulls.items())]


def token_labels(
    input_ids: np.ndarray,
    spans: TokenSpans,
    rendered: Rendered,
    regions: list[Region],
    *,
    special_ids: frozenset[int],
    train_everything: bool = False,
) -> np.ndarray:
    """Labels for one tokenized rendering. `spans` says where characters land among its tokens; `special_ids` are
    the tokens that can end a turn. A token is trained when it holds any character of a region, so a character split
    over several byte tokens is trained whole."""
    if train_everything:
        return input_ids.astype(np.int32, copy=True)
    trained = np.zeros(len(input_ids), dtype=bool)
    span_starts = sorted({s.start for s in rendered.spans})
    # The next piece's start after each region bounds the search for its end-of-turn token.
    nexts = [span_starts[k] if (k := bisect.bisect_left(span_starts, r.end)) < len(span_starts) else len(rendered.text)
             for r in regions]
    held, afters = spans.locate([r.start for r in regions] + nexts, [r.end for r in regions])
    for region, first, after, limit in zip(regions, held, afters, held[len(regions):]):
        if first >= after:
            continue  # the region holds no token (empty text)
        trained[first:after] = True
        if region.eot:
            _mark_end_of_turn(trained, input_ids, after, limit, special_ids)
    return np.where(trained, input_ids, IGNORE_INDEX).astype(np.int32)


def _mark_end_of_turn(trained: np.ndarray, input_ids: np.ndarray, start: int, limit: int, special_ids) -> None:
    """Train the first special token in [start, limit) and the template text before it (`</tool_call>`...).
    The end-of-turn is almost always the very next token, so a short scan beats a vectorised search here."""
    for position in range(start, limit):
        if input_ids[position] in special_ids:
            trained[start : position + 1] = True
            return


class ChooseTrained(RowStep):
    """The step that chooses the messages whose text the mask takes from the rendering, so that the renderer must
    find them verbatim: under the default preset, the trained messages (`trained_messages`); none otherwise (a preset
    labels from tokens, and `train_on_prompt` trains everything)."""

    name = "choose_trained"

    def __init__(self, policy: MaskConfig):
        self.policy = policy

    def of(self, conversation: Conversation) -> frozenset[int]:
        if self.policy.preset != "default" or self.policy.train_on_prompt:
            return frozenset()
        return frozenset(trained_messages(conversation, self.policy))

    def row(self, row: Row, tally: Tally) -> Row:
        row.trained = self.of(row.conversation)
        return row


class Label(RowStep):
    """A step that sets each row's labels from its rendering and tokens: the default mask, or a preset's."""

    def row(self, row: Row, tally: Tally) -> Row:
        row.labels = self.labels(row.rendered, row.encoded, row.trained)
        return row

    @abstractmethod
    def labels(self, rendered: Rendered, encoded: Encoded, trained: frozenset[int]) -> np.ndarray:
        """Labels for one tokenized rendering; `trained`: the messages `ChooseTrained` chose."""


class Mask(Label):
    """The default mask: the chosen messages' text and end-of-turn tokens trained (`message_regions`), or every
    token under `train_on_prompt`. `special_ids`: the tokens that can end a turn."""

    name = "mask"

    def __init__(self, policy: MaskConfig, *, special_ids: frozenset[int]):
        self.policy = policy
        self.special_ids = special_ids

    def labels(self, rendered: Rendered, encoded: Encoded, trained: frozenset[int]) -> np.ndarray:
        if self.policy.train_on_prompt:
            return token_labels(encoded.input_ids, encoded.spans, rendered, [], special_ids=self.special_ids,
                                train_everything=True)
        regions = message_regions(rendered, trained, train_eot=self.policy.train_end_of_turn)
        return token_labels(encoded.input_ids, encoded.spans, rendered, regions, special_ids=self.special_ids)


class AppendEos(RowStep):
    """`mask.append_eos`: the tokenizer's eos appended to every sample, and trained."""

    name = "append_eos"

    def __init__(self, eos_id: int):
        self.eos_id = eos_id

    def row(self, row: Row, tally: Tally) -> Row:
        row.input_ids = np.append(row.input_ids, self.eos_id)
        row.labels = np.append(row.labels, self.eos_id).astype(np.int32)
        return row
