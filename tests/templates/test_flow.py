"""When may one rendering replace two? Only when the template provably just copies message text into its output.

Each refused template below uses text in a way sentinels could change; each accepted one is checked the hard way:
rendering with sentinels and removing them must give the rendering without them, on varied conversations.
"""
from __future__ import annotations

import pytest

from pipeline.stages.render import OPEN, Renderer, _strip_sentinels, _with_fixed_clock
from pipeline.templates import load_template
from pipeline.templates.flow import copies_text_verbatim
from schemas.records import Conversation, Message, ToolCall
from tests.conftest import REAL_TOKENIZERS, real_tokenizer

LOOP = "{% for message in messages %}{BODY}{% endfor %}"


def verbatim(template: str) -> bool:
    return copies_text_verbatim(_with_fixed_clock(template).environment, template)


ACCEPTED = {
    "output": LOOP.replace("{BODY}", "<|{{ message.role }}|>{{ message['content'] }}"),
    "concatenation": LOOP.replace("{BODY}", "{{ '<s>' + message.content + '</s>' ~ '\\n' }}"),
    "truth and type tests": LOOP.replace(
        "{BODY}", "{% if message.content and message.content is string and message.content != '' %}{{ message.content }}{% endif %}"),
    "set from a message, then output": "{% set first = messages[0] %}{% set text = first.content %}{{ text }}",
    "slices, length, conditional value": (
        "{% set rest = messages[1:] if messages|length > 1 else messages %}"
        "{% for m in rest|reverse %}{{ (m.content or '') ~ '|' }}{% endfor %}"),
    "tool calls": LOOP.replace("{BODY}", "{% for call in message.tool_calls or [] %}{% set fn = call.function if "
                               "call.function is defined else call %}{{ fn.name ~ fn.arguments|tojson }}{% endfor %}"),
    "generation block": LOOP.replace("{BODY}", "{% generation %}{{ message.content }}{% endgeneration %}"),
}

REFUSED = {
    "trim": LOOP.replace("{BODY}", "{{ message.content | trim }}"),
    "method": LOOP.replace("{BODY}", "{{ message.content.split('</think>')[-1] }}"),
    "dict method": LOOP.replace("{BODY}", "{{ message.get('content') }}"),
    "comparison": LOOP.replace("{BODY}", "{% if message.content == 'hi' %}x{% endif %}{{ message.content }}"),
    "substring test": LOOP.replace("{BODY}", "{% if '0' in message.content %}x{% endif %}"),
    "emptiness of a trimmed text": LOOP.replace("{BODY}", "{% if (message.content | trim) == '' %}x{% endif %}"),
    "index": LOOP.replace("{BODY}", "{{ message.content[0] }}"),
    "length of text": LOOP.replace("{BODY}", "{{ message.content | length }}"),
    "whole message as json": LOOP.replace("{BODY}", "{{ message | tojson }}"),
    "whole message as string": LOOP.replace("{BODY}", "{{ message ~ '' }}"),
    "text through a variable, then trimmed": "{% set text = messages[0]['content'] %}{{ text | trim }}",
    "namespace": "{% set ns = namespace(last='') %}{% for m in messages %}{% set ns.last = m.content %}{% endfor %}{{ ns.last }}",
    "macro argument": "{% macro show(m) %}{{ m.content | trim }}{% endmacro %}{% for m in messages %}{{ show(m) }}{% endfor %}",
    "loop.previtem": LOOP.replace("{BODY}", "{% if loop.previtem %}{{ loop.previtem.content | upper }}{% endif %}"),
    "format": LOOP.replace("{BODY}", "{{ '%s' | format(message.content) }}"),
    "iterating text": LOOP.replace("{BODY}", "{% for ch in message.content %}{{ ch }}{% endfor %}"),
    "filter block": LOOP.replace("{BODY}", "{% filter upper %}{{ message.content }}{% endfilter %}"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_templates_that_could_see_the_sentinels_are_rendered_twice(name):
    assert not verbatim(REFUSED[name])


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_templates_that_only_copy_text_are_rendered_once_and_that_is_exact(name):
    template = ACCEPTED[name]
    assert verbatim(template)
    renderer = Renderer(template, special_tokens_map={}, special_tokens=set())
    assert renderer.single_rendering
    _same_text_either_way(renderer, tools=True)


@pytest.mark.parametrize("name", ["chatml", "glm4", "alpaca"])
def test_built_in_templates_are_rendered_once_exactly(name):
    renderer = Renderer(load_template(name), special_tokens_map={"eos_token": "</s>"}, special_tokens=set())
    assert renderer.single_rendering
    _same_text_either_way(renderer, tools=name != "alpaca")


def test_a_template_that_does_not_parse_is_not_analysed():
    assert not copies_text_verbatim(_with_fixed_clock("{{ 1 }}").environment, "{% for m in messages %}")


def test_llama3_trims_text_so_it_is_rendered_twice():
    assert not verbatim(load_template("llama3"))


@pytest.mark.parametrize("name", [n for n in REAL_TOKENIZERS if n != "gpt2"])  # gpt2 has no chat template
def test_real_templates(name):
    """Which shared templates take the one-rendering path; the corpus parity tests then check their tokens."""
    tokenizer = real_tokenizer(name)
    expected = name in ("glm4", "qwen2.5", "openhermes-mistral")  # llama3.x trim, qwen3 splits out reasoning
    assert verbatim(tokenizer.chat_template) == expected


def _same_text_either_way(renderer: Renderer, tools: bool = False) -> None:
    """Sentinel rendering with the sentinels removed == the rendering of the plain messages, on varied chats."""
    wrapped_any = False
    for conversation in _conversations(tools):
        marked, pieces = renderer.template_messages(conversation, wrap=True)
        plain, _ = renderer.template_messages(conversation, wrap=False)
        wrapped = renderer.render_messages(marked, None)
        wrapped_any |= OPEN in wrapped
        assert _strip_sentinels(wrapped, pieces)[0] == renderer.render_messages(plain, None)
    assert wrapped_any  # the comparison was not vacuous


def _conversations(tools: bool) -> list[Conversation]:
    texts = ["", " padded ", "0", "中文\n", "tabs\tand  spaces", "</think>x"]
    out = []
    for k, text in enumerate(texts):
        messages = [Message(role="system", content=texts[(k + 2) % len(texts)]), Message(role="user", content=text),
                    Message(role="assistant", content=texts[(k + 1) % len(texts)] or "ok")]
        if tools:
            call = ToolCall(name="lookup", arguments={"q": text})
            messages += [Message(role="user", content="call it"), Message(role="assistant", content="", tool_calls=(call,))]
        out.append(Conversation(id=str(k), source="t", row=k + 1, messages=tuple(messages)))
    return out
