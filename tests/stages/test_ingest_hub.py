"""Hub datasets by name, offline: a dataset repository laid out in a local hub cache as `huggingface_hub` stores one
(blobs named by their etag, a snapshot folder per commit, README yaml naming the splits' files), read with
HF_HUB_OFFLINE=1 and nothing fetched."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets
import pytest
from huggingface_hub import constants

from pipeline.errors import InputError
from pipeline.stages.ingest import resolve_inputs
from tests.inputs import build, chat_records, convert, same_shards, write_jsonl

COMMIT = "0123456789abcdef0123456789abcdef01234567"
README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
---
# chats
"""


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty local hub cache, offline; `datasets` keeps its own cache files in `tmp_path` too."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    return cache


def cache_repo(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """`files` (path in the repository -> content) as the snapshot of COMMIT, each a link to its blob."""
    root = cache / f"datasets--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    (root / "blobs").mkdir()
    for name, content in files.items():
        blob = root / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, (snapshot / name).parent), snapshot / name)
    return snapshot


def test_a_hub_dataset_by_name_reads_its_train_split_from_the_cache_with_provenance(tmp_path, hub_cache):
    jsonl = write_jsonl(tmp_path / "chats.jsonl", chat_records())
    parquet = convert(jsonl, "parquet", tmp_path / "pq").read_bytes()
    test_split = convert(write_jsonl(tmp_path / "test.jsonl", chat_records(2)), "parquet", tmp_path / "test").read_bytes()
    cache_repo(hub_cache, "org/chats", {"README.md": README.encode(), "data/train-00000-of-00001.parquet": parquet,
                                        "data/test-00000-of-00001.parquet": test_split})
    url = f"hf://datasets/org/chats@{COMMIT}/data/train-00000-of-00001.parquet"
    assert [str(f) for f in resolve_inputs(["hf://datasets/org/chats"])] == [url]
    reference = build([str(jsonl)], tmp_path / "local")
    manifest = build(["hf://datasets/org/chats"], tmp_path / "out")
    same_shards(tmp_path / "out", manifest, tmp_path / "local", reference, {str(jsonl): url})
    assert manifest["inputs"] == [{"path": url, "format": "openai", "bytes": len(parquet),
                                   "etag": hashlib.sha256(parquet).hexdigest(), "version_id": COMMIT}]


def test_a_hub_dataset_missing_from_the_offline_cache_or_without_a_train_split_is_a_clear_error(tmp_path, hub_cache):
    with pytest.raises(InputError, match=r"hf://datasets/org/absent: not in the local hub cache"):
        resolve_inputs(["hf://datasets/org/absent"])
    # only a `dev` file (datasets calls its split `validation`): a training run does not guess which split to read
    cache_repo(hub_cache, "org/evalonly", {"data/dev-0.jsonl": b'{"messages": []}\n'})
    with pytest.raises(InputError, match=r"hf://datasets/org/evalonly: no 'train' split \(it has validation\)"):
        resolve_inputs(["hf://datasets/org/evalonly"])


TWO_CONFIGS = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
- config_name: zh
  data_files:
  - split: train
    path: zh/train-*
  - split: validation
    path: zh/dev-*
---
"""


def test_a_hub_name_chooses_another_config_or_split(tmp_path, hub_cache):
    files = {"README.md": TWO_CONFIGS.encode(), "data/train-0.jsonl": b'{"messages": []}\n',
             "zh/train-0.jsonl": b'{"messages": []}\n', "zh/dev-0.jsonl": b'{"messages": []}\n'}
    cache_repo(hub_cache, "org/multi", files)
    base = f"hf://datasets/org/multi@{COMMIT}"
    assert [str(f) for f in resolve_inputs(["hf://datasets/org/multi"])] == [f"{base}/data/train-0.jsonl"]
    assert [str(f) for f in resolve_inputs(["hf://datasets/org/multi?name=zh"])] == [f"{base}/zh/train-0.jsonl"]
    assert [str(f) for f in resolve_inputs(["hf://datasets/org/multi?name=zh&split=validation"])] == [
        f"{base}/zh/dev-0.jsonl"]
    with pytest.raises(InputError, match=r"no 'validation' split \(it has train\)"):
        resolve_inputs(["hf://datasets/org/multi?split=validation"])
    with pytest.raises(InputError, match=r"unknown option subset \(a hub name takes \?name=CONFIG&split=SPLIT\)"):
        resolve_inputs(["hf://datasets/org/multi?subset=zh"])
    with pytest.raises(InputError, match=r"empty or repeated option split"):
        resolve_inputs(["hf://datasets/org/multi?split=train&split=test"])
