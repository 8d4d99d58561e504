"""The canonical conversation record every input format is adapted to.

Every later stage (render, mask, truncate, shards) reads only these models, so a new input format needs only an
adapter, never a change downstream.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
"""Canonical roles. GLM-4 `observation`, OpenAI `tool` and legacy `function` results are all `tool`."""


class ToolCall(BaseModel):
    """One function call made by the assistant; `arguments` is the parsed JSON value, kept exactly as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    arguments: Any = Field(default_factory=dict)
    id: str | None = None


class Message(BaseModel):
    """One turn. `loss` overrides the role policy for this message (True: train it, False: never train it).
    A tool result may name the function (`name`) and the call it answers (`tool_call_id`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str = ""
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    loss: bool | None = None


class Conversation(BaseModel):
    """A validated conversation with its provenance: `source` file and 1-based `row` (JSONL line, CSV row, record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: str
    row: int = Field(ge=1)
    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] | None = None
