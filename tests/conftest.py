"""Shared fixtures. Real tokenizers and corpora live in ../shared (or $CHATSHARD_SHARED); tests that need them skip
cleanly when it is absent, so the suite runs on the project's own data alone."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CHATSHARD_SHARED", REPO.parent / "shared"))
DEMO_TOKENIZER = REPO / "data" / "tokenizer"
REAL_TOKENIZERS = ["glm4", "qwen2.5", "qwen3", "llama3.2", "llama3", "openhermes-mistral", "gpt2"]


@pytest.fixture(autouse=True, scope="session")
def _tokenizer_cache(tmp_path_factory):
    """The tokenizer cache of the session's runs: a folder of its own, never the user's cache."""
    os.environ["CHATSHARD_CACHE"] = str(tmp_path_factory.mktemp("tokenizer-cache"))
    yield
    del os.environ["CHATSHARD_CACHE"]


def shared_path(*parts: str) -> Path:
    """A path under the shared folder, or a clean skip when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (shared test assets are optional)")
    return path


@functools.lru_cache(maxsize=None)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def real_tokenizer(name: str):
    """A real tokenizer from ../shared/tokenizers, loaded once per test session."""
    return _load_tokenizer(str(shared_path("tokenizers", name)))


def demo_tokenizer():
    """The project's own demo tokenizer (data/tokenizer), loaded once per test session."""
    return _load_tokenizer(str(DEMO_TOKENIZER))


def demo_tokenizer_json() -> dict:
    """The demo tokenizer's tokenizer.json, parsed: a fresh copy to edit."""
    return json.loads(demo_tokenizer().backend_tokenizer.to_str())


def tokenizer_from_json(spec: dict):
    """A fast tokenizer built from an (edited) tokenizer.json."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode) on localhost for the whole session, stopped after.

    Yields the endpoint URL; use `s3_env` to point the standard AWS variables at it."""
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The standard AWS environment pointed at the local server, and a fresh, empty bucket; yields its name."""
    import uuid

    import boto3

    for key, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    yield bucket
