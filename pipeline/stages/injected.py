"""Text the chat template adds that the data does not hold: Qwen2.5's default system prompt ("You are Qwen, created
by Alibaba Cloud...") on a conversation without a system message, the date lines of Llama 3.1's template, the
alpaca preamble. The model trains on it (as context) and will expect it at inference, so a run counts the rows that
hold some and their tokens, and `check` and the report say so. A template's way of presenting tools is not counted:
it is how the data's tool definitions reach the model.

What counts, read off each rendering: the renderer knows where every message's text landed (its spans); everything
else is the template's. Of that, the control tokens (the added tokens it writes) are markup, and so are the words the
template writes once per message (role headers: `user`, `assistant`, `[INST]`, `### Response:`), found at start-up
by rendering a probe of one round and of two rounds and keeping the words that come once more with the second round.
On a row with tools, so are the words the template writes only when tools are given (how it presents them: "# Tools",
"You may call one or more functions..."), found by rendering the one-round probe with a tool. The strings of the data
that are written outside the message text (tool definitions, call arguments, names) are the data's. Any other word
is injected: the region from it to the end of its stretch of template text between two control tokens (markup words
included; a data word ends the region early) is injected text, and the tokens of the written row that hold any of its
characters are its tokens.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from pipeline.errors import Reason, RowError
from pipeline.stages.render import Renderer
from pipeline.stages.row import Rendered, Row
from pipeline.stages.text_fields import template_strings
from pipeline.step import RowStep, Tally
from schemas.records import Conversation, Message

WORD = re.compile(r"[^\W\d_]+")  # a run of letters, in any script
ROLE_NAMES = frozenset({"system", "user", "assistant", "tool", "observation", "ipython", "function", "developer"})
_MESSAGE_TEXT = ("content", "reasoning_content")  # written inside the spans
_CLOSING = ".,:;!?)]}'\""  # punctuation that ends the injected sentence rather than the data after it


PROBE_TOOL = {"type": "function", "function": {"name": "f", "description": "", "parameters": {"type": "object"}}}


def probe(rounds: int, *, tools: bool = False) -> Conversation:
    """A conversation of `rounds` user/assistant rounds whose text holds no word, so that every word of its rendering
    is the template's (with `tools`, one tool, whose few words are the template's way of writing a tool)."""
    messages = [Message(role=role, content=str(2 * k + (role == "assistant")))
                for k in range(rounds) for role in ("user", "assistant")]
    return Conversation(id="probe", source="probe", row=1, messages=tuple(messages),
                        tools=(PROBE_TOOL,) if tools else None)


def template_tokens(tokenizer, template: str) -> list[str]:
    """The tokenizer's added tokens that the template can write: named in its source, or one of the special tokens it
    is given (`bos_token`, `eos_token`). Searching for these alone, not for every reserved token a tokenizer adds
    (Llama 3 has 256), keeps the search short."""
    given = {value for value in tokenizer.special_tokens_map.values() if isinstance(value, str)}
    return [token.content for token in tokenizer.added_tokens_decoder.values()
            if token.content in template or token.content in given]


class InjectedText:
    """Finds injected text in the renderings of one template; built once per run (and worker)."""

    def __init__(self, renderer: Renderer, control_tokens: Iterable[str]):
        """`control_tokens`: the added tokens the template writes (`template_tokens`)."""
        tokens = sorted((t for t in control_tokens if t and not t.isspace()), key=len, reverse=True)
        control = "|".join(map(re.escape, tokens))
        self._control = re.compile(control) if tokens else None
        self._pieces = re.compile((f"(?P<control>{control})|" if tokens else "") + f"(?P<word>{WORD.pattern})")
        self.markup, self.tool_markup, self.probe = ROLE_NAMES, frozenset(), ""
        try:
            renderings = [renderer(c) for c in (probe(1), probe(2), probe(1, tools=True))]
        except RowError:  # a template that cannot render the probes (its rows fail alike): role names are the markup
            return
        one, two, tools = (Counter(self._template_words(r)) for r in renderings)
        self.markup = ROLE_NAMES | {w for w in two if two[w] > one[w]}  # what one more round brings: role headers
        self.tool_markup = frozenset(w for w in tools if tools[w] > one[w])  # how it presents tools
        self.probe = self.text_in(probe(1), renderings[0])

    @staticmethod
    def _gaps(rendered: Rendered) -> list[tuple[int, int]]:
        """The template's text: the ranges outside every span."""
        gaps, at = [], 0
        for span in sorted(rendered.spans, key=lambda s: s.start):
            if span.start > at:
                gaps.append((at, span.start))
            at = max(at, span.end)
        gaps.append((at, len(rendered.text)))
        return gaps

    def _template_words(self, rendered: Rendered) -> list[str]:
        """The words of the template's text, control tokens left out."""
        text = "\0".join(rendered.text[a:b] for a, b in self._gaps(rendered))
        return WORD.findall((self._control.sub("\0", text) if self._control else text).casefold())

    def regions(self, conversation: Conversation, rendered: Rendered) -> list[tuple[int, int]]:
        """The character ranges of `rendered.text` that hold injected text. Most renderings have no word outside the
        markup and are done with one search of the template's text; only the others are walked word by word."""
        markup = self.markup | self.tool_markup if conversation.tools else self.markup
        if markup.issuperset(self._template_words(rendered)):
            return []
        data, text, found = _data_words(conversation), rendered.text, []
        for start, end in self._gaps(rendered):
            region: list[int] = []
            for match in self._pieces.finditer(text, start, end):
                if match.lastgroup == "control":  # a stretch of the template's text ends here
                    region = _end(region, found, text, match.start())
                    continue
                word = match.group().casefold()
                if word in data:
                    region = _close(region, found, text, end)
                elif word not in markup:
                    region = [region[0] if region else match.start(), match.end()]
                elif region:
                    region[1] = match.end()
            _end(region, found, text, end)
        return found

    def text_in(self, conversation: Conversation, rendered: Rendered) -> str:
        """The injected text of one rendering, its regions joined by " … "."""
        return " … ".join(rendered.text[a:b] for a, b in self.regions(conversation, rendered))


def _data_words(conversation: Conversation) -> set[str]:
    """The words of the data that the template writes outside the message text: tool definitions, tool calls, names
    (none, at no cost, for the many conversations that hold only text)."""
    if not conversation.tools and not any(m.tool_calls or m.name or m.tool_call_id for m in conversation.messages):
        return set()
    return {word.casefold() for where, string in template_strings(conversation)
            if not (isinstance(where, tuple) and where[1] in _MESSAGE_TEXT) for word in WORD.findall(string)}


def _end(region: list[int], found: list[tuple[int, int]], text: str, limit: int) -> list[int]:
    """End `region` (if open) at the end of its stretch of template text: what follows its last word up to there
    belongs to it ("... 01 Jan 2024"), less the whitespace before the next control token."""
    if region:
        found.append((region[0], region[0] + len(text[region[0] : limit].rstrip())))
    return []


def _close(region: list[int], found: list[tuple[int, int]], text: str, limit: int) -> list[int]:
    """End `region` (if open) before a word of the data, keeping the punctuation that closes its last sentence."""
    if region:
        start, end = region
        while end < limit and text[end] in _CLOSING:
            end += 1
        found.append((start, end))
    return []


class NoteInjectedText(RowStep):
    """Notes each row about to be written whose rendering holds injected text (`injected_text`), with the number of
    its written tokens that hold any of it. Runs after truncation, on the row as written; under the `glm4` preset,
    whose tokens are built message by message, the tokens are counted on the whole-conversation rendering."""

    name = "injected_text"

    def __init__(self, finder: InjectedText):
        self.finder = finder

    def row(self, row: Row, tally: Tally) -> Row:
        regions = self.finder.regions(row.conversation, row.rendered)
        if regions:
            first, after = row.encoded.spans.locate([a for a, _ in regions], [b for _, b in regions])
            written = len(row.input_ids)
            tokens = sum(max(0, min(b, written) - min(a, written)) for a, b in zip(first, after))
            tally.note(Reason.INJECTED_TEXT, tokens=tokens)
        return row
