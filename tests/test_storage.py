"""Object-storage prefixes through fsspec: URLs told from paths, keys listed under a prefix, a missing backend named."""
from __future__ import annotations

import importlib.util

import pytest

from pipeline.errors import OptionError
from pipeline.storage import is_url, open_store


def test_urls_are_told_from_local_paths():
    assert is_url("s3://bucket/prefix") and is_url("gs://bucket")
    assert not is_url("out/shards") and not is_url("/abs/s3://x")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed here")
def test_gs_without_gcsfs_names_the_extra_to_install():
    with pytest.raises(OptionError, match=r"gs://bucket/out: gs:// storage is not installed: pip install 'chatshard\[gcs\]'"):
        open_store("gs://bucket/out/")


def test_keys_are_relative_to_the_prefix_and_a_folder_is_not_a_name_prefix(s3_env):
    pytest.importorskip("s3fs")
    store = open_store(f"s3://{s3_env}/out/")
    assert store.url == f"s3://{s3_env}/out"
    for key in ("train/a.arrow", "training/b.txt", "manifest.json"):
        store.write(key, key.encode())
    assert store.keys() == ["manifest.json", "train/a.arrow", "training/b.txt"]
    assert store.keys("train") == ["train/a.arrow"]
    store.delete(["train/a.arrow"])
    assert store.keys("train") == [] and store.read("training/b.txt") == b"training/b.txt"
