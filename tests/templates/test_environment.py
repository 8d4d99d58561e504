"""The chat-template environment equals the one transformers' apply_chat_template renders in: the same options,
extensions, filters and globals, and the same renderings of every real and built-in template."""
from __future__ import annotations

import pytest
from transformers.utils import chat_template_utils as hf

from pipeline.templates import BUILTIN_TEMPLATES, load_template
from pipeline.templates.environment import REASONING_FIELDS, alias_reasoning_fields, chat_environment
from tests.conftest import REAL_TOKENIZERS, real_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief. <b>&</b>"},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "reasoning_content": "ask the tool",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris <&>"}}}]},
    {"role": "tool", "content": "18C", "name": "get_weather"},
    {"role": "assistant", "content": "18C."},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_the_environment_has_transformers_options_extensions_filters_and_globals():
    theirs, ours = hf._compile_jinja_template("").environment, chat_environment()
    assert type(ours) is type(theirs)
    assert (ours.trim_blocks, ours.lstrip_blocks) == (theirs.trim_blocks, theirs.lstrip_blocks)
    assert {e.tags and frozenset(e.tags) for e in ours.extensions.values()} == {
        e.tags and frozenset(e.tags) for e in theirs.extensions.values()}
    assert set(ours.filters) == set(theirs.filters) and set(ours.globals) == set(theirs.globals)
    assert REASONING_FIELDS == hf._REASONING_FIELDS


def _templates() -> list[tuple[str, str]]:
    found = [(name, load_template(name)) for name in BUILTIN_TEMPLATES]
    for name in REAL_TOKENIZERS:
        try:
            found.append((name, real_tokenizer(name).chat_template))
        except pytest.skip.Exception:
            continue
    return [(name, template) for name, template in found if isinstance(template, str)]


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_every_template_renders_as_transformers_renders_it(generation_prompt):
    variables = {"messages": alias_reasoning_fields(CONVERSATION), "tools": TOOLS, "add_generation_prompt": generation_prompt,
                 "bos_token": "<s>", "eos_token": "</s>",
                 "strftime_now": lambda fmt: "a fixed day"}  # the renderer may have fixed transformers' clock already
    templates = _templates()
    assert templates
    for name, template in templates:
        ours = _outcome(chat_environment().from_string(template), variables)
        assert ours == _outcome(hf._compile_jinja_template(template), variables), name


def _outcome(compiled, variables: dict) -> str:
    """The rendering, or the error a template raises (Llama 3 refuses tool calls): both must agree."""
    try:
        return compiled.render(**variables)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def test_generation_blocks_and_namespaces_behave_as_in_transformers():
    template = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% generation %}{{ m.content | tojson }}"
                "{% endgeneration %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}{{ dict(a=1) | tojson }}")
    messages = [{"content": "<é>"}, {"content": "b"}]
    assert chat_environment().from_string(template).render(messages=messages) == \
        hf._compile_jinja_template(template).render(messages=messages)
    with pytest.raises(Exception, match="underscore"):
        chat_environment().from_string("{% set ns = namespace(_x=1) %}").render()


def test_reasoning_aliases_are_transformers_aliases():
    messages = [{"role": "assistant", "content": "a", "thinking": "t"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "b", "reasoning": "r", "reasoning_content": None}]
    assert alias_reasoning_fields(messages) == hf._alias_reasoning_fields(messages)
