"""Rendering: the text equals `apply_chat_template`, spans locate each trained piece, template errors are row errors."""
from __future__ import annotations

import pytest

from pipeline.encoders.hf import encode_batch
from pipeline.errors import PipelineError, RowError
from pipeline.stages.render import VERIFIED_RENDERINGS, Renderer
from pipeline.stages.render import renderer_args
from schemas.records import Message
from tests.chats import ALL, WITH_SYSTEM, WITH_TOOLS, conversation, hf_messages, hf_tools
from tests.conftest import REAL_TOKENIZERS, real_tokenizer

TEMPLATED = [n for n in REAL_TOKENIZERS if n != "gpt2"]


def _reference_options(name: str) -> dict:
    if name == "glm4":
        return {"tool_role": "observation", "tools_on_system": True, "tool_calls_as_json": True}
    if name in ("llama3", "openhermes-mistral"):
        return {"tool_calls_as_json": True}
    return {}


def _assistants(conv) -> frozenset[int]:
    return frozenset(i for i, m in enumerate(conv.messages) if m.role == "assistant")


@pytest.mark.parametrize("name", TEMPLATED)
@pytest.mark.parametrize("conv", ALL, ids=lambda c: c.id)
def test_rendering_and_tokens_equal_apply_chat_template(name, conv):
    tokenizer = real_tokenizer(name)
    renderer = Renderer(tokenizer.chat_template, **renderer_args(tokenizer))
    rendered = renderer(conv, _assistants(conv))
    messages = hf_messages(conv, **_reference_options(name))
    tools = hf_tools(conv)
    assert rendered.text == tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    expected_ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False)
    assert encode_batch(tokenizer, [rendered.text])[0].input_ids.tolist() == list(expected_ids)


@pytest.mark.parametrize("name", TEMPLATED)
def test_spans_hold_the_trained_text(name):
    tokenizer = real_tokenizer(name)
    renderer = Renderer(tokenizer.chat_template, **renderer_args(tokenizer))
    rendered = renderer(WITH_SYSTEM, _assistants(WITH_SYSTEM))
    contents = {s.message: rendered.text[s.start : s.end] for s in rendered.spans if s.kind == "content"}
    for index in _assistants(WITH_SYSTEM):
        # Llama 3 trims content; the others keep it verbatim.
        assert contents[index].strip() == WITH_SYSTEM.messages[index].content.strip()


def test_tool_call_name_span_on_a_template_with_tool_calls():
    tokenizer = real_tokenizer("qwen2.5")
    renderer = Renderer(tokenizer.chat_template, **renderer_args(tokenizer))
    rendered = renderer(WITH_TOOLS, _assistants(WITH_TOOLS))
    (name_span,) = [s for s in rendered.spans if s.kind == "tool_name"]
    assert rendered.text[name_span.start : name_span.end] == "get_weather"
    assert rendered.text[name_span.end :].startswith('", "arguments": {"city": "北京"}}')


ALTERNATING = (
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
)


def _plain_renderer(template: str) -> Renderer:
    return Renderer(template, special_tokens_map={}, special_tokens=set())


def test_a_template_that_raises_rejects_the_row_with_its_message():
    conv = conversation(Message(role="user", content="a"), Message(role="user", content="b"),
                        Message(role="assistant", content="c"))
    with pytest.raises(RowError) as caught:
        _plain_renderer(ALTERNATING)(conv)
    assert caught.value.reason == "template_error"
    assert "roles must alternate" in caught.value.message
    assert str(caught.value).startswith("test.jsonl:1: messages:")


def test_a_template_that_drops_trained_text_is_a_row_error_not_a_wrong_mask():
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'][:3] }}{% endfor %}"
    conv = conversation(Message(role="user", content="hello"), Message(role="assistant", content="abcdef"))
    with pytest.raises(RowError, match="does not render this text"):
        _plain_renderer(template)(conv, frozenset({1}))


def test_trim_is_followed_by_aligning_the_two_renderings():
    template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] | trim }}[end]{% endfor %}"
    conv = conversation(Message(role="user", content="  hi "), Message(role="assistant", content="\n  answer  \n"))
    rendered = _plain_renderer(template)(conv)
    assert rendered.text == "[user]hi[end][assistant]answer[end]"
    spans = {s.message: rendered.text[s.start : s.end] for s in rendered.spans}
    assert spans == {0: "hi", 1: "answer"}


def test_strftime_now_is_fixed_for_reproducible_renderings():
    template = "{{ strftime_now('%Y-%m-%d') }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    rendered = _plain_renderer(template)(conversation(Message(role="user", content="x"), Message(role="assistant", content="y")))
    assert rendered.text == "2024-01-01xy"


def test_a_template_that_rewrites_trained_text_is_a_row_error():
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | upper }}{% endfor %}"
    conv = conversation(Message(role="user", content="hello"), Message(role="assistant", content="abc"))
    with pytest.raises(RowError, match="changes this text") as caught:
        _plain_renderer(template)(conv, frozenset({1}))
    assert caught.value.field == "messages.1.content"


def test_several_tool_calls_in_one_message_are_each_located():
    from schemas.records import ToolCall

    tokenizer = real_tokenizer("qwen2.5")
    renderer = Renderer(tokenizer.chat_template, **renderer_args(tokenizer))
    conv = conversation(
        Message(role="user", content="Weather in Paris and Rome?"),
        Message(role="assistant", content="", tool_calls=(ToolCall(name="get_weather", arguments={"city": "Paris"}),
                                                         ToolCall(name="get_time", arguments={"city": "Rome"}))),
        Message(role="tool", content="18C", name="get_weather"),
        Message(role="tool", content="12:00", name="get_time"),
        Message(role="assistant", content="18C in Paris; it is noon in Rome."),
    )
    rendered = renderer(conv, frozenset({1, 4}))
    names = [rendered.text[s.start : s.end] for s in rendered.spans if s.kind == "tool_name"]
    assert names == ["get_weather", "get_time"]


def test_fast_dict_lookups_equal_the_sandbox():
    """The overlay's dict lookups against jinja's own sandbox (as transformers compiles it), on present and missing
    keys, dict method names, non-string keys, dict subclasses and undefined tests."""
    from collections import OrderedDict

    from transformers.utils.chat_template_utils import _compile_jinja_template

    from pipeline.stages.render import _with_fixed_clock

    template = (
        "{% for m in messages %}[{{ m.role }}|{{ m['role'] }}|{{ m.tools is defined }}|{{ m['tools'] is defined }}"
        "|{{ m['items'] is defined }}|{{ m.keys is defined }}|{{ m[0] is defined }}|{{ m.get('role') }}"
        "|{{ m['content'] | default('none') }}|{{ (m.name or 'anon') }}]{% endfor %}"
    )
    messages = [{"role": "user", "content": "hi", "name": ""}, {"role": "tool", 0: "zero"},
                OrderedDict(role="assistant", items="shadow"), {"role": "x", "tools": None}]
    assert _with_fixed_clock(template).render(messages=messages) == _compile_jinja_template(template).render(messages=messages)


def _renderer(name: str) -> Renderer:
    from pipeline.templates import load_template

    return Renderer(load_template(name), special_tokens_map={"eos_token": "<|eot_id|>"}, special_tokens=set())


def test_a_wrong_single_rendering_decision_stops_the_run(monkeypatch):
    """Llama 3's template trims message text: were it judged to only copy text, one rendering would keep the
    whitespace the real rendering trims, and tokens would silently differ. The check renders both ways."""
    import pipeline.stages.render as render

    monkeypatch.setattr(render, "copies_text_verbatim", lambda environment, template: True)
    renderer = _renderer("llama3")
    assert renderer.single_rendering
    clean = conversation(Message(role="user", content="Hi"), Message(role="assistant", content="Hello."), row=1)
    padded = conversation(Message(role="user", content="  Hi  "), Message(role="assistant", content="Hello."), row=2)
    with pytest.raises(PipelineError, match=r"chat template 'llama3'.* test.jsonl:2 \(id test-2\)"):
        renderer.check_single_rendering([clean, padded], "chat template 'llama3'")


def test_the_single_rendering_check_passes_a_template_that_copies_text_and_stops_after_its_sample():
    renderer = _renderer("chatml")
    assert renderer.single_rendering
    renderer.check_single_rendering([WITH_SYSTEM] * VERIFIED_RENDERINGS, "chatml")
    renderer.render_messages = None  # the sample is done: nothing more is rendered
    renderer.check_single_rendering([WITH_SYSTEM], "chatml")
