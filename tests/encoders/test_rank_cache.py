"""The kept rank table: the next run builds its tiktoken encoder from it without reading the vocabulary back, and a
table that is damaged or does not prove is rebuilt from the vocabulary."""
from __future__ import annotations

import pytest

import pipeline.encoders.choose as choose
from pipeline.encoders.choose import make_encoder
from pipeline.encoders.rank_cache import _path, load_ranks, store_ranks
from pipeline.tokenizer import tokenizer_fingerprint
from tests.conftest import demo_tokenizer

TEXT = "<|user|>\n你好 world  \n\t🙂<|assistant|>\n好的"


@pytest.fixture
def vocab_reads(tmp_path, monkeypatch) -> list[bool]:
    """A fresh cache, and whether each reading of the tokenizer's parts took its vocabulary."""
    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "cache"))
    reads: list[bool] = []
    real = choose.encoder_spec

    def spying(tokenizer, *, with_vocab: bool = True) -> dict:
        reads.append(with_vocab)
        return real(tokenizer, with_vocab=with_vocab)

    monkeypatch.setattr(choose, "encoder_spec", spying)
    return reads


def test_the_next_run_builds_from_the_kept_table(vocab_reads):
    first, _ = make_encoder(demo_tokenizer(), "auto")
    again, reason = make_encoder(demo_tokenizer(), "auto")
    assert first.name == again.name == "tiktoken" and reason.startswith("byte-level BPE")
    assert vocab_reads == [True, False]
    assert again.ranks == first.ranks
    assert again([TEXT])[0].input_ids.tolist() == first([TEXT])[0].input_ids.tolist()


def test_a_table_that_does_not_prove_is_rebuilt(vocab_reads):
    first, _ = make_encoder(demo_tokenizer(), "auto")
    fingerprint = tokenizer_fingerprint(demo_tokenizer())
    swapped = dict(first.ranks)
    swapped[b"a"], swapped[b"b"] = swapped[b"b"], swapped[b"a"]  # every probe with an `a` or a `b` differs
    store_ranks(fingerprint, swapped)
    again, _ = make_encoder(demo_tokenizer(), "auto")
    assert again.name == "tiktoken" and again.ranks == first.ranks
    assert vocab_reads == [True, False, True]
    assert load_ranks(fingerprint) == first.ranks  # kept again, right this time


def test_a_damaged_table_is_not_read(vocab_reads):
    """Two long pieces' ranks swapped could still prove on the probes: the file's own checksums catch the damage."""
    store_ranks("some-tokenizer", {b"a": 0, b"bc": 1, b"def": 2})
    path = _path("some-tokenizer")
    stored = bytearray(path.read_bytes())
    at = bytes(stored).index(b"abcdef")
    stored[at : at + 6] = b"abcfed"
    path.write_bytes(bytes(stored))
    assert load_ranks("some-tokenizer") is None


def test_an_unreadable_table_is_not_read(vocab_reads):
    store_ranks("some-tokenizer", {b"a": 0, b"bc": 1})
    assert load_ranks("some-tokenizer") == {b"a": 0, b"bc": 1}
    _path("some-tokenizer").write_bytes(b"not an npz file")
    assert load_ranks("some-tokenizer") is None
    assert load_ranks("another-tokenizer") is None
