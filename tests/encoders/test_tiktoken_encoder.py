"""The tiktoken encoder: identical ids and span semantics to the HF tokenizer, or a refusal with the reason."""
from __future__ import annotations

import pytest

from pipeline.encoders.choose import make_encoder
from pipeline.encoders.hf import HFEncoder, encoder_spec
from pipeline.encoders.tiktoken_encoder import build
from pipeline.encoders.token_spans import PROBES, NotExpressible, same_spans
from pipeline.errors import PipelineError
from tests.conftest import REAL_TOKENIZERS, demo_tokenizer, demo_tokenizer_json, real_tokenizer, tokenizer_from_json
from tests.test_tokenizer import sentencepiece_style

TEXTS = PROBES + ["<|user|>\n你好 world  \n\t🙂<|assistant|>\n好的～🙂 e\u0301", ""]


def _same_as_hf(tokenizer, texts):
    hf = HFEncoder(tokenizer)
    encoder = build(encoder_spec(tokenizer), hf)
    for text, ours, ref in zip(texts, encoder(texts), hf(texts)):
        assert ours.input_ids.tolist() == ref.input_ids.tolist(), text[:30]
        assert same_spans(ours.spans, ref.spans, len(text)), text[:30]
        backwards = range(len(text), -1, -1)  # questions out of order
        assert ours.spans.locate(backwards, backwards) == tuple(
            answers[::-1] for answers in ref.spans.locate(range(len(text) + 1), range(len(text) + 1))), text[:30]


def test_demo_tokenizer_ids_and_span_maps_equal_hf():
    _same_as_hf(demo_tokenizer(), TEXTS)


@pytest.mark.parametrize("name", [n for n in REAL_TOKENIZERS if n != "openhermes-mistral"])
def test_real_byte_level_tokenizers_equal_hf(name):
    tokenizer = real_tokenizer(name)
    specials = [t.content for t in tokenizer.added_tokens_decoder.values()][:6]
    _same_as_hf(tokenizer, TEXTS + ["".join(specials) + " text between " + specials[0]])


def test_text_that_nfc_would_change_goes_to_the_hf_tokenizer():
    tokenizer = real_tokenizer("qwen2.5")  # NFC normaliser
    hf = HFEncoder(tokenizer)
    encoder = build(encoder_spec(tokenizer), hf)
    text = "cafe\u0301 and re\u0301sume\u0301"
    (ours,), (ref,) = encoder([text]), hf([text])
    assert ours.input_ids.tolist() == ref.input_ids.tolist()
    assert type(ours.spans).__name__ == "OffsetSpans"  # the HF encoding's tracked offsets


def test_sentencepiece_is_not_expressible_and_auto_falls_back_saying_why():
    encoder, reason = make_encoder(sentencepiece_style(), "auto")
    assert encoder.name == "hf" and "not a byte-level BPE model" in reason
    with pytest.raises(PipelineError, match="cannot be encoded exactly by tiktoken"):
        make_encoder(sentencepiece_style(), "tiktoken")


def test_a_normaliser_that_changes_text_is_refused():
    changed = tokenizer_from_json({**demo_tokenizer_json(), "normalizer": {"type": "NFKC"}})
    with pytest.raises(NotExpressible, match="NFKC"):
        build(encoder_spec(changed), HFEncoder(changed))


@pytest.mark.parametrize("entry", ["a b", "tab\t", "中文"])
def test_a_vocabulary_entry_outside_the_byte_alphabet_is_refused(entry):
    """Raw spaces, controls or CJK in the vocabulary mean it is not byte-level BPE: no byte string to give tiktoken."""
    spec = demo_tokenizer_json()
    spec["model"]["vocab"][entry] = len(spec["model"]["vocab"])
    changed = tokenizer_from_json(spec)
    with pytest.raises(NotExpressible, match="not byte-level"):
        build(encoder_spec(changed), HFEncoder(changed))


def test_offsets_that_leave_out_whitespace_mean_no_tiktoken():
    """With `trim_offsets` the tokenizer's offsets of `Ġword` start at `w`, not at the space the token holds: the ids
    are the same, the span answers are not, and the shards would differ. The HF encoder keeps its offsets."""
    spec = demo_tokenizer_json()
    spec["post_processor"]["trim_offsets"] = True
    changed = tokenizer_from_json(spec)
    with pytest.raises(NotExpressible, match="span answers differ"):
        build(encoder_spec(changed), HFEncoder(changed))
    encoder, reason = make_encoder(changed, "auto")
    assert encoder.name == "hf" and "span answers differ" in reason


def test_any_difference_on_the_probes_means_no_tiktoken():
    tokenizer = demo_tokenizer()
    hf = HFEncoder(tokenizer)

    def slightly_off(texts):
        encoded = hf(texts)
        if texts == [PROBES[3]]:
            encoded[0].input_ids[0] += 1
        return encoded

    with pytest.raises(NotExpressible, match="ids differ"):
        build(encoder_spec(tokenizer), slightly_off)
