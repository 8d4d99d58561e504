"""Input formats as pydantic models, and `SourceConfig`, the options of the ingest stage.

The record models (`GlmRecord`, `OpenAIRecord`, `ShareGPTRecord`, `AlpacaRecord`) describe data written by other
tools, so they differ from our config models in one way: unknown keys are ignored (`extra='ignore'`), because real
files carry extras (`metainfo`, `images: []`, `chosen`). They are strict (no `1` -> `"1"` or `"yes"` -> `True`
coercion), frozen, and are the type layer of the adapters: a `ValidationError` from them becomes a `wrong_type` or
`missing_field` row error whose field is pydantic's `loc` (`messages.3.content`). Meaning (roles, tool calls, loss
flags) is decided in `pipeline/stages/adapt.py`, which also refuses media keys (`images`, `image`, `videos`, `audios`) on any
record: the pipeline is text-only. `SourceConfig` is a config model: `extra='forbid'`, frozen.

GLM-4 and OpenAI records share one message model: real files mix the two conventions (OpenAI `tool_calls` next to
GLM `observation` turns, LLaMA-Factory content parts), and a file's format is detected from its first record only.
"""
from __future__ import annotations

import codecs
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Format = Literal["auto", "glm", "openai", "sharegpt", "alpaca", "csv"]
CsvRole = Literal["system", "user", "assistant"]
DEFAULT_CSV_MAP: dict[str, str] = {"system": "system", "user": "question", "assistant": "chosen"}
CSV_KEYS = ("csv_map", "csv_messages_column")  # the SourceConfig keys only CSV input uses

_RECORD = ConfigDict(extra="ignore", frozen=True, strict=True)


class _Source(BaseModel):
    model_config = _RECORD


# --- content parts and tool calls ----------------------------------------------------------------------------------
class ContentPart(_Source):
    """One part of a list content: `{"type": "text", "text"|"value": ...}` (OpenAI | LLaMA-Factory v1), `reasoning`,
    `tool_call` (value: JSON `{"name", "arguments"}`), or a media part (`image_url`, ...), which is refused."""

    type: str
    text: str | None = None
    value: Any = None


class FunctionSpec(_Source):
    """`function` of an OpenAI tool call, or a legacy `function_call`; `arguments` is a JSON string or a JSON value."""

    name: str
    arguments: Any = None


class OpenAIToolCall(_Source):
    id: str | None = None
    type: str | None = None
    function: FunctionSpec


class MessageMetadata(_Source):
    """functionary's per-message metadata; `masked: true` means never train this message."""

    masked: bool | None = None


class ChatMessage(_Source):
    """One turn of a GLM-4 / ChatGLM3 / OpenAI `messages` list (role spellings are checked by the adapter)."""

    role: str
    content: str | list[ContentPart] | None = None
    reasoning_content: str | None = None
    name: str | None = None
    tool_calls: list[OpenAIToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionSpec | None = None
    tools: list[Any] | str | None = Field(default=None, description="GLM-4: the tool list, on the system message")
    parameters: Any = Field(default=None, description="ChatGLM3 `tool` step: the call's arguments")
    observation: Any = Field(default=None, description="ChatGLM3 `tool` step: the tool's result")
    loss: bool | None = None
    loss_weight: int | float | None = None
    metadata: MessageMetadata | None = None
    image: Any = Field(default=None, description="GLM-4V image path: refused (text only)")


RecordId = str | int | None


class GlmRecord(_Source):
    """GLM-4 fine-tune format (`messages`, tools on the system message) or ChatGLM3 (`conversations`, top-level
    `tools`, per-message `loss`, `tool` steps with `name`/`parameters`/`observation`)."""

    id: RecordId = None
    messages: list[ChatMessage] | None = None
    conversations: list[ChatMessage] | None = None
    tools: list[Any] | str | None = None


class OpenAIRecord(_Source):
    """OpenAI chat format: `messages` with `tool_calls` / role `tool`, or legacy `functions` + `function_call` +
    role `function`; `tools` as a list or as a JSON string (LLaMA-Factory)."""

    id: RecordId = None
    messages: list[ChatMessage]
    tools: list[Any] | str | None = None
    functions: list[Any] | None = None


class ShareGPTTurn(_Source):
    """`{"from": ..., "value": ...}`; `from` is human/gpt/system/function_call/observation (or OpenAI role names)."""

    from_: str = Field(alias="from")
    value: str | None = None
    loss: bool | None = None
    loss_weight: int | float | None = None


Pair = dict[str, str | None]


class ShareGPTRecord(_Source):
    """ShareGPT: `conversations` of turns, optional `system` and `tools` (list or JSON string); or the Firefly pair
    list `conversation: [{"human": ..., "assistant": ...}]`."""

    id: RecordId = None
    conversations: list[ShareGPTTurn] | None = None
    conversation: list[Pair] | None = None
    system: str | None = None
    tools: list[Any] | str | None = None


class AlpacaRecord(_Source):
    """alpaca `instruction`/`input`/`output`, torchtune's `response`, ms-swift's `query`/`response`; optional `system`
    and `history` as `[[query, response], ...]`."""

    id: RecordId = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    query: str | None = None
    response: str | None = None
    system: str | None = None
    history: list[Annotated[list[str], Field(min_length=2, max_length=2)]] | None = None


# --- ingest options -------------------------------------------------------------------------------------------------
class SourceConfig(BaseModel):
    """How to read and map the input files. Defaults only here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Format = Field(default="auto", description="auto: from the extension and the first record of each file")
    csv_map: dict[CsvRole, str] = Field(
        default=DEFAULT_CSV_MAP,
        description="canonical role -> CSV column; system is optional in the header, user may be left out",
    )
    csv_messages_column: str | None = Field(default=None, description="a CSV column holding a `messages` JSON string")
    encoding: str = Field(default="utf-8", description="text encoding of every input; must be ASCII-compatible")
    alpaca_input_separator: str = Field(default="\n\n", description="joins alpaca `instruction` and a non-empty `input`")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, exclude=True,
        description="fsspec options for remote inputs (s3://, gs://), e.g. {endpoint_url: ..., key: ..., secret: ...}; "
                    "never written to the manifest, since they may hold credentials",
    )

    @model_validator(mode="after")
    def _check(self) -> "SourceConfig":
        problems = []
        try:
            info = codecs.lookup(self.encoding)
        except LookupError:
            problems.append(f"encoding: unknown encoding {self.encoding!r}")
        else:
            if info.encode("\n{[,\"")[0] != b"\n{[,\"":
                problems.append(f"encoding: {self.encoding!r} is not ASCII-compatible (lines are split on bytes)")
        if "assistant" not in self.csv_map:
            problems.append("csv_map: needs an `assistant` column")
        if "csv_map" in self.model_fields_set and self.csv_messages_column is not None:
            problems.append("csv_map and csv_messages_column: give one or the other, not both")
        if self.format not in ("auto", "csv"):
            for name in CSV_KEYS:
                if name in self.model_fields_set:
                    problems.append(f"{name}: only used with format csv or auto, not format {self.format}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def csv_map_given(self) -> bool:
        """Whether the column map was set explicitly (auto detection then reads CSV with it, never as alpaca)."""
        return "csv_map" in self.model_fields_set
