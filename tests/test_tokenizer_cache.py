"""The tokenizer cache: filled by the first load, read by the next, never read once anything it depends on changed,
and never in the way (a damaged entry or an unwritable cache only costs time)."""
from __future__ import annotations

import json
import shutil

import pytest

from pipeline.saved_tokenizer import SavedTokenizer
from pipeline.tokenizer import load_tokenizer, tokenizer_fingerprint
from pipeline.tokenizer_cache import cache_root, load_cached
from schemas.config import RenderConfig
from tests.conftest import DEMO_TOKENIZER


@pytest.fixture
def tokenizer_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "cache"))
    return shutil.copytree(DEMO_TOKENIZER, tmp_path / "tokenizer")


def test_the_first_load_fills_the_cache_and_the_next_reads_it(tokenizer_dir):
    first = load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir)))
    again = load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir)))
    assert not isinstance(first, SavedTokenizer) and isinstance(again, SavedTokenizer)
    assert again.backend_tokenizer.to_str() == first.backend_tokenizer.to_str()
    assert again.fingerprint == tokenizer_fingerprint(first) == tokenizer_fingerprint(SavedTokenizer(again.directory))


def test_an_entry_is_not_read_once_a_file_of_the_tokenizer_changed(tokenizer_dir):
    load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir)))
    (tokenizer_dir / "special_tokens_map.json").write_text("{}")  # a new file counts too
    assert load_cached(tokenizer_dir) is None


def test_an_entry_is_not_read_under_another_offline_setting(tokenizer_dir, monkeypatch):
    load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # transformers writes it into the saved config
    assert load_cached(tokenizer_dir) is None


@pytest.mark.parametrize("damage", ["key.json", "fingerprint", "contents.json", "tokenizer/tokenizer.json"])
def test_a_damaged_entry_is_loaded_anew_and_replaced(tokenizer_dir, damage):
    load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir)))
    [entry] = (cache_root() / "tokenizers").iterdir()
    (entry / damage).write_text("{not json") if damage != "fingerprint" else (entry / damage).unlink()
    assert load_cached(tokenizer_dir) is None
    assert not isinstance(load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir))), SavedTokenizer)
    assert isinstance(load_cached(tokenizer_dir), SavedTokenizer)
    assert [p.name for p in (cache_root() / "tokenizers").iterdir()] == [entry.name]  # nothing left beside it


def test_a_copy_edited_into_other_valid_json_is_not_read(tokenizer_dir):
    load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir)))
    [entry] = (cache_root() / "tokenizers").iterdir()
    saved = entry / "tokenizer" / "tokenizer.json"
    spec = json.loads(saved.read_text(encoding="utf-8"))
    first, second = list(spec["model"]["vocab"])[300:302]
    spec["model"]["vocab"][first], spec["model"]["vocab"][second] = spec["model"]["vocab"][second], spec["model"]["vocab"][first]
    saved.write_text(json.dumps(spec), encoding="utf-8")  # still a valid tokenizer, with two ids swapped
    assert load_cached(tokenizer_dir) is None


def test_an_unwritable_cache_only_costs_time(tokenizer_dir, monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "a-file"))  # a cache folder cannot be made under a file
    assert load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir))).is_fast
    assert not isinstance(load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir))), SavedTokenizer)


def test_remote_code_is_never_cached(tokenizer_dir):
    load_tokenizer(RenderConfig(tokenizer=str(tokenizer_dir)))
    config = RenderConfig(tokenizer=str(tokenizer_dir), trust_remote_code=True)
    assert not isinstance(load_tokenizer(config), SavedTokenizer)
