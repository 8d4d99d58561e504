"""Built-in chat templates: each renders what the model's own template renders (real tokenizers, skipped when
absent), and alpaca renders the LLMs-from-scratch text built independently in Python."""
from __future__ import annotations

import json

import pytest

from pipeline.templates import BUILTIN_TEMPLATES, TEMPLATE_DIR, load_template
from tests.conftest import demo_tokenizer, real_tokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "查询城市的天气 (get the weather)",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "城市名称"}},
            "required": ["city"],
        },
    },
}
BOOKS = {
    "type": "function",
    "function": {
        "name": "search_books",
        "description": "Search books",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}},
    },
}

SYSTEM = {"role": "system", "content": "You are a helpful assistant. 请用中文回答。"}
PLAIN = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 = 4."},
]
MULTI = [
    {"role": "user", "content": "你好！"},
    {"role": "assistant", "content": "你好，有什么可以帮你？"},
    {"role": "user", "content": "  Write a loop in Python.\n"},
    {"role": "assistant", "content": "```python\nfor i in range(3):\n    print(i)\n```\n"},
    {"role": "user", "content": "Thanks 🎉"},
    {"role": "assistant", "content": "You're welcome!"},
]
PLAIN_CONVERSATIONS = {
    "plain": PLAIN,
    "system": [SYSTEM, *PLAIN],
    "multi": MULTI,
    "system_multi": [SYSTEM, *MULTI],
    "user_only": [{"role": "user", "content": "Hello"}],
    "empty_content": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}],
}


def render(tokenizer, messages, *, template=None, tools=None, generation=False) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, chat_template=template, tokenize=False, add_generation_prompt=generation
    )


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# --- load_template ---------------------------------------------------------------------------------------------


def test_every_builtin_loads():
    for name, file in BUILTIN_TEMPLATES.items():
        text = load_template(name)
        assert text == (TEMPLATE_DIR / file).read_text(encoding="utf-8")
        assert text.startswith("{#-"), f"{file} must open with the comment that documents what it renders"


def test_load_template_from_a_path(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m.content }}{% endfor %}", encoding="utf-8")
    assert load_template(str(path)) == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("bad", ["nope", "glm4.jinja", "/nonexistent/x.jinja"])
def test_load_template_refuses_unknown_names_listing_the_builtins(bad):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_template(bad)
    for name in BUILTIN_TEMPLATES:
        assert name in str(info.value)


# --- glm4 ------------------------------------------------------------------------------------------------------

GLM_CONVERSATIONS = {
    **PLAIN_CONVERSATIONS,
    "tools_on_system": [
        {**SYSTEM, "tools": [WEATHER, BOOKS]},
        {"role": "user", "content": "北京天气怎么样？"},
        {"role": "assistant", "metadata": "get_weather", "content": '{"city": "北京"}'},
        {"role": "observation", "content": '{"temperature": 25, "condition": "晴"}'},
        {"role": "assistant", "content": "北京今天晴，25 度。"},
        {"role": "user", "content": "Find two history books."},
        {"role": "assistant", "metadata": "search_books", "content": '{"query": "history", "limit": 2}'},
        {"role": "observation", "content": '{"books": ["SPQR", "The Guns of August"]}'},
        {"role": "assistant", "content": "SPQR and The Guns of August."},
    ],
    "tools_on_empty_system": [
        {"role": "system", "content": "", "tools": [WEATHER]},
        {"role": "user", "content": "Weather in Paris?"},
    ],
    "tools_empty_list": [{"role": "system", "content": "", "tools": []}, *PLAIN],
}


def test_glm4_writes_tool_calls_and_tool_results_the_glm4_way():
    """`tool_calls` and role `tool` (which the original ignores or names literally) render as the original renders
    GLM-4's own form: metadata = function name, content = JSON arguments, role `observation`."""
    tok = real_tokenizer("glm4")
    arguments = {"city": "北京", "days": [1, 2]}
    canonical = [
        {**SYSTEM, "tools": [WEATHER]},
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": "我来查一下。", "tool_calls": [call("get_weather", arguments)]},
        {"role": "tool", "content": '{"temperature": 25}'},
        {"role": "assistant", "content": "25 度。"},
    ]
    glm_form = [
        canonical[0],
        canonical[1],
        {"role": "assistant", "content": "我来查一下。"},
        {"role": "assistant", "metadata": "get_weather", "content": json.dumps(arguments, ensure_ascii=False)},
        {"role": "observation", "content": '{"temperature": 25}'},
        canonical[4],
    ]
    ours = render(tok, canonical, template=load_template("glm4"))
    assert ours == render(tok, glm_form)
    assert '<|assistant|>get_weather\n{"city": "北京", "days": [1, 2]}<|observation|>\n' in ours


def test_glm4_top_level_tools_render_as_if_on_the_first_message():
    tok = real_tokenizer("glm4")
    ours = render(tok, [SYSTEM, *PLAIN], template=load_template("glm4"), tools=[WEATHER])
    assert ours == render(tok, [{**SYSTEM, "tools": [WEATHER]}, *PLAIN])
    ours = render(tok, PLAIN, template=load_template("glm4"), tools=[WEATHER])
    assert ours == render(tok, [{"role": "system", "content": "", "tools": [WEATHER]}, *PLAIN])


def test_glm4_renders_on_the_demo_tokenizer_without_shared_assets():
    tok = demo_tokenizer()
    messages = [SYSTEM, *PLAIN]
    text = render(tok, messages, generation=True)
    assert text == (
        "[gMASK]<sop><|system|>\nYou are a helpful assistant. 请用中文回答。"
        "<|user|>\nWhat is 2+2?<|assistant|>\n2+2 = 4.<|assistant|>"
    )


def test_glm4_refuses_builtin_tools_it_does_not_write():
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="function"):
        render(demo_tokenizer(), [{"role": "system", "content": "", "tools": [{"type": "python"}]}, *PLAIN],
               template=load_template("glm4"))


# --- chatml ----------------------------------------------------------------------------------------------------

QWEN_CONVERSATIONS = {
    "system": [SYSTEM, *PLAIN],
    "system_multi": [SYSTEM, *MULTI],
    "late_system": [SYSTEM, *PLAIN, {"role": "system", "content": "Be brief."}, *PLAIN],
    "tool_calls": [
        SYSTEM,
        {"role": "user", "content": "Weather in 北京 and 上海?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "北京"}),
                                                              call("get_weather", {"city": "上海"})]},
        {"role": "tool", "content": '{"temperature": 25}'},
        {"role": "tool", "content": '{"temperature": 28}'},
        {"role": "assistant", "content": "北京 25 度，上海 28 度。"},
        {"role": "user", "content": "Books?"},
        {"role": "assistant", "content": "Let me search.", "tool_calls": [call("search_books", {"query": "x"})]},
        {"role": "tool", "content": "[]"},
        {"role": "assistant", "content": "None found."},
    ],
}


@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("generation", [False, True])
@pytest.mark.parametrize("case", sorted(QWEN_CONVERSATIONS))
def test_chatml_matches_qwen25_when_there_is_a_system_message(case, generation, with_tools):
    tok = real_tokenizer("qwen2.5")
    messages = QWEN_CONVERSATIONS[case]
    tools = [WEATHER, BOOKS] if with_tools else None
    ours = render(tok, messages, template=load_template("chatml"), tools=tools, generation=generation)
    assert ours == render(tok, messages, tools=tools, generation=generation)


def test_chatml_without_system_adds_no_default_prompt():
    tok = demo_tokenizer()
    text = render(tok, PLAIN, template=load_template("chatml"), tools=[WEATHER])
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call")
    assert "Qwen" not in text
    assert render(tok, PLAIN, template=load_template("chatml")) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n2+2 = 4.<|im_end|>\n"
    )


# --- each built-in against the model template it is named after ------------------------------------------------

OWN_TEMPLATE_CASES = [
    ("glm4", "glm4", GLM_CONVERSATIONS, "[gMASK]<sop>"),
    ("chatml", "openhermes-mistral", PLAIN_CONVERSATIONS, "<|im_start|>"),
    ("llama3", "llama3", PLAIN_CONVERSATIONS, "<|begin_of_text|><|start_header_id|>"),
]


@pytest.mark.parametrize("generation", [False, True])
@pytest.mark.parametrize(
    "template, tokenizer, case",
    [(t, tok, case) for t, tok, cases, _ in OWN_TEMPLATE_CASES for case in sorted(cases)],
)
def test_builtin_matches_the_models_own_template(template, tokenizer, case, generation):
    _, _, cases, prefix = next(c for c in OWN_TEMPLATE_CASES if c[0] == template)
    tok = real_tokenizer(tokenizer)
    ours = render(tok, cases[case], template=load_template(template), generation=generation)
    assert ours == render(tok, cases[case], generation=generation)
    assert ours.startswith(prefix)


# --- alpaca ----------------------------------------------------------------------------------------------------

PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


def book_text(entry: dict) -> str:
    """The chapter 7 text for one entry (format_input + response), written out independently of the template."""
    text = PREAMBLE + "\n\n### Instruction:\n" + entry["instruction"]
    if entry["input"]:
        text += "\n\n### Input:\n" + entry["input"]
    return text + "\n\n### Response:\n" + entry["output"]


@pytest.mark.parametrize(
    "entry",
    [
        {"instruction": "Convert the active sentence to passive: 'The chef cooks the meal every day.'",
         "input": "", "output": "The meal is cooked by the chef every day."},
        {"instruction": "Identify the correct spelling of the following word.", "input": "Ocassion",
         "output": "The correct spelling is 'Occasion.'"},
    ],
)
def test_alpaca_matches_the_book_text_then_eos(entry):
    tok = real_tokenizer("gpt2")
    user = entry["instruction"] + ("\n\n### Input:\n" + entry["input"] if entry["input"] else "")
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": entry["output"]}]
    ours = render(tok, messages, template=load_template("alpaca"))
    assert ours == book_text(entry) + "<|endoftext|>"
    prompt = render(tok, messages[:1], template=load_template("alpaca"), generation=True)
    assert prompt == book_text({**entry, "output": ""})


def test_alpaca_system_replaces_the_preamble_and_turns_repeat():
    tok = demo_tokenizer()
    messages = [{"role": "system", "content": "You are terse."}, *PLAIN, *PLAIN]
    turn = "### Instruction:\nWhat is 2+2?\n\n### Response:\n2+2 = 4.<|endoftext|>"
    assert render(tok, messages, template=load_template("alpaca")) == f"You are terse.\n\n{turn}\n\n{turn}"
    empty = [{"role": "system", "content": ""}, *PLAIN]
    assert render(tok, empty, template=load_template("alpaca")) == turn


@pytest.mark.parametrize("name", ["alpaca", "llama3"])
def test_templates_without_a_tool_format_refuse_tool_calls(name):
    from jinja2.exceptions import TemplateError

    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "北京"})]}]
    with pytest.raises(TemplateError, match="tool calls are not supported"):
        render(demo_tokenizer(), messages, template=load_template(name))


def test_alpaca_refuses_tool_results_and_late_system_messages():
    from jinja2.exceptions import TemplateError

    for role in ["tool", "system"]:
        with pytest.raises(TemplateError, match=f'role "{role}"'):
            render(demo_tokenizer(), [*PLAIN, {"role": role, "content": "x"}], template=load_template("alpaca"))


def test_chatml_accepts_observation_as_the_tool_result_role():
    tok = demo_tokenizer()
    as_tool = [*PLAIN, {"role": "tool", "content": "42"}, {"role": "tool", "content": "43"}]
    as_observation = [*PLAIN, {"role": "observation", "content": "42"}, {"role": "tool", "content": "43"}]
    text = render(tok, as_tool, template=load_template("chatml"))
    assert text == render(tok, as_observation, template=load_template("chatml"))
    results = "<tool_response>\n42\n</tool_response>\n<tool_response>\n43\n</tool_response>"
    assert text.endswith(f"<|im_start|>user\n{results}<|im_end|>\n")


def test_string_arguments_are_written_verbatim():
    """A call whose arguments are already JSON text is written as it is (never JSON-encoded twice)."""
    tok = demo_tokenizer()
    messages = [*PLAIN[:1], {"role": "assistant", "content": "", "tool_calls": [call("f", '{"a": 1}')]}]
    assert '<|assistant|>f\n{"a": 1}' in render(tok, messages, template=load_template("glm4"))
    assert '{"name": "f", "arguments": {"a": 1}}' in render(tok, messages, template=load_template("chatml"))
