"""Format detection and one adapter per input format: a raw record (parsed JSON, or a CSV row of strings) ->
`schemas.records.Conversation`, or the `RowError` that says why not. JSON text inside a record (a CSV messages cell,
tools or tool-call arguments given as a string) is read by the same rules as the record (`pipeline.stages.json_text`).

Each adapter validates the record with its model from `schemas.sources` (types; errors carry pydantic's `loc` as the
field) and then maps meaning: role spellings, tool definitions, tool calls, content parts, loss flags. The rules of
`pipeline.stages.validate` run last. Nothing here reads files.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from pipeline.errors import Reason, RowError
from pipeline.stages import json_text
from pipeline.stages.row import Row
from pipeline.stages.validate import check_conversation
from pipeline.step import RowStep, Tally
from schemas.records import Conversation, Message, ToolCall
from schemas.sources import (
    AlpacaRecord,
    ChatMessage,
    ContentPart,
    FunctionSpec,
    GlmRecord,
    MessageMetadata,
    OpenAIRecord,
    ShareGPTRecord,
    SourceConfig,
)

ROLES = {
    "system": "system", "developer": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant",
    "tool": "tool", "observation": "tool", "function": "tool",
}
"""Role spellings of every format -> canonical role. `function_call` (a ShareGPT turn holding a JSON call) is not a
role: it becomes `tool_calls` on an assistant message."""
ALPACA_KEYS = {"instruction", "output", "query", "response"}
MEDIA_KEYS = ("images", "image", "videos", "audios")
TEXT_PARTS = {"text"}
REASONING_PARTS = {"reasoning", "thinking"}


class Reject(Exception):
    """Raised inside an adapter; `to_conversation` turns it into a `RowError` with the record's provenance."""

    def __init__(self, reason: Reason, field: str, message: str):
        super().__init__(message)
        self.reason, self.field, self.message = reason, field, message


# --- provenance -----------------------------------------------------------------------------------------------------
def record_id(data: Any, *, source: str, row: int) -> str:
    """The record's own `id` (string or integer) if it has one, else sha256(basename, row, content)[:16]."""
    own = data.get("id") if isinstance(data, dict) else None
    if isinstance(own, str) and own or isinstance(own, int) and not isinstance(own, bool):
        return str(own)
    base = source.replace("\\", "/").rsplit("/", 1)[-1]
    return hashlib.sha256(f"{base}\0{row}\0".encode() + _canonical_json(data)).hexdigest()[:16]


def _canonical_json(data: Any) -> bytes:
    """Compact JSON with sorted keys. orjson, except for what it refuses (integers over 64 bits, non-string keys)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=str)
    except orjson.JSONEncodeError:
        return json.dumps(data, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":")).encode(
            "utf-8", "surrogatepass")


# --- detection ------------------------------------------------------------------------------------------------------
def as_record(data: Any) -> Any:
    """A bare array of message objects (a JSON line `[{"role": "user", ...}, ...]`, as some public data is written)
    is the `messages` of a record (`conversations` for ShareGPT `from`/`value` turns); anything else is the record
    itself."""
    if isinstance(data, list) and data and all(isinstance(turn, dict) for turn in data):
        return {"conversations" if "from" in data[0] or "value" in data[0] else "messages": data}
    return data


def detect_record_format(record: Any) -> str | None:
    """glm, openai, sharegpt or alpaca from one record's keys, or None when it matches none of them.

    `messages`/`conversations` of `from`/`value` turns: sharegpt. `conversations` of role turns (ChatGLM3), or
    `messages` with an `observation` turn or `tools` on a message (GLM-4): glm. Other `messages`: openai.
    `conversation` (pair list): sharegpt. `instruction`/`output`/`query`/`response`: alpaca. A bare array of
    messages is read as its `messages` (`as_record`).
    """
    record = as_record(record)
    if not isinstance(record, dict):
        return None
    if "messages" in record or "conversations" in record:
        turns = record.get("messages", record.get("conversations"))
        turns = [t for t in turns if isinstance(t, dict)] if isinstance(turns, list) else []
        if turns and ("from" in turns[0] or "value" in turns[0]):
            return "sharegpt"
        if "messages" not in record:
            return "glm"
        if any(t.get("role") == "observation" or "tools" in t for t in turns):
            return "glm"
        return "openai"
    if "conversation" in record:
        return "sharegpt"
    if record.keys() & ALPACA_KEYS:
        return "alpaca"
    return None


# --- pieces shared by the adapters ----------------------------------------------------------------------------------
def _json(text: str, reason: Reason, field: str, what: str) -> Any:
    try:
        return json_text.loads(text)
    except json_text.JsonProblem as problem:
        raise Reject(reason, field, f"{what}: {problem}: {text[:80]!r}") from None


def _arguments(value: Any, field: str) -> dict[str, Any]:
    """Tool-call arguments: a JSON object, or a string holding one ('' and absent mean no arguments)."""
    if value is None or isinstance(value, str) and not value.strip():
        return {}
    if isinstance(value, str):
        value = _json(value, Reason.INVALID_TOOL_ARGUMENTS, field, "tool-call arguments")
    if not isinstance(value, dict):
        raise Reject(Reason.INVALID_TOOL_ARGUMENTS, field, f"tool-call arguments must be a JSON object, got {type(value).__name__}")
    return value


def _call(name: Any, arguments: Any, field: str, call_id: str | None = None) -> ToolCall:
    if not isinstance(name, str) or not name.strip():
        raise Reject(Reason.INVALID_TOOL_CALL, field, f"a tool call needs a non-empty string `name`, got {name!r}")
    return ToolCall(name=name, arguments=_arguments(arguments, f"{field}.arguments"), id=call_id)


def _json_calls(value: Any, field: str) -> list[ToolCall]:
    """GLM/ShareGPT-style call(s): `{"name": ..., "arguments": ...}` or a list of them, as JSON text or parsed."""
    if isinstance(value, str):
        value = _json(value, Reason.INVALID_TOOL_CALL, field, "a tool call")
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, dict) for c in calls):
        raise Reject(Reason.INVALID_TOOL_CALL, field, 'a tool call must be {"name": ..., "arguments": ...} or a list of them')
    return [_call(c.get("name"), c.get("arguments"), field) for c in calls]


def parse_tools(value: Any, field: str) -> tuple[dict[str, Any], ...] | None:
    """Tool definitions, kept exactly as written: a list of objects, or a JSON string of one (`"[]"`: no tools).

    Malformed: not a list, an item that is not an object, an OpenAI `type: function` item without `function.name`, or
    an item without `type` and without `name`. Other types (`code_interpreter`) are kept as they are.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        value = _json(value, Reason.INVALID_TOOLS, field, "tools")
    if not isinstance(value, list):
        raise Reject(Reason.INVALID_TOOLS, field, f"tools must be a list, got {type(value).__name__}")
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise Reject(Reason.INVALID_TOOLS, f"{field}.{i}", f"a tool must be an object, got {type(tool).__name__}")
        if tool.get("type") == "function":
            fn = tool.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise Reject(Reason.INVALID_TOOLS, f"{field}.{i}.function", "a function tool needs `function.name`")
        elif "type" not in tool and not (isinstance(tool.get("name"), str) and tool["name"]):
            raise Reject(Reason.INVALID_TOOLS, f"{field}.{i}", "a tool needs a `type` or a `name`")
    return tuple(value) or None


def _loss(loss: bool | None, weight: float | None, metadata: MessageMetadata | None, field: str) -> bool | None:
    """`loss` (bool), `loss_weight` (0 or 1) and functionary's `metadata.masked` -> Message.loss; they must agree."""
    if weight is None and metadata is None:
        return loss
    said = [] if loss is None else [loss]
    if weight is not None:
        if weight not in (0, 1):
            raise Reject(Reason.INVALID_LOSS_WEIGHT, f"{field}.loss_weight", f"loss_weight must be 0 or 1, got {weight}")
        said.append(weight == 1)
    if metadata is not None and metadata.masked:
        said.append(False)
    if len(set(said)) > 1:
        raise Reject(Reason.INVALID_LOSS_WEIGHT, field, "loss, loss_weight and metadata.masked disagree")
    return said[0] if said else None


def _content(value: str | list[ContentPart] | None, field: str) -> tuple[str, str | None, list[ToolCall]]:
    """(text, reasoning, tool calls) of a content: a string, null/absent (''), or a list of typed parts.

    Text parts are concatenated with nothing between them (as chat templates do); `reasoning`/`thinking` parts go to
    reasoning_content, `tool_call` parts to tool_calls; any other part (images, audio) is `unsupported_content`.
    """
    if value is None:
        return "", None, []
    if isinstance(value, str):
        return value, None, []
    texts, reasoning, calls = [], [], []
    for i, part in enumerate(value):
        where = f"{field}.{i}"
        body = part.text if part.text is not None else part.value
        if part.type in TEXT_PARTS or part.type in REASONING_PARTS:
            if not isinstance(body, str):
                raise Reject(Reason.WRONG_TYPE, f"{where}.value", f"a {part.type} part needs a string, got {type(body).__name__}")
            (texts if part.type in TEXT_PARTS else reasoning).append(body)
        elif part.type == "tool_call":
            calls.extend(_json_calls(body, f"{where}.value"))
        else:
            raise Reject(Reason.UNSUPPORTED_CONTENT, f"{where}.type", f"content part of type {part.type!r} is not supported (text only)")
    return "".join(texts), "".join(reasoning) if reasoning else None, calls


def _add_call(out: list[Message], calls: list[ToolCall], loss: bool | None) -> None:
    """A call turn joins the assistant message just before it when that one has no calls yet (and the same loss);
    otherwise it is an assistant message of its own with empty content."""
    prev = out[-1] if out else None
    if prev is not None and prev.role == "assistant" and not prev.tool_calls and prev.loss == loss:
        out[-1] = prev.model_copy(update={"tool_calls": tuple(calls)})
    else:
        out.append(Message(role="assistant", content="", tool_calls=tuple(calls), loss=loss))


def _role(raw: str, field: str) -> str:
    role = ROLES.get(raw)
    if role is None:
        raise Reject(Reason.UNKNOWN_ROLE, field, f"unknown role {raw!r} (known: {', '.join(sorted(ROLES))}, function_call)")
    return role


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


_ROLE_AND_TEXT = frozenset({"role", "content"})


def _chat_messages(messages: list[ChatMessage], field: str) -> tuple[list[Message], tuple[dict, ...] | None, bool]:
    """GLM-4 / ChatGLM3 / OpenAI messages -> (messages, tools found on a message, whether a message had `tools`)."""
    out: list[Message] = []
    tools, had_tools = None, False
    for i, m in enumerate(messages):
        if m.model_fields_set == _ROLE_AND_TEXT and type(m.content) is str and m.role in ROLES:
            out.append(Message(role=ROLES[m.role], content=m.content))  # the common turn: what the steps below give it
            continue
        at = f"{field}.{i}"
        if m.image is not None:
            raise Reject(Reason.UNSUPPORTED_CONTENT, f"{at}.image", "images are not supported (text only)")
        loss = _loss(m.loss, m.loss_weight, m.metadata, at)
        if m.tools is not None:
            if had_tools:
                raise Reject(Reason.INVALID_TOOLS, f"{at}.tools", "tools may be given on one message only")
            had_tools = True
            tools = parse_tools(m.tools, f"{at}.tools")
        if m.role == "function_call":
            _add_call(out, _json_calls(m.content, f"{at}.content"), loss)
            continue
        if m.role == "tool" and (m.parameters is not None or m.observation is not None):  # ChatGLM3 tool step
            args = m.parameters if m.parameters is not None else {}
            _add_call(out, [_call(m.name, args, at)], loss)
            out.append(Message(role="tool", content=_text(m.observation if m.observation is not None else ""), name=m.name))
            continue
        role = _role(m.role, f"{at}.role")
        text, reasoning, calls = _content(m.content, f"{at}.content")
        for j, tc in enumerate(m.tool_calls or []):
            calls.append(_call(tc.function.name, tc.function.arguments, f"{at}.tool_calls.{j}.function", tc.id))
        if m.function_call is not None:
            calls.append(_call(m.function_call.name, m.function_call.arguments, f"{at}.function_call"))
        if calls and role != "assistant":
            raise Reject(Reason.INVALID_TOOL_CALL, f"{at}.tool_calls", f"tool calls on a {m.role} message")
        out.append(Message(
            role=role, content=text, reasoning_content=m.reasoning_content if m.reasoning_content is not None else reasoning,
            tool_calls=tuple(calls) or None, name=m.name, tool_call_id=m.tool_call_id, loss=loss,
        ))
    return out, tools, had_tools


# --- adapters: raw dict -> (messages, tools) ------------------------------------------------------------------------
Adapted = tuple[list[Message], tuple[dict, ...] | None]


def adapt_glm(data: dict, source: SourceConfig) -> Adapted:
    rec = GlmRecord.model_validate(data)
    key = "messages" if rec.messages is not None else "conversations"
    turns = rec.messages if rec.messages is not None else rec.conversations
    if turns is None:
        raise Reject(Reason.MISSING_FIELD, "messages", "a GLM record needs `messages` (GLM-4) or `conversations` (ChatGLM3)")
    messages, on_message, had = _chat_messages(turns, key)
    top = parse_tools(rec.tools, "tools")
    if had and rec.tools is not None:
        raise Reject(Reason.INVALID_TOOLS, "tools", "tools given both on a message and at the top level")
    return messages, on_message if had else top


def adapt_openai(data: dict, source: SourceConfig) -> Adapted:
    rec = OpenAIRecord.model_validate(data)
    messages, on_message, had = _chat_messages(rec.messages, "messages")
    given = [(name, v) for name, v in (("tools", rec.tools), ("functions", rec.functions)) if v is not None]
    if len(given) + had > 1:
        raise Reject(Reason.INVALID_TOOLS, given[-1][0], "tools given in more than one place (tools, functions, a message)")
    return messages, (parse_tools(given[0][1], given[0][0]) if given else on_message)


def adapt_sharegpt(data: dict, source: SourceConfig) -> Adapted:
    rec = ShareGPTRecord.model_validate(data)
    out: list[Message] = []
    if rec.system and rec.system.strip():
        out.append(Message(role="system", content=rec.system))
    if rec.conversations is not None:
        for i, turn in enumerate(rec.conversations):
            at = f"conversations.{i}"
            loss = _loss(turn.loss, turn.loss_weight, None, at)
            if turn.from_ == "function_call":
                _add_call(out, _json_calls(turn.value, f"{at}.value"), loss)
                continue
            out.append(Message(role=_role(turn.from_, f"{at}.from"), content=turn.value or "", loss=loss))
    elif rec.conversation is not None:
        for i, pair in enumerate(rec.conversation):
            for key, value in pair.items():
                role = _role(key, f"conversation.{i}.{key}")
                if value is not None:
                    out.append(Message(role=role, content=value))
    else:
        raise Reject(Reason.MISSING_FIELD, "conversations", "a ShareGPT record needs `conversations` (or `conversation` pairs)")
    return out, parse_tools(rec.tools, "tools")


def adapt_alpaca(data: dict, source: SourceConfig) -> Adapted:
    rec = AlpacaRecord.model_validate(data)
    answer = rec.output if rec.output is not None else rec.response
    if answer is None:
        raise Reject(Reason.MISSING_FIELD, "output", "an alpaca record needs `output` (or `response`)")
    prompt = rec.instruction if rec.instruction is not None else (rec.query or "")
    if rec.input and rec.input.strip():
        prompt = f"{prompt}{source.alpaca_input_separator}{rec.input}" if prompt.strip() else rec.input
    out: list[Message] = []
    if rec.system and rec.system.strip():
        out.append(Message(role="system", content=rec.system))
    for query, reply in rec.history or []:
        out += [Message(role="user", content=query), Message(role="assistant", content=reply)]
    if prompt.strip():
        out.append(Message(role="user", content=prompt))
    out.append(Message(role="assistant", content=answer))
    return out, None


def adapt_csv(data: dict, source: SourceConfig) -> Adapted:
    """A CSV row: a `messages` JSON column (plus an optional `tools` column), or the column map; every cell a string."""
    column = source.csv_messages_column
    if column is not None:
        parsed = _json(data.get(column) or "", Reason.INVALID_JSON, column, f"column {column!r}")
        record = dict(parsed) if isinstance(parsed, dict) else {"messages": parsed}
        if data.get("tools", "").strip() and "tools" not in record:
            record["tools"] = data["tools"]
        try:
            return adapt_openai(record, source)
        except ValidationError as e:
            r = _from_validation(e)
        except Reject as e:
            r = e
        if r.field.startswith("messages"):  # point at the CSV column that holds the messages
            r.field = column + r.field[len("messages"):]
        raise r
    out: list[Message] = []
    for role in ("system", "user", "assistant"):
        col = source.csv_map.get(role)
        cell = data.get(col) if col is not None else None
        if cell is None or role != "assistant" and not cell.strip():
            continue  # an empty system or user cell means no such message; an empty answer is kept (and rejected)
        out.append(Message(role=role, content=cell))
    return out, None


ADAPTERS: dict[str, Callable[[dict, SourceConfig], Adapted]] = {
    "glm": adapt_glm, "openai": adapt_openai, "sharegpt": adapt_sharegpt, "alpaca": adapt_alpaca, "csv": adapt_csv,
}

_TYPE_TAGS = {"str", "int", "float", "bool", "none", *(m.__name__ for m in (ChatMessage, ContentPart, FunctionSpec, MessageMetadata))}
_TYPE_TAG_START = ("list[", "dict[", "tuple[", "function-", "tagged-union[")


def _loc(loc: tuple[Any, ...]) -> str:
    """pydantic's loc as a dotted path, without the union-member tags it adds (`str`, `list[ContentPart]`)."""
    parts = [str(p) for p in loc if isinstance(p, int) or not (p in _TYPE_TAGS or p.startswith(_TYPE_TAG_START))]
    return ".".join(parts)


def _from_validation(e: ValidationError) -> Reject:
    """The most specific error (the deepest loc; union members each report one) -> Reject with its field."""
    errors = e.errors(include_url=False)
    best = max(errors, key=lambda err: len(_loc(err["loc"])))
    field = _loc(best["loc"])
    if best["type"] == "missing":
        return Reject(Reason.MISSING_FIELD, field, "required field is missing")
    got = type(best.get("input")).__name__
    parts = field.split(".")
    if parts[0] in ("tools", "functions") or len(parts) > 2 and parts[2] == "tools":
        return Reject(Reason.INVALID_TOOLS, field, f"tools: {best['msg']} (got {got})")
    return Reject(Reason.WRONG_TYPE, field, f"{best['msg']} (got {got})")


def _media(data: dict) -> None:
    for key in MEDIA_KEYS:
        if data.get(key):
            raise Reject(Reason.UNSUPPORTED_CONTENT, key, f"`{key}` is not supported (text only)")


def to_conversation(record: Any, fmt: str, *, source: SourceConfig) -> Conversation | RowError:
    """Adapt one raw record (an `ingest.RawRecord`) with the adapter of `fmt`, then apply the validation rules."""
    data = as_record(record.data)
    rid = record_id(record.data, source=record.source, row=record.row)
    extra = {"line": record.line} if record.line is not None else {}

    def error(reason: Reason, field: str, message: str) -> RowError:
        return RowError(record.source, record.row, reason, message, field=field, raw=record.data, id=rid, extra=extra)

    if not isinstance(data, dict):
        return error(Reason.WRONG_TYPE, "", f"a record must be a JSON object, got {type(data).__name__}")
    try:
        _media(data)
        if "id" in data and not (isinstance(data["id"], (str, int)) and not isinstance(data["id"], bool)):
            raise Reject(Reason.WRONG_TYPE, "id", f"id must be a string or an integer, got {type(data['id']).__name__}")
        messages, tools = ADAPTERS[fmt](data, source)
    except Reject as r:
        return error(r.reason, r.field, r.message)
    except ValidationError as e:
        r = _from_validation(e)
        return error(r.reason, r.field, r.message)
    conv = Conversation(id=rid, source=record.source, row=record.row, messages=tuple(messages), tools=tools)
    problem = check_conversation(conv)
    return conv if problem is None else error(*problem)


class Adapt(RowStep):
    """The adapt step: a record read by `ingest`, with its file's format, becomes a row, or is rejected with the
    reason its adapter or a validation rule gives; a line `ingest` could not read is rejected as it is."""

    name = "adapt"

    def __init__(self, source: SourceConfig):
        self.source = source

    def row(self, item: tuple[Any, str], tally: Tally) -> Row | None:
        record, fmt = item
        conversation = record if isinstance(record, RowError) else to_conversation(record, fmt, source=self.source)
        if isinstance(conversation, RowError):
            tally.drop(conversation)
            return None
        return Row(conversation)
