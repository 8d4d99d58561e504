"""A saved tokenizer read with `tokenizers` alone answers as transformers' AutoTokenizer does on the original: the
same ids, decodings, special tokens, template and class name, and saving it writes the same bytes as save_pretrained."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.saved_tokenizer import SavedTokenizer
from pipeline.tokenizer import special_token_ids, tokenizer_summary
from tests.conftest import REAL_TOKENIZERS, demo_tokenizer, real_tokenizer

PROBES = ["Hello world!  \n\n  x", "数据预处理 <|im_end|> <|endoftext|> [INST] <s></s><|user|>", "def f(x):\n\treturn x**2",
          "🙂🙂 e\u0301 ＡＢＣ \r\n\u00a0"]
OTHER_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


def _auto(name: str):
    return demo_tokenizer() if name == "demo" else real_tokenizer(name)


def _saved(auto, path: Path) -> SavedTokenizer:
    auto.save_pretrained(str(path))
    return SavedTokenizer(path)


@pytest.mark.parametrize("name", ["demo", *REAL_TOKENIZERS])
def test_a_saved_tokenizer_answers_as_auto_tokenizer(name, tmp_path):
    auto = _auto(name)
    saved = _saved(auto, tmp_path / "saved")
    template = auto.chat_template or OTHER_TEMPLATE
    assert saved.chat_template == auto.chat_template
    assert tokenizer_summary(saved, template) == tokenizer_summary(auto, template)  # fingerprint, class, ids, map
    assert saved.special_tokens_map == {k: v for k, v in auto.special_tokens_map.items() if isinstance(v, str)}
    assert saved.all_special_ids == sorted(auto.all_special_ids)
    assert special_token_ids(saved).tolist() == special_token_ids(auto).tolist()
    assert {i: str(t) for i, t in saved.added_tokens_decoder.items()} == {i: str(t) for i, t in auto.added_tokens_decoder.items()}
    for text in PROBES:
        ids = auto.encode(text, add_special_tokens=False)
        assert saved.encode(text, add_special_tokens=False) == ids
        assert saved.encode(text) == auto.encode(text)
        assert saved.decode(ids) == auto.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert saved.convert_ids_to_tokens(ids[-1]) == auto.convert_ids_to_tokens(ids[-1])
    tokens = [*saved.added_tokens_decoder.values()][:3]
    known = [t.content for t in tokens] + ["no-such-token-anywhere"]
    assert saved.convert_tokens_to_ids(known) == auto.convert_tokens_to_ids(known)
    rows = [auto.encode(text, add_special_tokens=False) for text in PROBES]
    assert saved.batch_decode(rows, skip_special_tokens=True) == auto.batch_decode(
        rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("name", ["demo", "qwen2.5", "openhermes-mistral", "gpt2"])
@pytest.mark.parametrize("own", [True, False])
def test_saving_a_saved_tokenizer_writes_what_save_pretrained_writes(name, own, tmp_path):
    auto = _auto(name)
    saved = _saved(auto, tmp_path / "saved")
    template = (auto.chat_template if own else None) or OTHER_TEMPLATE
    saved.save(template, tmp_path / "ours")
    previous = auto.chat_template
    try:
        auto.chat_template = template
        auto.save_pretrained(str(tmp_path / "theirs"))
    finally:
        auto.chat_template = previous
    ours = {p.name: p.read_bytes() for p in sorted((tmp_path / "ours").iterdir())}
    assert ours == {p.name: p.read_bytes() for p in sorted((tmp_path / "theirs").iterdir())}


def test_decoding_never_cleans_up_spaces_silently(tmp_path):
    saved = _saved(demo_tokenizer(), tmp_path / "saved")
    with pytest.raises(ValueError, match="clean_up_tokenization_spaces"):
        saved.decode([1, 2], clean_up_tokenization_spaces=True)

