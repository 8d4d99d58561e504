"""What the strings a chat template is given may hold: checks that need the tokenizer, so `preprocess` makes them
and `validate` does not.

A reserved character (the renderer's span markers) would break the spans; a control token typed as text would be
tokenized as one (a forged turn, role or tool call): either rejects the row. An added token that is not a control
token (Qwen's `<|fim_prefix|>`) forges nothing of the chat format, but is tokenized as one id, which the user should
know of: the row is kept with a remark.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.errors import Reason, RowError
from pipeline.stages.render import holds_reserved_characters
from pipeline.stages.row import Row
from pipeline.stages.text_fields import Where, field_path, template_strings
from pipeline.step import RowStep, Tally
from pipeline.tokenizer import added_token_searches
from schemas.records import Conversation


class ContentCheck(RowStep):
    """The content step. Built once with the tokenizer and the chat template, which decide the token classes
    (`added_token_searches`); `allow_special_tokens` keeps rows with control tokens."""

    name = "content"

    def __init__(self, tokenizer, template: str, *, allow_special_tokens: bool):
        control, other = added_token_searches(tokenizer, template)
        self.control_tokens = None if allow_special_tokens else control
        self.other_added_tokens = other

    def row(self, row: Row, tally: Tally) -> Row | None:
        conversation = row.conversation
        texts = "\0".join(text for _, text in template_strings(conversation))  # NUL: in no token, no reserved character
        problem = self.problem(conversation, texts)
        if problem is not None:
            tally.drop(problem)
            return None
        if remark := self.added_token_remark(conversation, texts):
            row.remarks.append(remark)
        return row

    def problem(self, conversation: Conversation, texts: str) -> RowError | None:
        """Why the strings the template is given (`template_strings`, joined as `texts`) make the row unusable, if
        they do. The joined text is searched once; only a row with a hit is searched field by field, to name the
        field."""
        if holds_reserved_characters(texts):
            where, _ = _first_field(conversation, holds_reserved_characters)
            message = "text holds a private-use character (U+F0000-U+F0002) that the pipeline reserves"
            return RowError.of(conversation, Reason.RESERVED_CHARACTER, field_path(where), message)
        if self.control_tokens is None or self.control_tokens.search(texts) is None:
            return None
        where, found = _first_field(conversation, self.control_tokens.search)
        return RowError.of(
            conversation,
            Reason.SPECIAL_TOKEN_IN_CONTENT,
            field_path(where),
            f"contains the special token {found.group(0)!r} as text (it would be tokenized as a control "
            "token; pass --allow-special-tokens to keep such rows)",
        )

    def added_token_remark(self, conversation: Conversation, texts: str) -> RowError | None:
        """A remark listing, by field, the added tokens that are not control tokens typed in the strings the
        template is given (joined as `texts`)."""
        if self.other_added_tokens is None or self.other_added_tokens.search(texts) is None:
            return None
        found = {field_path(where): tokens for where, text in template_strings(conversation)
                 if (tokens := self.other_added_tokens.findall(text))}
        if not found:  # a hit across the joined texts only: no field holds a token
            return None
        listed = "; ".join(f"{path}: {', '.join(map(repr, tokens))}" for path, tokens in found.items())
        remark = RowError.of(conversation, Reason.ADDED_TOKEN_IN_TEXT, next(iter(found)),
                             f"holds added tokens as text, each tokenized as one id (the row is kept): {listed}")
        remark.extra["added_tokens"] = found
        return remark


def _first_field(conversation: Conversation, search: Callable[[str], Any]) -> tuple[Where, Any]:
    """The first string the template is given in which `search` finds something, and what it found. Called only
    after the joined strings gave a hit that no single string can hide (a reserved character, a control token:
    neither holds the NUL that joins them)."""
    return next((where, found) for where, text in template_strings(conversation) if (found := search(text)))
