"""Tokenizer families the tests build themselves, so the suite covers them without ../shared."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pipeline.encoders.hf import encode_batch, encoder_spec
from pipeline.errors import PipelineError
from pipeline.stages.mask import IGNORE_INDEX
from pipeline.templates import load_template
from pipeline.tokenizer import (
    declared_fast_class,
    added_token_classes,
    chat_template_of,
    from_pretrained,
    load_tokenizer,
    special_token_ids,
)
from schemas.config import RenderConfig
from tests.chats import WITH_SYSTEM, hf_messages
from tests.conftest import DEMO_TOKENIZER, REAL_TOKENIZERS, SHARED, demo_tokenizer, real_tokenizer
from tests.stages.test_mask import labels_for, trained_text

CORPUS = [
    "You are a concise assistant.", "Name a prime number.", "Seven.", "用中文说一个质数。",
    "十一是一个质数。它只能被1和自身整除。", "The quick brown fox jumps over the lazy dog.",
] * 20


def sentencepiece_style() -> PreTrainedTokenizerFast:
    """A Unigram model with a Metaspace prefix space, as Llama 2 / Mistral tokenizers are."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                                      unk_token="<unk>")
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                   chat_template=load_template("chatml"))


def test_sentencepiece_style_tokens_equal_apply_chat_template_and_masks_hold():
    tokenizer = sentencepiece_style()
    ids, labels = labels_for(tokenizer, WITH_SYSTEM)
    assert ids.tolist() == tokenizer.apply_chat_template(hf_messages(WITH_SYSTEM), tokenize=True, return_dict=False)
    runs = trained_text(tokenizer, ids, labels)
    assert len(runs) == 2 and all(r.endswith("<|im_end|>") for r in runs)
    assert "Seven" in runs[0] and "质数" in runs[1]
    assert np.array_equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])


def test_encode_batch_equals_the_tokenizer_call_and_maps_every_character():
    tokenizer = demo_tokenizer()
    texts = ["<|user|>\n你好 world  \n\t🙂 code: x=1<|assistant|>", "", "plain"]
    encoded = encode_batch(tokenizer, texts)
    assert [e.input_ids.tolist() for e in encoded] == tokenizer(texts, add_special_tokens=False)["input_ids"]
    first, n_tokens = encoded[0], len(encoded[0].input_ids)
    tokens, starting = first.spans.locate(range(len(texts[0]) + 1), [0, len(texts[0])])
    assert tokens[0] == 0 and tokens[-2] == n_tokens - 1 and tokens[-1] == n_tokens and tokens == sorted(tokens)
    assert starting == [0, n_tokens]
    assert encoded[1].spans.locate([0], [0]) == ([0], [0])


def test_a_character_the_normaliser_drops_maps_to_the_next_token():
    """The first token holding a dropped character is the first holding a later one; the first token starting at
    the position after a token is the next token, even when the characters between them were dropped."""
    tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Replace("~", "")
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    (encoded,) = encode_batch(PreTrainedTokenizerFast(tokenizer_object=tokenizer), ["a ~~b~"])
    assert encoded.input_ids.tolist() == [0, 1]
    assert encoded.spans.locate([0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 4, 5, 6]) == ([0, 1, 1, 1, 1, 2, 2], [0, 1, 1, 1, 2, 2])


def test_special_token_ids_include_added_special_tokens():
    tokenizer = sentencepiece_style()
    ids = set(special_token_ids(tokenizer).tolist())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids and tokenizer.eos_token_id in ids


def test_a_tokenizer_without_template_needs_chat_template(tmp_path):
    tokenizer = sentencepiece_style()
    tokenizer.chat_template = None
    with pytest.raises(PipelineError, match="--chat-template"):
        chat_template_of(tokenizer, RenderConfig())
    assert chat_template_of(tokenizer, RenderConfig(chat_template="llama3")) == load_template("llama3")


def test_a_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="cannot load tokenizer"):
        load_tokenizer(RenderConfig(tokenizer=str(tmp_path / "nope")))


@pytest.mark.parametrize("path", ["./OpenHermes-2.5-Mistral-7B", "../models/glm-4-9b-chat-hf", "~/no-such-model"])
def test_a_tokenizer_path_that_does_not_exist_is_named_as_such(path):
    """A folder written as a path (as the recipes' placeholders are) is not looked up as a hub name, whose rules
    would only confuse: the error says the folder is not there and how to give it."""
    with pytest.raises(PipelineError) as err:
        load_tokenizer(RenderConfig(tokenizer=path))
    assert str(err.value) == (f"cannot load tokenizer {path!r}: no such directory "
                              "(give the model's folder with --tokenizer)")


def test_a_slow_only_tokenizer_is_refused_with_the_reason(monkeypatch):
    import transformers

    class Slow:
        is_fast = False

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: Slow()))
    with pytest.raises(PipelineError, match="no fast .Rust. version: character offsets"):
        load_tokenizer(RenderConfig(tokenizer="some/slow-model"))


@pytest.mark.parametrize("name", ["demo", "sentencepiece_style", *REAL_TOKENIZERS])
def test_encoder_spec_holds_what_the_tokenizer_json_says(name):
    """The encoder builders read a spec taken from the loaded backend part by part; it must say what the whole
    tokenizer.json says."""
    tokenizer = {"demo": demo_tokenizer, "sentencepiece_style": sentencepiece_style}.get(name, lambda: real_tokenizer(name))()
    whole, spec = json.loads(tokenizer.backend_tokenizer.to_str()), encoder_spec(tokenizer)
    for key in ("normalizer", "pre_tokenizer"):
        assert spec[key] == whole[key], key
    assert spec["added_tokens"] == [{k: t[k] for k in spec["added_tokens"][0]} for t in whole["added_tokens"]]
    assert spec["model"] == {k: whole["model"][k] for k in spec["model"]}
    assert spec["model"]["type"] == whole["model"]["type"] and (spec["model"]["type"] != "BPE" or len(spec["model"]) == 5)


def test_added_tokens_are_control_tokens_when_special_or_written_by_the_template():
    """Qwen2.5: special tokens and the template's own `<tool_call>` are control tokens; `<|fim_prefix|>` and its kin,
    neither special nor in the template, are the other class."""
    tokenizer = real_tokenizer("qwen2.5")
    control, other = added_token_classes(tokenizer, tokenizer.chat_template)
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>"} <= set(control)
    assert {"<|fim_prefix|>", "<|file_sep|>", "<|repo_name|>"} <= set(other)
    assert not set(control) & set(other)
    _, without_tools = added_token_classes(tokenizer, "{{ messages[0].content }}<|im_end|>")
    assert "<tool_call>" in without_tools  # not special: a control token only where the template writes it


def _saved_files(tokenizer, out: Path) -> dict[str, bytes]:
    tokenizer.save_pretrained(str(out))
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("name", ["demo", *REAL_TOKENIZERS])
def test_from_pretrained_gives_what_auto_tokenizer_gives(name, tmp_path):
    auto = demo_tokenizer() if name == "demo" else real_tokenizer(name)
    path = DEMO_TOKENIZER if name == "demo" else SHARED / "tokenizers" / name
    ours = from_pretrained(str(path))
    assert type(ours) is type(auto)
    assert ours.backend_tokenizer.to_str() == auto.backend_tokenizer.to_str()
    assert ours.special_tokens_map == auto.special_tokens_map and ours.chat_template == auto.chat_template
    assert _saved_files(ours, tmp_path / "ours") == _saved_files(auto, tmp_path / "auto")


def _tokenizer_dir(tmp_path: Path, config: dict, *extra: str) -> Path:
    (tmp_path / "tokenizer.json").write_bytes((DEMO_TOKENIZER / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for name in extra:
        (tmp_path / name).write_text("{}")
    return tmp_path


@pytest.mark.parametrize("config, extra", [
    ({"tokenizer_class": "LlamaTokenizerFast"}, ()),  # AutoTokenizer may load the generic backend instead
    ({"tokenizer_class": "PreTrainedTokenizerFast", "auto_map": {"AutoTokenizer": ["x.X", None]}}, ()),
    ({"tokenizer_class": "PreTrainedTokenizerFast"}, ("config.json",)),  # the model type may choose the class
    ({"tokenizer_class": "NoSuchTokenizer"}, ()),
    ({}, ()),
])
def test_anything_but_a_declared_fast_class_goes_through_auto_tokenizer(tmp_path, config, extra):
    assert declared_fast_class(_tokenizer_dir(tmp_path, config, *extra)) is None


@pytest.mark.parametrize("declared", ["PreTrainedTokenizerFast", "TokenizersBackend", "Qwen2Tokenizer", "Qwen2TokenizerFast"])
def test_adeclared_fast_class_is_loaded_directly(tmp_path, declared):
    from transformers import Qwen2Tokenizer, TokenizersBackend

    expected = Qwen2Tokenizer if declared.startswith("Qwen2") else TokenizersBackend
    assert declared_fast_class(_tokenizer_dir(tmp_path, {"tokenizer_class": declared})) is expected
