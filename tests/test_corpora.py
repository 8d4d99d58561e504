"""Token parity on real public corpora: every written sample equals `apply_chat_template(tokenize=True)`.

Runs the whole preprocess stage over ../shared/corpora with each real tokenizer, then rebuilds every written row
from its source conversation with `tests.chats.hf_messages` and the tokenizer's own `apply_chat_template`.
"""
from __future__ import annotations

import datasets
import pytest

from pipeline.encoders import piece_widths
from pipeline.encoders.token_spans import NotExpressible
from pipeline.errors import InputError
from pipeline.run import preprocess
from pipeline.stages.ingest import detect_format, detect_formats, read_conversations, resolve_inputs
from pipeline.templates import load_template
from schemas.config import load_config
from schemas.sources import SourceConfig
from tests.chats import hf_messages, hf_tools
from tests.conftest import REAL_TOKENIZERS, real_tokenizer, shared_path
from tests.stages.test_render import _reference_options

pytestmark = pytest.mark.slow
BYTE_LEVEL = {"glm4", "qwen2.5", "qwen3", "llama3", "llama3.2", "gpt2"}


def _is_sft_data(path) -> bool:
    """Chat SFT files only: the corpora also hold a registry (dataset_info.json) and preference pairs."""
    try:
        detect_format(path, SourceConfig())
    except InputError:
        return False
    return True


@pytest.fixture(scope="module")
def corpus_conversations():
    corpora = shared_path("corpora")
    config = load_config(None, {"inputs": [str(p) for p in resolve_inputs([str(corpora)]) if _is_sft_data(p)]})
    paths = resolve_inputs(config.inputs)
    conversations = read_conversations(detect_formats(paths, config.source), config.source)
    return config, {(c.source, c.row): c for c in conversations if hasattr(c, "messages")}


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_every_written_corpus_sample_equals_apply_chat_template(tmp_path, name, corpus_conversations):
    config, conversations = corpus_conversations
    tokenizer = real_tokenizer(name)
    overrides = {"inputs": list(config.inputs), "render.tokenizer": str(shared_path("tokenizers", name)),
                 "truncation.max_length": 10_000_000, "render.allow_special_tokens_in_content": True}
    template = tokenizer.chat_template
    if template is None:
        overrides["render.chat_template"] = "chatml"
        template = load_template("chatml")
    manifest = preprocess(load_config(None, overrides), tmp_path / "out")
    hf_manifest = preprocess(load_config(None, {**overrides, "render.encoder": "hf"}), tmp_path / "hf")
    assert manifest["encoder"]["name"] == ("hf" if name == "openhermes-mistral" else "tiktoken")
    # Shards are the same bytes whichever encoder ran.
    assert [s["sha256"] for s in manifest["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in hf_manifest["splits"]["train"]["shards"]]
    train = datasets.load_from_disk(str(tmp_path / "out"))["train"]
    assert len(train) >= 0.8 * len(conversations), manifest["accounting"]
    options = _reference_options(name)
    for source, row, ids in zip(train["source"], train["row"], train["input_ids"]):
        conv = conversations[(source, row)]
        arguments = dict(tools=hf_tools(conv), chat_template=template)
        messages = hf_messages(conv, **options)
        expected = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **arguments)
        assert ids == list(expected), f"{source}:{row}"
        if name in BYTE_LEVEL:  # these decode losslessly: the round trip gives back the rendered text
            assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False, **arguments)


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_hf_encoder_shards_are_the_same_bytes_with_token_widths_as_with_tracked_offsets(tmp_path, name, corpus_conversations,
                                                                                      monkeypatch):
    """The HF encoder maps spans from token widths where they are proven; the tokenizer's tracked offsets, the
    reference, must give the same shards on every corpus."""
    config, _ = corpus_conversations
    overrides = {"inputs": list(config.inputs), "render.tokenizer": str(shared_path("tokenizers", name)),
                 "truncation.max_length": 10_000_000, "render.allow_special_tokens_in_content": True,
                 "render.encoder": "hf"}
    if real_tokenizer(name).chat_template is None:
        overrides["render.chat_template"] = "chatml"
    widths = preprocess(load_config(None, overrides), tmp_path / "widths")
    assert "spans from token widths" in widths["encoder"]["reason"]

    def refuse(spec, encode_tracked):
        raise NotExpressible("the test asks for tracked offsets")

    monkeypatch.setattr(piece_widths, "build", refuse)
    tracked = preprocess(load_config(None, overrides), tmp_path / "tracked")
    assert "offsets tracked by the tokenizer" in tracked["encoder"]["reason"]
    shards = lambda manifest: {n: [s["sha256"] for s in split["shards"]] for n, split in manifest["splits"].items()}  # noqa: E731
    assert shards(widths) == shards(tracked)
    assert widths["splits"]["train"]["trained_tokens"] > 0
