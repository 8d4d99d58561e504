"""Remote inputs on a real S3-compatible server (the `s3_env` fixture): the same shards as the local files, a manifest
entry by etag and size, storage options from the config, and a remote path never taken for a local one."""
from __future__ import annotations

import json

import boto3
import pytest

from pipeline.errors import InputError
from pipeline.stages.ingest import resolve_inputs
from tests.inputs import build, chat_records, convert, same_shards, write_jsonl

pytest.importorskip("s3fs")


def _upload(bucket: str, key: str, path) -> str:
    boto3.client("s3").upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


def test_s3_inputs_give_the_same_shards_as_the_local_files_and_are_fingerprinted_by_etag(tmp_path, s3_env, monkeypatch):
    jsonl = write_jsonl(tmp_path / "chats.jsonl", chat_records())
    parquet = convert(jsonl, "parquet", tmp_path / "pq")
    urls = {str(jsonl): _upload(s3_env, "data/chats.jsonl", jsonl), str(parquet): _upload(s3_env, "data/x/chats.parquet", parquet)}
    (tmp_path / "notes.txt").write_text("not data")
    _upload(s3_env, "data/notes.txt", tmp_path / "notes.txt")
    (tmp_path / "rejects.jsonl").write_text('{"source": "x", "reason": "invalid_json"}\n')
    for key in ("data/old-out/.chatshard.json", "data/old-out/rejects.jsonl"):  # an earlier output: not input
        _upload(s3_env, key, tmp_path / "rejects.jsonl")
    reference = build([str(jsonl), str(parquet)], tmp_path / "local")
    monkeypatch.chdir(tmp_path)  # `s3:/BUCKET/...` below is a local folder: never the input's place
    out = tmp_path / "s3:" / s3_env / "data" / "out"
    manifest = build([f"s3://{s3_env}/data/"], out)
    same_shards(out, manifest, tmp_path / "local", reference, urls)
    s3 = boto3.client("s3")
    for entry, key in zip(manifest["inputs"], ["data/chats.jsonl", "data/x/chats.parquet"], strict=True):
        head = s3.head_object(Bucket=s3_env, Key=key)
        assert entry == {"path": f"s3://{s3_env}/{key}", "format": "openai", "bytes": head["ContentLength"],
                         "etag": head["ETag"].strip('"')}


def test_storage_options_from_the_config_reach_the_store_and_stay_out_of_the_manifest(tmp_path, s3_env, s3_server,
                                                                                     monkeypatch):
    jsonl = write_jsonl(tmp_path / "chats.jsonl", chat_records(4))
    url = _upload(s3_env, "chats.jsonl", jsonl)
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    options = {"endpoint_url": s3_server, "key": "testing-key", "secret": "testing-secret"}
    manifest = build([f"s3://{s3_env}/*.jsonl"], tmp_path / "out", **{"source.storage_options": options})
    assert manifest["accounting"]["written"] == 4 and manifest["inputs"][0]["path"] == url
    assert "testing-" not in json.dumps(manifest) and "storage_options" not in manifest["config"]["source"]


def test_a_missing_remote_input_and_a_store_without_its_package_are_clear_errors(s3_env):
    with pytest.raises(InputError, match=rf"s3://{s3_env}/nothing/: no such file"):
        resolve_inputs([f"s3://{s3_env}/nothing/"])
    with pytest.raises(InputError, match=r"gs://bucket/x\.jsonl: .*pip install 'chatshard\[gcs\]'"):
        resolve_inputs(["gs://bucket/x.jsonl"])
