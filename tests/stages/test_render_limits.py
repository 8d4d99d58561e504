"""A runaway chat template costs a row, or stops the run at start-up with exit 2: it never hangs a run or fills memory.
Every rendering (the whole conversation, GLM-4's per-message one, drop_oldest_turns' re-rendering) is bounded in time
and in size; `*` and `**` are checked before they compute."""
from __future__ import annotations

import json
import resource
import shutil
import signal
import threading
import time

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import ConfigError, RowError
from pipeline.run import preprocess
from pipeline.stages.render import Renderer
from pipeline.stages.render_limits import RenderLimitExceeded, RenderLimits
from pipeline.templates import load_template
from schemas.config import RenderConfig, load_config
from schemas.records import Message
from tests.chats import conversation
from tests.conftest import DEMO_TOKENIZER

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
GLM4 = load_template("glm4")  # the demo tokenizer's own template


def _when_content(content: str, body: str) -> str:
    """`body` runs only while rendering a message whose content is `content`, then the GLM-4 template."""
    return "{% for m in messages %}{% if m.content == '" + content + "' %}" + body + "{% endif %}{% endfor %}" + GLM4


def _renderer(template: str, **limits) -> Renderer:
    return Renderer(template, special_tokens_map={}, special_tokens=set(), limits=RenderLimits.of(RenderConfig(**limits)))


def _chat(content: str, row: int = 1):
    return conversation(Message(role="user", content=content), Message(role="assistant", content="fine"), row=row)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_template_that_never_finishes_is_refused_at_start_up():
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"render\.time_limit \(0\.3 s\)"):
        _renderer(LOOP, time_limit=0.3)
    assert time.monotonic() - started < 5


def test_a_row_that_sends_the_template_into_a_loop_is_rejected_and_the_next_renders():
    renderer = _renderer(_when_content("slow", LOOP), time_limit=0.3)
    handler = signal.getsignal(signal.SIGALRM)
    with pytest.raises(RowError) as caught:
        renderer(_chat("slow"))
    assert caught.value.reason == "template_error"
    assert "render.time_limit (0.3 s)" in caught.value.message
    assert renderer(_chat("quick")).text.endswith("quick<|assistant|>\nfine")
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("expression, limit", [
    ("'a' * 10**9", "render.max_chars (67,108,864"),
    ("[0] * 10**9", "render.max_chars (67,108,864"),
    ("(10 ** 100000000) % 7", "4,300 digits"),
])
def test_huge_strings_and_numbers_are_refused_before_they_are_built(expression, limit):
    before, started = _peak_mib(), time.monotonic()
    renderer = _renderer(_when_content("big", "{{ " + expression + " }}"))
    with pytest.raises(RowError) as caught:
        renderer(_chat("big"))
    assert caught.value.reason == "template_error" and limit in caught.value.message
    assert time.monotonic() - started < 5
    assert _peak_mib() - before < 200  # never allocated


def test_a_rendering_longer_than_max_chars_is_refused():
    renderer = _renderer(_when_content("long", "{% for i in range(100000) %}{{ m.content }}{% endfor %}"), max_chars=100_000)
    with pytest.raises(RowError, match=r"render\.max_chars \(100,000 characters\)"):
        renderer(_chat("long"))
    assert renderer(_chat("short")).text.endswith("short<|assistant|>\nfine")


def test_an_outer_timer_is_left_running():
    """A timer the caller set (a test timeout, an application's alarm) is neither cancelled nor replaced."""
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    signal.setitimer(signal.ITIMER_REAL, 100)
    try:
        _renderer(GLM4)(_chat("hello"))
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90 < remaining <= 100 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_outside_the_main_thread_the_time_is_checked_as_the_output_grows():
    limits = RenderLimits.of(RenderConfig(time_limit=0.3, max_chars=2**40))
    template = _renderer(GLM4)._compiled.environment.from_string(
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}")
    outcome = []

    def render() -> None:
        try:
            limits.render(template, {})
        except RenderLimitExceeded as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=render)
    thread.start()
    thread.join(10)
    assert outcome and "render.time_limit (0.3 s)" in outcome[0]


# --- the whole run ---------------------------------------------------------------------------------------------------
def _rows(path, contents):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": c},
                                                     {"role": "assistant", "content": f"answer {k}"}]}) + "\n"
                            for k, c in enumerate(contents)))
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_rows_over_a_limit_are_rejected_and_the_run_goes_on(tmp_path, workers):
    template = tmp_path / "t.jinja"
    template.write_text(_when_content("slow", LOOP))
    data = _rows(tmp_path / "chats.jsonl", ["q1", "slow", "q2", "q3", "slow", "q4"])
    result = CliRunner().invoke(main, ["preprocess", str(data), "--tokenizer", str(DEMO_TOKENIZER), "--chat-template",
                                       str(template), "--render-time-limit", "0.3", "--render-max-chars", "100000",
                                       "--workers", str(workers), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "read 6  written 4  rejected 2" in result.output
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in rejects] == [(2, "template_error"), (5, "template_error")]
    assert all("render.time_limit (0.3 s)" in r["message"] for r in rejects)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["render"]["max_chars"] == 100000


def _refused_at_start_up(result, out) -> None:
    assert result.exit_code == 2, result.output
    assert "render.time_limit (0.3 s)" in result.output and "probe" in result.output
    assert "Traceback" not in result.output
    assert not (out / "manifest.json").exists()


def test_a_chat_template_file_that_hangs_stops_the_run_with_exit_2(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text(LOOP)
    data = _rows(tmp_path / "chats.jsonl", ["q1"])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["preprocess", str(data), "--tokenizer", str(DEMO_TOKENIZER), "--chat-template",
                                       str(template), "--render-time-limit", "0.3", "--workers", "2", "--out", str(out)])
    _refused_at_start_up(result, out)


def test_a_tokenizer_whose_own_template_hangs_stops_the_run_with_exit_2(tmp_path):
    tokenizer = shutil.copytree(DEMO_TOKENIZER, tmp_path / "tokenizer")
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    config["chat_template"] = LOOP
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    data = _rows(tmp_path / "chats.jsonl", ["q1"])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["preprocess", str(data), "--tokenizer", str(tokenizer),
                                       "--render-time-limit", "0.3", "--out", str(out)])
    _refused_at_start_up(result, out)


def _run(tmp_path, template: str, data, **overrides) -> dict:
    """preprocess `data` with `template` and a time limit of 0.3 s; the accounting."""
    path = tmp_path / "t.jinja"
    path.write_text(template)
    config = load_config(None, {"inputs": [str(data)], "render.tokenizer": str(DEMO_TOKENIZER),
                                "render.chat_template": str(path), "render.time_limit": 0.3, **overrides})
    return preprocess(config, tmp_path / "out")["accounting"]


def test_glm4_per_message_rendering_is_bounded(tmp_path):
    """The glm4 preset renders each message alone too: a message that hangs the template only then rejects its row."""
    alone = "{% if messages | length == 1 and messages[0].content == 'slow' %}" + LOOP + "{% endif %}" + GLM4
    data = _rows(tmp_path / "chats.jsonl", ["q1", "slow", "q2"])
    accounting = _run(tmp_path, alone, data, **{"mask.preset": "glm4"})
    assert accounting["written"] == 2 and accounting["rejected_reasons"] == {"template_error": 1}
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert reject["row"] == 2 and "render.time_limit (0.3 s)" in reject["message"]


def test_drop_oldest_turns_re_rendering_is_bounded(tmp_path):
    """A conversation too long for the limit is re-rendered without its oldest round: that rendering is bounded too,
    and its failure rejects the row with the limit named."""
    shorter = "{% if messages | length == 2 %}" + LOOP + "{% endif %}" + GLM4
    rounds = [{"role": "user", "content": "tell me more " * 20}, {"role": "assistant", "content": "more words " * 20}]
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": rounds * 2}) + "\n")
    accounting = _run(tmp_path, shorter, data, **{"truncation.strategy": "drop_oldest_turns", "truncation.max_length": 80})
    assert accounting["read"] == 1 and accounting["rejected_reasons"] == {"template_error": 1}
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert "render.time_limit (0.3 s)" in reject["message"]
