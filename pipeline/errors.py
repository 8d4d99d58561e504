"""Typed errors and the reasons a row is not written. A `RowError` rejects or filters one row and goes to
rejects.jsonl (or, as a remark on a written row, to warnings.jsonl); the other errors stop the run.

Library code raises these and never imports click: the CLI maps them to exit codes. `PipelineError` and
`ConfigError` are defined in `schemas.errors` (config loading raises them, and `schemas` imports nothing from here)
and re-exported, so every caller imports errors from this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import Enum, StrEnum
from typing import Any

from schemas.errors import ConfigError, PipelineError
from schemas.records import Conversation

__all__ = ["ConfigError", "InputError", "Kind", "OptionError", "OutputError", "PipelineError", "Reason", "RowError"]


class Kind(Enum):
    """What a reason does to its row: bad data is rejected, good data dropped by policy is filtered, and a row
    written (or, for `validate`, accepted) with a remark is noted."""

    REJECTED = "rejected"
    FILTERED = "filtered"
    NOTED = "noted"


class Reason(StrEnum):
    """Every reason code a row is rejected, filtered or noted for, with its kind and one-line meaning. A member is
    its code (a `str`), so it is written to JSON and counted as the code itself. The README's reason tables list the
    same codes (a test checks)."""

    kind: Kind
    meaning: str

    def __new__(cls, code: str, kind: Kind, meaning: str) -> "Reason":
        member = str.__new__(cls, code)
        member._value_ = code
        member.kind, member.meaning = kind, meaning
        return member

    # ingest: the line is not a record
    INVALID_JSON = ("invalid_json", Kind.REJECTED, "a record's JSON is not valid, nested too deep or holds an integer "
                    "past Python's digit limit")
    INVALID_CSV = ("invalid_csv", Kind.REJECTED, "bad CSV quoting, or a row with another number of fields than the "
                   "header")
    # adapt: the record does not map to a conversation
    WRONG_TYPE = "wrong_type", Kind.REJECTED, "a field has the wrong JSON type"
    MISSING_FIELD = "missing_field", Kind.REJECTED, "a required field is missing (messages, output, ...)"
    UNKNOWN_ROLE = "unknown_role", Kind.REJECTED, "a role / from value no format defines"
    INVALID_TOOLS = "invalid_tools", Kind.REJECTED, "tool definitions are not a list of tool objects, or given twice"
    INVALID_TOOL_CALL = ("invalid_tool_call", Kind.REJECTED, "a tool call without a name, or a function_call turn "
                         "that is not a JSON call")
    INVALID_TOOL_ARGUMENTS = "invalid_tool_arguments", Kind.REJECTED, "tool-call arguments are not a JSON object"
    UNSUPPORTED_CONTENT = "unsupported_content", Kind.REJECTED, "images or other non-text content"
    INVALID_LOSS_WEIGHT = "invalid_loss_weight", Kind.REJECTED, "loss_weight not 0 or 1, or loss flags that disagree"
    # validation rules
    EMPTY_CONVERSATION = "empty_conversation", Kind.REJECTED, "no messages at all"
    NO_ASSISTANT = "no_assistant", Kind.REJECTED, "no assistant message: nothing to train on"
    EMPTY_ASSISTANT = ("empty_assistant", Kind.REJECTED, "an assistant message with no content, no reasoning and no "
                       "tool calls")
    NO_FINAL_ASSISTANT = "no_final_assistant", Kind.REJECTED, "the last message is not the assistant's"
    STARTS_WITH_ASSISTANT = "starts_with_assistant", Kind.NOTED, "no user turn before the first assistant turn"
    CONSECUTIVE_SAME_ROLE = "consecutive_same_role", Kind.NOTED, "two turns of the same role in a row"
    ENDS_WITH_TOOL_CALL = ("ends_with_tool_call", Kind.NOTED, "the last assistant message is a tool call with no "
                           "result after it")
    EMPTY_USER_TURN = "empty_user_turn", Kind.NOTED, "a user message with empty content"
    SYSTEM_NOT_FIRST = "system_not_first", Kind.NOTED, "a system message after the first turn"
    # content the chat template is given, and rendering
    SPECIAL_TOKEN_IN_CONTENT = ("special_token_in_content", Kind.REJECTED, "a string the template is given holds a "
                                "control token of the tokenizer as text")
    ADDED_TOKEN_IN_TEXT = ("added_token_in_text", Kind.NOTED, "a string the template is given holds an added token "
                           "that is not a control token (tokenized as one id)")
    RESERVED_CHARACTER = ("reserved_character", Kind.REJECTED, "a string the template is given holds a character "
                          "the pipeline reserves (U+F0000-U+F0002)")
    INJECTED_TEXT = ("injected_text", Kind.NOTED, "the chat template wrote text the data does not hold (a default "
                     "system prompt, a date line, tool instructions)")
    TEMPLATE_ERROR = ("template_error", Kind.REJECTED, "the chat template refused the row, changed trained text or "
                      "went over a rendering limit")
    # presets
    GLM4_PER_MESSAGE_DIFFERS = ("glm4_per_message_differs", Kind.NOTED, "GLM-4's per-message tokens differ from the "
                                "whole-conversation rendering")
    # truncation
    TRUNCATED = "truncated", Kind.NOTED, "the sample was cut to the length limit"
    TURNS_DROPPED = "turns_dropped", Kind.NOTED, "the oldest rounds were dropped to fit the length limit"
    TOO_LONG = "too_long", Kind.FILTERED, "longer than the length limit (truncation strategy drop)"
    TOO_LONG_AFTER_DROPPING_TURNS = ("too_long_after_dropping_turns", Kind.FILTERED, "still longer than the limit "
                                     "with only its last round left")
    NO_TRAINED_TOKENS = "no_trained_tokens", Kind.FILTERED, "no token is trained under the mask policy"
    NO_TRAINED_TOKENS_AFTER_TRUNCATION = ("no_trained_tokens_after_truncation", Kind.FILTERED, "no trained token is "
                                          "left after the cut to the length limit")


class InputError(PipelineError):
    """An input file cannot be read at all (missing, undecodable container, unknown format)."""


class OptionError(PipelineError):
    """An option asks for what the data does not hold (a split, a row index, a row id): a usage error."""


class OutputError(PipelineError):
    """An output path cannot be used: it holds files this tool did not write, overlaps an input, or cannot be
    created. Nothing has been removed or overwritten when this is raised."""


@dataclass
class RowError(Exception):
    """One input row that is not written, or a remark on one that is. Reads `file:line: field: message`."""

    source: str
    row: int
    reason: Reason
    message: str
    field: str = ""
    raw: Any = None
    id: str | None = None
    extra: dict[str, Any] = dataclass_field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    @classmethod
    def of(cls, conversation: Conversation, reason: Reason, field: str, message: str) -> "RowError":
        """The error of an adapted conversation, which carries its provenance and is kept whole as the row."""
        return cls(source=conversation.source, row=conversation.row, id=conversation.id, reason=reason, field=field,
                   message=message, raw=conversation.model_dump(mode="json", exclude_none=True))

    def __str__(self) -> str:
        where = f"{self.source}:{self.row}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def __reduce__(self):
        """Pickle by fields (workers send rejected rows back), not by the exception's message argument."""
        return RowError, (self.source, self.row, self.reason, self.message, self.field, self.raw, self.id, self.extra)

    def to_json(self) -> dict[str, Any]:
        """The rejects.jsonl line for this row."""
        return {
            "source": self.source,
            "row": self.row,
            "id": self.id,
            "field": self.field,
            "reason": self.reason,
            "message": self.message,
            "raw": self.raw,
            **self.extra,
        }
