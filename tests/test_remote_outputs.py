"""Output prefixes in object storage follow the rules of output directories: the ledger decides what is ours."""
from __future__ import annotations

import json

import pytest

from pipeline.errors import OutputError
from pipeline.outputs import LEDGER
from pipeline.remote_outputs import claim_prefix
from pipeline.storage import open_store

pytest.importorskip("s3fs")


def test_keys_are_recorded_before_they_are_written_and_only_ours_are_removed(s3_env):
    store = open_store(f"s3://{s3_env}/out")
    prefix = claim_prefix(store, "shards", writes=["manifest.json"])
    prefix.record("train/a.arrow")
    store.write("train/a.arrow", b"a")
    assert "train/a.arrow" in json.loads(store.read(LEDGER))["paths"]
    store.write("train/theirs.txt", b"t")
    with pytest.raises(OutputError, match=r"/out/train/theirs.txt: not written by chatshard .* refusing to replace it"):
        prefix.remove("train")
    assert store.keys("train") == ["train/a.arrow", "train/theirs.txt"]
    prefix.remove("train/a.arrow")
    assert store.keys("train") == ["train/theirs.txt"]


def test_a_prefix_of_another_kind_or_with_a_broken_ledger_is_refused(s3_env):
    store = open_store(f"s3://{s3_env}/run")
    claim_prefix(store, "run")
    with pytest.raises(OutputError, match="holds a chatshard run output, not a shards output"):
        claim_prefix(store, "shards")
    store.write(LEDGER, b"{not json")
    with pytest.raises(OutputError, match=r"/run/.chatshard.json: unreadable ledger of chatshard"):
        claim_prefix(store, "run")
