"""The demo tokenizer: the committed files are what the build gives, it loads with AutoTokenizer, round-trips any
text, and carries the GLM-4 special tokens and chat template."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.templates import load_template
from tests.conftest import DEMO_TOKENIZER, REPO, demo_tokenizer
from tools.build_demo_tokenizer import SPECIAL_TOKENS, VOCAB_SIZE, build_demo_tokenizer, main

FILES = ("tokenizer.json", "tokenizer_config.json")
CORPUS = REPO / "data" / "corpus.txt"

TEXTS = [
    "Hello, world! How are you today?",
    "北京今天的天气怎么样？请用中文回答。",
    "混合 mixed 文本 with English 和中文, numbers 12345 and 3.14159.",
    "def f(x):\n    return x ** 2  # square\n\n\tif x:\n\t\tpass\n",
    '{"name": "get_weather", "arguments": {"city": "北京"}}',
    "emoji 🎉🚀 family 👨‍👩‍👧 flags 🇨🇳 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "   leading spaces, trailing spaces   \n\n\n  \r\n\t  whitespace runs      end",
    "日本語のテキスト、한국어 텍스트, Ελληνικά, русский текст, العربية",
    "rare bytes \x00\x07\x7f and combining e\u0301 and zero\u200bwidth",
    "",
]


@functools.lru_cache(maxsize=1)
def _built(tmp: str) -> Path:
    out = Path(tmp) / "tokenizer"
    build_demo_tokenizer(CORPUS, out)
    return out


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    return _built(str(tmp_path_factory.mktemp("demo")))


def test_rebuilding_gives_the_committed_files_byte_for_byte(rebuilt):
    for name in FILES:
        assert (rebuilt / name).read_bytes() == (DEMO_TOKENIZER / name).read_bytes(), (
            f"data/tokenizer/{name} is stale: run `make demo-tokenizer`"
        )


def test_the_cli_command_builds_the_same_files(tmp_path, rebuilt):
    result = CliRunner().invoke(
        main, ["--corpus", str(CORPUS), "--out", str(tmp_path / "tok")]
    )
    assert result.exit_code == 0, result.output
    for name in FILES:
        assert (tmp_path / "tok" / name).read_bytes() == (rebuilt / name).read_bytes()


def test_the_cli_command_refuses_a_missing_corpus(tmp_path):
    result = CliRunner().invoke(main, ["--corpus", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2
    assert "--corpus" in result.output


def test_committed_tokenizer_is_small():
    assert sum((DEMO_TOKENIZER / name).stat().st_size for name in FILES) < 400_000
    assert 60_000 <= CORPUS.stat().st_size <= 150_000


@pytest.mark.parametrize("text", TEXTS)
def test_decode_encode_round_trips(text):
    tok = demo_tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_offsets_cover_the_text_exactly():
    tok = demo_tokenizer()
    text = "你好 world,  多个空格 🎉\n"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    # no gaps (nothing trimmed), in order; pieces of one multi-byte character share that character's span
    assert all(a[0] <= b[0] <= a[1] <= b[1] for a, b in zip(spans, spans[1:]))


def test_special_tokens_vocabulary_and_config():
    tok = demo_tokenizer()
    assert len(tok) == VOCAB_SIZE
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS)
    assert ids == list(range(VOCAB_SIZE - len(SPECIAL_TOKENS), VOCAB_SIZE))  # after the learned vocabulary, as GLM-4
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)
    assert tok.model_max_length == 8192
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi", add_special_tokens=False)
    # a special token in text is one token; its spelling in pieces is never produced by the BPE
    assert tok.encode("<|user|>\nhi<|assistant|>", add_special_tokens=False)[0] == tok.convert_tokens_to_ids("<|user|>")
    config = json.loads((DEMO_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == load_template("glm4")
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_the_glm4_template_tokenizes_to_the_same_ids_as_its_rendered_text():
    tok = demo_tokenizer()
    messages = [
        {"role": "system", "content": "你是一个助手。"},
        {"role": "user", "content": "What's 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "[gMASK]<sop><|system|>\n你是一个助手。<|user|>\nWhat's 2+2?<|assistant|>\n4"
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert list(ids) == tok.encode(text, add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids[:3]) == ["[gMASK]", "<sop>", "<|system|>"]
