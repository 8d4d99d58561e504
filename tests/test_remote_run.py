"""preprocess into object storage, on a real S3-compatible server: the same bytes as a local run, resume after
`kill -9` from the journal kept under the prefix, the ledger rules, and `datasets.load_from_disk` on the output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.engines.local as local_engine
from pipeline.errors import OutputError
from pipeline.outputs import LEDGER
from pipeline.remote_run import preprocess_to_store
from pipeline.run import preprocess
from pipeline.storage import Store, open_store
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER, REPO
from tests.test_run import Counted

pytest.importorskip("s3fs")

ROWS = 40
OVERRIDES = {"output.rows_per_shard": 10, "output.eval_split": 0.2, "output.batch_size": 4}


@pytest.fixture
def chats(tmp_path) -> Path:
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {k} + {k}?"},
                          {"role": "assistant", "content": f"{k} + {k} = {2 * k}."}]} for k in range(ROWS)]
    rows.insert(7, {"messages": [{"role": "user", "content": "no answer"}]})  # a reject, so rejects.jsonl has a row
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(data: Path, **overrides):
    return load_config(None, {"inputs": [str(data)], "render.tokenizer": str(DEMO_TOKENIZER), **OVERRIDES, **overrides})


def _remote_files(url: str) -> dict[str, bytes]:
    store = open_store(url)
    return {key: store.read(key) for key in store.keys()}


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same_output(local: Path, url: str) -> None:
    """Every file of the local output, byte for byte, and nothing else but the ledger (no journal left)."""
    remote, here = _remote_files(url), _local_files(local)
    assert remote.pop(LEDGER) and here.pop(LEDGER)
    assert sorted(remote) == sorted(here)
    for key, data in here.items():
        assert remote[key] == data, key


@pytest.fixture
def local_output(tmp_path, chats) -> Path:
    out = tmp_path / "local"
    preprocess(_config(chats), out)
    return out


def test_shards_rejects_and_manifest_on_s3_are_the_bytes_of_a_local_run(s3_env, chats, local_output):
    url = f"s3://{s3_env}/runs/demo"
    manifest = preprocess_to_store(_config(chats), url)
    assert manifest["accounting"]["rejected"] == 1 and len(manifest["splits"]["train"]["shards"]) > 1
    _assert_same_output(local_output, url)
    ledger = json.loads(open_store(url).read(LEDGER))
    first = f"train/data-00000-of-{len(manifest['splits']['train']['shards']):05d}.arrow"
    assert ledger["kind"] == "shards" and first in ledger["paths"] and ledger["scratch"] == []


def test_each_shard_is_uploaded_once_into_the_journal_and_published_by_a_server_side_copy(s3_env, chats, local_output,
                                                                                          monkeypatch):
    uploaded, copied = [], []
    upload, copy = Store.upload, getattr(Store, "copy", None)

    def counted_upload(self, files):
        files = list(files)
        uploaded.extend(rel for _, rel in files)
        upload(self, files)

    def counted_copy(self, pairs):
        pairs = list(pairs)
        copied.extend(pairs)
        copy(self, pairs)

    monkeypatch.setattr(Store, "upload", counted_upload)
    monkeypatch.setattr(Store, "copy", counted_copy, raising=False)
    url = f"s3://{s3_env}/out"
    manifest = preprocess_to_store(_config(chats), url)
    shards = sorted(f"{split}/{shard['file']}" for split, info in manifest["splits"].items() for shard in info["shards"])
    assert sorted(dest for _, dest in copied) == shards
    assert all(source.startswith(".work/chunk-") and source.endswith(".arrow") for source, _ in copied)
    arrows = [rel for rel in uploaded if rel.endswith(".arrow")]
    assert sorted(arrows) == sorted(source for source, _ in copied)  # one PUT per shard, into the journal
    _assert_same_output(local_output, url)


def test_a_rerun_with_fewer_shards_removes_the_ones_it_no_longer_writes(s3_env, chats, tmp_path):
    url = f"s3://{s3_env}/out"
    preprocess_to_store(_config(chats), url)
    preprocess_to_store(_config(chats, **{"output.rows_per_shard": 100}), url)
    local = tmp_path / "one-shard"
    preprocess(_config(chats, **{"output.rows_per_shard": 100}), local)
    _assert_same_output(local, url)


_KILL_AFTER_FIRST_CHUNK = """
import os, signal, sys
import pipeline.remote_run as remote_run
from schemas.config import load_config

push = remote_run.JournalMirror.push
def push_then_die(self):
    push(self)
    os.kill(os.getpid(), signal.SIGKILL)  # the first chunk is journaled on the prefix; nothing else is
remote_run.JournalMirror.push = push_then_die
remote_run.preprocess_to_store(load_config(None, {json}), sys.argv[1])
"""


def test_a_run_killed_after_its_first_chunk_resumes_on_s3_to_the_same_bytes(s3_env, chats, local_output, monkeypatch):
    url = f"s3://{s3_env}/out"
    config = {"inputs": [str(chats)], "render.tokenizer": str(DEMO_TOKENIZER), **OVERRIDES}
    script = _KILL_AFTER_FIRST_CHUNK.replace("{json}", repr(config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", script, url], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = open_store(url).keys()
    assert "manifest.json" not in left and ".work/chunk-00000.json" in left and ".work/chunk-00001.json" not in left

    written = []
    monkeypatch.setattr(local_engine, "ChunkFiles", Counted(written))
    preprocess_to_store(_config(chats), url)  # a fresh staging directory: as on another machine
    assert written[0] == 1  # chunk 0 came from the journal on the prefix
    _assert_same_output(local_output, url)


def test_a_prefix_holding_objects_without_a_ledger_is_refused_and_left_alone(s3_env, chats):
    url = f"s3://{s3_env}/theirs"
    open_store(url).write("notes/x.txt", b"someone's")
    with pytest.raises(OutputError, match=r"s3://.*/theirs: not empty and not an output of chatshard \(it holds notes/\)"):
        preprocess_to_store(_config(chats), url)
    assert _remote_files(url) == {"notes/x.txt": b"someone's"}


def test_a_foreign_object_where_the_output_goes_is_refused_before_any_work(s3_env, chats):
    url = f"s3://{s3_env}/out"
    preprocess_to_store(_config(chats), url)
    open_store(url).write("train/thesis.txt", b"mine")
    before = _remote_files(url)
    with pytest.raises(OutputError, match=r"/out/train/thesis.txt: not written by chatshard"):
        preprocess_to_store(_config(chats, **{"output.rows_per_shard": 100}), url)
    assert _remote_files(url) == before


def test_storage_options_in_the_config_reach_the_store_and_stay_out_of_the_manifest(s3_env, chats, monkeypatch):
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "s3cr3t-value"}
    url = f"s3://{s3_env}/out"
    preprocess_to_store(_config(chats, **{"output.storage_options": options}), url)
    manifest = open_store(url, options).read("manifest.json")
    assert b"s3cr3t-value" not in manifest and "storage_options" not in json.loads(manifest)["config"]["output"]


def test_an_output_prefix_overlapping_an_input_url_is_refused(s3_env, chats):
    config = load_config(None, {"inputs": [f"s3://{s3_env}/data/chats.jsonl"], "render.tokenizer": str(DEMO_TOKENIZER)})
    with pytest.raises(OutputError, match="the output prefix holds the input"):
        preprocess_to_store(config, f"s3://{s3_env}/data")


def test_datasets_load_from_disk_opens_the_output_on_s3(s3_env, chats):
    datasets = pytest.importorskip("datasets")
    url = f"s3://{s3_env}/out"
    manifest = preprocess_to_store(_config(chats), url)
    options = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"], "key": "testing", "secret": "testing"}
    loaded = datasets.load_from_disk(url, storage_options=options)
    assert {split: len(loaded[split]) for split in loaded} == {s: v["rows"] for s, v in manifest["splits"].items()}
    assert loaded["train"][0]["input_ids"] and loaded["train"][0]["labels"]


def test_the_command_line_writes_to_an_s3_prefix_and_checks_and_shows_it_there(s3_env, chats, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "cache"))
    url = f"s3://{s3_env}/cli"
    result = CliRunner().invoke(main, ["preprocess", str(chats), "--tokenizer", str(DEMO_TOKENIZER), "--out", url])
    assert result.exit_code == 0, result.output
    assert f"wrote {url} (rejects: {url}/rejects.jsonl)" in result.output
    assert "manifest.json" in open_store(url).keys()
    checked = CliRunner().invoke(main, ["check", url, "--json"])
    statuses = {c["name"]: c["status"] for c in json.loads(checked.output)["checks"]}
    assert statuses["checksums"] == "pass" and statuses["accounting"] == "pass", checked.output
    shown = CliRunner().invoke(main, ["show", url, "--no-color"])
    assert shown.exit_code == 0 and "[[" in shown.output, shown.output


def test_the_commands_that_read_an_output_take_storage_options_instead_of_the_environment(s3_env, chats, tmp_path,
                                                                                          monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main

    url = f"s3://{s3_env}/opts"
    preprocess_to_store(_config(chats), url)
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "cache"))
    options = ["--storage-option", f"endpoint_url={endpoint}", "--storage-option", "key=testing",
               "--storage-option", "secret=testing"]
    runs = {
        "check": ["check", url, "--json"],
        "show": ["show", url, "--no-color"],
        "export": ["export", url, "--for", "trl", "--out", str(tmp_path / "trl")],
        "diff": ["diff", url, url, "--json"],
    }
    for name, args in runs.items():
        result = CliRunner().invoke(main, [*args, *options])
        assert result.exit_code == 0, (name, result.output)
    assert (tmp_path / "trl" / "train").is_dir()
    bad = CliRunner().invoke(main, ["check", url, "--storage-option", "endpoint_url"])
    assert bad.exit_code == 2 and "--storage-option: 'endpoint_url' is not KEY=VALUE" in bad.output, bad.output
