"""Length limits. Strategies: cut the tail (GLM-4's behaviour), drop the sample, or drop whole oldest turns.

A sample left with no trained token is dropped with a reason: it would give a NaN or zero loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.shards.format import IGNORE_INDEX
from schemas.records import Conversation


@dataclass(frozen=True)
class Cut:
    """The outcome for one sample: its (possibly shortened) arrays, or a filter reason; `truncated` if cut."""

    input_ids: np.ndarray | None
    labels: np.ndarray | None
    reason: str | None = None
    truncated: bool = False


def apply_limit(input_ids: np.ndarray, labels: np.ndarray, *, limit: int | None, strategy: str) -> Cut:
    """Cut or drop one tokenized sample. `drop_oldest_turns` is handled before, on the conversation itself."""
    truncated = False
    if limit is not None and len(input_ids) > limit:
        if strategy == "drop":
            return Cut(None, None, reason="too_long")
        if strategy == "drop_oldest_turns":
            return Cut(None, None, reason="too_long_after_dropping_turns")
        input_ids, labels, truncated = input_ids[:limit], labels[:limit], True
    if not np.any(labels != IGNORE_INDEX):
        return Cut(None, None, reason="no_trained_tokens_after_truncation" if truncated else "no_trained_tokens")
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
