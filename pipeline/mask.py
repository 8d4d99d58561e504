"""Character spans to token labels, vectorised with numpy.

A token is trained when its characters overlap a trained region (the rule of `return_assistant_tokens_mask`). The
trained region of a message runs from its first trainable piece to its last; its end-of-turn is the first special
token after that, provided it comes before the next message's text. Labels are unshifted: `labels[i] = input_ids[i]`
where trained, else -100 (the model shifts).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.render import Rendered
from schemas.config import MaskConfig
from schemas.records import Conversation

IGNORE_INDEX = -100


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


def message_regions(rendered: Rendered, messages: list[int], *, train_eot: bool) -> list[Region]:
    """The hull of each chosen message's spans, in rendered-text characters."""
    hulls: dict[int, list[int]] = {}
    for span in rendered.spans:
        if span.message in messages:
            lo, hi = hulls.setdefault(span.message, [span.start, span.end])
            hulls[span.message] = [min(lo, span.start), max(hi, span.end)]
    return [Region(i, lo, hi, train_eot) for i, (lo, hi) in sorted(hulls.items())]


def token_labels(
    input_ids: np.ndarray,
    offsets: np.ndarray,
    rendered: Rendered,
    regions: list[Region],
    *,
    special_ids: np.ndarray,
    train_everything: bool = False,
) -> np.ndarray:
    """Labels for one tokenized rendering. `offsets` is (n, 2) character offsets from the fast tokenizer."""
    if train_everything:
        return input_ids.astype(np.int32, copy=True)
    n_chars = len(rendered.text)
    trained_chars = np.zeros(n_chars + 1, dtype=np.int32)
    for region in regions:
        trained_chars[region.start] += 1
        trained_chars[region.end] -= 1
    inside = np.cumsum(trained_chars[:-1]) > 0
    prefix = np.concatenate(([0], np.cumsum(inside, dtype=np.int64)))
    starts = np.minimum(offsets[:, 0], n_chars)
    ends = np.minimum(offsets[:, 1], n_chars)
    trained = (prefix[ends] - prefix[starts]) > 0
    if any(r.eot for r in regions):
        _mark_end_of_turns(trained, input_ids, starts, rendered, regions, special_ids)
    return np.where(trained, input_ids, IGNORE_INDEX).astype(np.int32)


def _mark_end_of_turns(trained, input_ids, starts, rendered: Rendered, regions: list[Region], special_ids) -> None:
    """Train each region's end-of-turn: the first special token after it, and the template text up to it."""
    span_starts = np.array(sorted({s.start for s in rendered.spans}), dtype=np.int64)
    is_special = np.isin(input_ids, special_ids)
    for region in regions:
        if not region.eot:
            continue
        first = int(np.searchsorted(starts, region.end, side="left"))
        later = span_starts[span_starts >= region.end]
        limit = int(np.searchsorted(starts, later[0], side="left")) if len(later) else len(input_ids)
        hits = np.flatnonzero(is_special[first:limit])
        if len(hits):
            trained[first : first + int(hits[0]) + 1] = True
