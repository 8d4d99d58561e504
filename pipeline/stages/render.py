"""Render a conversation once with its chat template and record where each message's trainable text landed.

Each trainable piece (content, reasoning, tool-call name) is wrapped in private-use sentinels, the conversation is
rendered, the sentinels are stripped and their character spans recorded. When the template only copies message
text into its output (`pipeline.templates.flow` proves it from the template's syntax tree), the stripped text is the
rendering, and that is the text that gets tokenized. Otherwise the conversation is also rendered without sentinels,
and when the template transforms content (Llama 3's `| trim`, Qwen3 dropping earlier reasoning) the two renderings
differ, and the spans are carried over by aligning them.
A piece that cannot be located in the real rendering is a row error, never a guessed mask.
"""
from __future__ import annotations

import bisect
import difflib
import itertools
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from functools import lru_cache

from jinja2 import nodes

from pipeline.errors import ConfigError, PipelineError, Reason, RowError
from pipeline.stages.render_limits import RenderLimitExceeded, RenderLimits, bound_operators, render_timer
from pipeline.stages.row import Rendered, Row, Span
from pipeline.step import Step, Tally
from pipeline.templates.environment import REASONING_FIELDS, alias_reasoning_fields, chat_environment
from pipeline.templates.flow import copies_text_verbatim
from schemas.config import RenderConfig
from schemas.records import Conversation, Message

OPEN, CLOSE, END = "\U000f0000", "\U000f0001", "\U000f0002"
_SENTINEL = re.compile(f"([{OPEN}{CLOSE}])(\\d+){END}")
FIXED_DATE = datetime(2024, 1, 1)
"""What `strftime_now` returns inside templates, so that renderings are reproducible."""

VERIFIED_RENDERINGS = 64
"""How many conversations each run renders both ways when the template is judged to only copy text."""

_MESSAGE_TOOLS = re.compile(r"(?:message|item|msg|m)\s*(?:\[\s*['\"]tools['\"]\s*\]|\.tools\b)")


@dataclass(frozen=True)
class TemplateTraits:
    """What a template expects, read once from its source: where tools go, how tool results are named."""

    tools_on_system_message: bool
    renders_tool_calls: bool
    tool_role: str

    @classmethod
    def of(cls, template: str, special_tokens: set[str]) -> "TemplateTraits":
        return cls(
            tools_on_system_message=bool(_MESSAGE_TOOLS.search(template)),
            renders_tool_calls="tool_calls" in template,
            tool_role="observation" if "<|observation|>" in special_tokens else "tool",
        )


DEFAULT_LIMITS = RenderLimits.of(RenderConfig())


class Renderer:
    """Renders conversations with one chat template. Built once per run (or worker); called per conversation.
    Every rendering is bounded by `limits` (`render_messages` is the one place that renders)."""

    def __init__(self, template: str, *, special_tokens_map: dict[str, Any], special_tokens: set[str],
                 limits: RenderLimits = DEFAULT_LIMITS):
        self.traits = TemplateTraits.of(template, special_tokens)
        self._kwargs = special_tokens_map
        self.limits = limits
        self._compiled = _with_fixed_clock(template, limits.max_chars)
        self.generation_prompt = self._generation_prompt()
        self.single_rendering = copies_text_verbatim(self._compiled.environment, template)
        self._unverified = VERIFIED_RENDERINGS

    def __call__(self, conversation: Conversation, trained: frozenset[int] | None = None) -> Rendered:
        """Render one conversation; raise RowError(template_error) when the template refuses it, or when it drops
        or rewrites the text of a message in `trained` (all messages when None) beyond trimming its edges."""
        marked, pieces = self.template_messages(conversation, wrap=True)
        tools = template_tools(conversation)
        try:
            marked_text = self.render_messages(marked, tools)
            text = None if self.single_rendering else self.render_messages(self.template_messages(conversation, wrap=False)[0], tools)
        except RenderLimitExceeded as exc:
            raise _template_error(conversation, str(exc)) from None
        except Exception as exc:  # a template's raise_exception, or a template bug on this data
            raise _template_error(conversation, f"the chat template refused this conversation: {exc}") from None
        stripped, spans = _strip_sentinels(marked_text, pieces)
        if text is None:
            text = stripped  # the template only copies text: the same as rendering without sentinels
        elif stripped != text:
            spans = _align_spans(stripped, text, spans)
        _check_spans(conversation, text, spans, pieces, trained)
        spans = sorted(spans + self._answer_openings(conversation, text, spans), key=lambda s: (s.start, s.end))
        return Rendered(text=text, spans=tuple(spans))

    def check_single_rendering(self, conversations: list[Conversation], template_name: str) -> None:
        """Render the run's first conversations both ways, with the sentinels stripped (the single rendering) and
        without them, and stop the run on any difference: the syntax-tree analysis that allows one rendering
        (`copies_text_verbatim`) would otherwise make tokens silently differ from the template's real output.
        A conversation the template refuses is left to the row's own error."""
        if not self.single_rendering or self._unverified <= 0:
            return
        for conversation in conversations[: self._unverified]:
            self._unverified -= 1
            marked, pieces = self.template_messages(conversation, wrap=True)
            tools = template_tools(conversation)
            try:
                single, _ = _strip_sentinels(self.render_messages(marked, tools), pieces)
                real = self.render_messages(self.template_messages(conversation, wrap=False)[0], tools)
            except Exception:  # refused or over a limit: rejected as template_error when rendered
                continue
            if single != real:
                at = next((k for k, (a, b) in enumerate(zip(single, real)) if a != b), min(len(single), len(real)))
                raise PipelineError(
                    f"{template_name}: judged to only copy message text, but rendering "
                    f"{conversation.source}:{conversation.row} (id {conversation.id}) once differs from rendering it "
                    f"plainly at character {at} ({single[at:at + 30]!r} vs {real[at:at + 30]!r}): the template "
                    "analysis (pipeline/templates/flow.py) is wrong for this template, so the run stops"
                )

    def _generation_prompt(self) -> str | None:
        """The text `add_generation_prompt=True` appends (`<|im_start|>assistant\n`): what precedes a model's answer.
        Rendering this probe also tests the limits at start-up: a template that cannot render one user turn within
        them would stall or refuse every row, so it stops the run."""
        probe = [{"role": "user", "content": "ping"}]
        try:
            bare = self.render_messages(probe, None)
            prompted = self.render_messages(probe, None, add_generation_prompt=True)
        except RenderLimitExceeded as exc:
            raise ConfigError([f"chat template: rendering a probe conversation (one user turn): {exc}; the template "
                               "cannot be used (raise the limit only for a template known to need more)"]) from None
        except Exception:  # a template that cannot render a lone user turn: fall back to the spans alone
            return None
        return prompted[len(bare) :] if prompted.startswith(bare) and len(prompted) > len(bare) else None

    def _answer_openings(self, conversation: Conversation, text: str, spans: list[Span]) -> list[Span]:
        """For each assistant message, the template text between its generation prompt and its first piece
        (Qwen's `<tool_call>\n{"name": "`, Qwen3's `<think>\n`): the model writes it, so it belongs to the answer."""
        if not self.generation_prompt:
            return []
        firsts: dict[int, int] = {}
        for span in spans:
            if span.start < firsts.get(span.message, len(text) + 1):
                firsts[span.message] = span.start
        ends = sorted((span.end, span.message) for span in spans)
        openings = []
        for index, first in sorted(firsts.items()):
            if conversation.messages[index].role != "assistant":
                continue
            k = bisect.bisect_right(ends, (first, len(conversation.messages)))  # the spans ending by `first`
            while k and ends[k - 1][1] == index:  # (only an emptied piece of this message could end there)
                k -= 1
            before = ends[k - 1][0] if k else 0
            found = text.rfind(self.generation_prompt, before, first)
            if found >= 0 and found + len(self.generation_prompt) < first:
                openings.append(Span(index, "opening", found + len(self.generation_prompt), first))
        return openings

    def render_messages(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *, add_generation_prompt: bool = False
    ) -> str:
        """Render template-ready messages as `apply_chat_template(..., tokenize=False)` does. The messages are plain
        JSON data built here, so transformers' defensive copy is skipped; its reasoning-field aliases are kept."""
        if any(field in message for message in messages for field in REASONING_FIELDS):
            messages = alias_reasoning_fields(messages)
        variables = {"messages": messages, "tools": tools, "documents": None,
                     "add_generation_prompt": add_generation_prompt, **self._kwargs}
        return self.limits.render(self._compiled, variables)

    def template_messages(
        self, conversation: Conversation, *, wrap: bool
    ) -> tuple[list[dict[str, Any]], dict[int, tuple[int, str, str]]]:
        """The messages as HF chat templates read them. With `wrap`, trainable strings carry numbered sentinels;
        the returned map gives each sentinel number its (message index, kind, original text)."""
        pieces: dict[int, tuple[int, str, str]] = {}

        def mark(index: int, kind: str, text: str) -> str:
            if not wrap or not text:
                return text
            number = len(pieces)
            pieces[number] = (index, kind, text)
            return f"{OPEN}{number}{END}{text}{CLOSE}{number}{END}"

        out: list[dict[str, Any]] = []
        for index, message in enumerate(conversation.messages):
            out.append(self._template_message(index, message, mark))
        tools = template_tools(conversation)
        if tools and self.traits.tools_on_system_message:
            if out and out[0]["role"] == "system":
                out[0]["tools"] = tools
            else:
                out.insert(0, {"role": "system", "content": "", "tools": tools})
        return out, pieces

    def _template_message(self, index: int, message: Message, mark) -> dict[str, Any]:
        role = self.traits.tool_role if message.role == "tool" else message.role
        content = message.content
        calls = message.tool_calls or ()
        if calls and not self.traits.renders_tool_calls:
            # Templates without tool-call support (GLM-4) get the call as GLM-4 writes it: JSON content.
            written = "\n".join(
                json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) for c in calls
            )
            content = f"{content}\n{written}" if content else written
            calls = ()
        out: dict[str, Any] = {"role": role, "content": mark(index, "content", content)}
        if message.reasoning_content:
            out["reasoning_content"] = mark(index, "reasoning", message.reasoning_content)
        if calls:
            out["tool_calls"] = [
                {
                    "type": "function",
                    "function": {"name": mark(index, "tool_name", c.name), "arguments": c.arguments},
                    **({"id": c.id} if c.id else {}),
                }
                for c in calls
            ]
        if message.name:
            out["name"] = message.name
        if message.tool_call_id:
            out["tool_call_id"] = message.tool_call_id
        return out


def template_name(config: RenderConfig) -> str:
    """How error messages name the template a run renders with."""
    if config.chat_template:
        return f"chat template {config.chat_template!r}"
    return f"the chat template of tokenizer {config.tokenizer!r}"


def renderer_args(tokenizer) -> dict[str, Any]:
    """What a Renderer needs from the tokenizer, as plain data."""
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    tokens_map = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return {"special_tokens_map": tokens_map, "special_tokens": special}


@lru_cache(maxsize=8)
def _with_fixed_clock(template: str, max_chars: int = DEFAULT_LIMITS.max_chars):
    """The template compiled as transformers compiles it (`chat_environment`), with `strftime_now` returning
    FIXED_DATE so renderings do not change from day to day, and `*` and `**` bounded by `max_chars`
    (`bound_operators`). In a process that has imported transformers, its cached compilation of the template gets the
    fixed clock too (its globals are the only place a callable can be given), so `apply_chat_template` on the same
    template renders the same date, unless compiling it there would compute a `*` or `**` of constants (it may be
    `'a' * 10**9`: transformers' environment computes constants while compiling, unbounded).

    Lookups (`message.role`, `message['tools']`) answer on a plain dict without raising and catching exceptions
    first: the same result as the sandbox's general path (a dict instance has no attribute outside `dir(dict)`, so a
    missing key is undefined either way), at a fraction of its cost. The template's globals are flat (with the fixed
    clock): every render copies them into a new context, and a chain of mappings copies slowly."""
    fixed_clock = lambda fmt: FIXED_DATE.strftime(fmt)  # noqa: E731
    environment = chat_environment()
    bound_operators(environment, max_chars)
    general_getattr, general_getitem = environment.getattr, environment.getitem

    def value(obj: dict, key: str) -> Any:
        return obj[key] if key in obj else environment.undefined(obj=obj, name=key)

    def getattr_(obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            return value(obj, attribute)
        return general_getattr(obj, attribute)

    def getitem_(obj: Any, argument: Any) -> Any:
        if type(obj) is dict and type(argument) is str and argument not in _DICT_ATTRIBUTES:
            return value(obj, argument)
        return general_getitem(obj, argument)

    environment.getattr, environment.getitem = getattr_, getitem_
    fast = environment.from_string(template)
    fast.globals = {**environment.globals, "strftime_now": fixed_clock}  # flat: every render copies the globals
    if "transformers" in sys.modules and not _folds_operators(environment.parse(template)):
        from transformers.utils.chat_template_utils import _compile_jinja_template

        _compile_jinja_template(template).globals["strftime_now"] = fixed_clock
    return fast


def _folds_operators(tree: nodes.Template) -> bool:
    """Whether the template holds a `*` or `**` of constants (no variable anywhere in its operands), which an
    environment that does not intercept these operators computes while compiling."""
    return any(not any(operation.find_all(nodes.Name)) for operation in tree.find_all((nodes.Mul, nodes.Pow)))


_DICT_ATTRIBUTES = frozenset(dir(dict))


def template_tools(conversation: Conversation) -> list[dict[str, Any]] | None:
    """Tools as chat templates expect them: `{"type": "function", "function": {...}}`. A bare function spec
    (`{"name": ..., "parameters": ...}`, as glaive data and legacy `functions` write them) is wrapped; the rest is
    passed exactly as written."""
    if not conversation.tools:
        return None
    return [
        {"type": "function", "function": tool} if "type" not in tool and "function" not in tool and "name" in tool else tool
        for tool in conversation.tools
    ]


def _strip_sentinels(marked: str, pieces: dict[int, tuple[int, str, str]]) -> tuple[str, list[Span]]:
    """Remove sentinels, returning the clean text and the span of every piece whose both sentinels survived."""
    parts = _SENTINEL.split(marked)  # text, (kind, number, text) * sentinels
    texts = parts[0::3]
    ends = list(itertools.accumulate(map(len, texts)))
    opened: dict[int, int] = {}
    spans: list[Span] = []
    for k, (kind, digits) in enumerate(zip(parts[1::3], parts[2::3])):
        number = int(digits)
        if number not in pieces:
            continue
        if kind == OPEN:
            opened[number] = ends[k]
        elif number in opened:
            index, piece_kind, _ = pieces[number]
            spans.append(Span(index, piece_kind, opened.pop(number), ends[k], number))
    spans.sort(key=lambda s: (s.start, s.end))
    return "".join(texts), spans


def _align_spans(stripped: str, text: str, spans: list[Span]) -> list[Span]:
    """Carry spans from the sentinel rendering over to the real one through the blocks the two texts share."""
    blocks = difflib.SequenceMatcher(None, stripped, text, autojunk=False).get_matching_blocks()
    moved: list[Span] = []
    for span in spans:
        starts, ends = [], []
        for a, b, size in blocks:
            lo, hi = max(a, span.start), min(a + size, span.end)
            if lo < hi:
                starts.append(b + lo - a)
                ends.append(b + hi - a)
        if starts:
            moved.append(Span(span.message, span.kind, min(starts), max(ends), span.piece))
    return moved


def _check_spans(conversation: Conversation, text: str, spans: list[Span], pieces, trained) -> None:
    """Every trained piece must be in the rendering, verbatim up to edge whitespace the template trimmed."""
    found = {s.piece: s for s in spans}
    for number, (index, kind, original) in pieces.items():
        if trained is not None and index not in trained:
            continue
        span = found.get(number)
        if span is None:
            if kind == "reasoning":
                continue  # templates may drop earlier turns' reasoning: nothing of it is in the tokens
            raise _template_error(conversation, "the chat template does not render this text", f"messages.{index}.{kind}")
        located = text[span.start : span.end]
        if located != original and located.strip() != original.strip():
            raise _template_error(
                conversation,
                f"the chat template changes this text ({located[:40]!r} instead of {original[:40]!r})",
                f"messages.{index}.{kind}",
            )


def _template_error(conversation: Conversation, message: str, field_path: str = "messages") -> RowError:
    return RowError.of(conversation, Reason.TEMPLATE_ERROR, field_path, message)


def holds_reserved_characters(text: str) -> bool:
    """True when the data itself holds a sentinel character (it would corrupt the spans). Three substring checks:
    a text with no character beyond U+FFFF (almost all) cannot hold one, and `in` answers that at once."""
    return OPEN in text or CLOSE in text or END in text


class Render(Step):
    """The render step: each row's conversation rendered once, its trained messages found verbatim in the text;
    a row the template refuses is rejected (`template_error`). The batch's renderings share one timer
    (`render_timer`). The run's first conversations are also rendered the long way, to check the single-rendering
    shortcut (`Renderer.check_single_rendering`); `template_name` names the template if that check fails."""

    name = "render"

    def __init__(self, renderer: Renderer, *, template_name: str):
        self.renderer = renderer
        self.template_name = template_name

    def process(self, items: list[Row], tally: Tally) -> list[Row]:
        passed = []
        with render_timer():
            self.renderer.check_single_rendering([row.conversation for row in items], self.template_name)
            for row in items:
                try:
                    row.rendered = self.renderer(row.conversation, row.trained)
                except RowError as error:
                    tally.drop(error)
                    continue
                passed.append(row)
        return passed
