"""Token widths for SentencePiece-style and byte-level BPE: the same span answers as the tokenizer's own offsets,
or a refusal."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, normalizers, trainers
from transformers import PreTrainedTokenizerFast

from pipeline.encoders import piece_widths
from pipeline.encoders.choose import make_encoder
from pipeline.encoders.hf import HFEncoder, encoder_spec
from pipeline.encoders.token_spans import PROBES, NotExpressible, same_spans
from tests.conftest import demo_tokenizer, demo_tokenizer_json, real_tokenizer, tokenizer_from_json
from tests.test_tokenizer import CORPUS

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
PREPEND_AND_REPLACE = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
REPLACE_ONLY = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
NORMALISATIONS = {  # (normalizer, pre_tokenizer) as tokenizer.json files write them
    "prepend_replace (Llama 2, Mistral v1)": (PREPEND_AND_REPLACE, None),
    "metaspace_first (newer conversions)": (None, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}),
    "metaspace_never": (None, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True}),
    "replace_only (Gemma)": (REPLACE_ONLY, None),
}
TEXTS = PROBES + [
    "<|im_start|>user\n你好 world  \n\t🙂<|im_end|>\n<|im_start|>assistant\n好的～🙂 e\u0301<|im_end|>",
    "<s> leading space after a special token</s>", " text that starts with a space", "<|im_start|><|im_end|>", "",
    "x", "🙂", "<|im_start|>\n\n\n", "ends with spaces   ", "Seven.<s>Seven.</s>用中文",
]


def sentencepiece_bpe(normalizer: dict | None, pre_tokenizer: dict | None, **added_flags) -> PreTrainedTokenizerFast:
    """A byte-fallback BPE over `▁` pieces, as Llama 2 / Mistral v1 tokenizers are, trained on a tiny corpus."""
    trained = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS))
    spec = json.loads(trained.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", max(vocab.values()) + 1)
    for token in spec["added_tokens"]:
        token.update(added_flags)
    spec["normalizer"], spec["pre_tokenizer"] = normalizer, pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", additional_special_tokens=SPECIALS[3:])


def _assert_same_as_offsets(tokenizer, texts: list[str]) -> None:
    encoder, reason = make_encoder(tokenizer, "hf")
    assert encoder.widths is not None, reason
    tracked = HFEncoder(tokenizer)
    for text, ours, ref in zip(texts, encoder(texts), tracked(texts)):
        assert ours.input_ids.tolist() == ref.input_ids.tolist(), text[:30]
        assert same_spans(ours.spans, ref.spans, len(text)), text[:30]


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_widths_answer_as_the_offsets_do(normalisation):
    tokenizer = sentencepiece_bpe(*NORMALISATIONS[normalisation])
    _assert_same_as_offsets(tokenizer, TEXTS)
    (family,) = HFEncoder(tokenizer)(["👨‍👩‍👧‍👦"])
    assert tokenizer.convert_ids_to_tokens(family.input_ids.tolist()).count("<0xF0>") == 4  # byte fallback is exercised


def test_a_text_holding_a_literal_space_piece_keeps_the_tracked_offsets():
    """In `a▁b a` a piece's `▁` could be the text's own or a space: such a text is encoded with offsets."""
    tokenizer = sentencepiece_bpe(PREPEND_AND_REPLACE, None)
    encoder, _ = make_encoder(tokenizer, "hf")
    texts = ["a▁b a ▁", "plain text"]
    out = encoder(texts)
    assert type(out[0].spans).__name__ == "OffsetSpans" and type(out[1].spans).__name__ == "ByteSpans"
    _assert_same_as_offsets(tokenizer, texts)


@pytest.mark.parametrize(("tokenizer", "why"), [
    (lambda: sentencepiece_bpe(None, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}), "prepend scheme 'always'"),
    (lambda: sentencepiece_bpe({"type": "NFKC"}, None), "not a SentencePiece"),
    (lambda: sentencepiece_bpe(PREPEND_AND_REPLACE, None, normalized=True), "is normalised"),
    (lambda: sentencepiece_bpe(PREPEND_AND_REPLACE, None, lstrip=True), "strips"),
])
def test_tokenizers_the_rules_do_not_describe_keep_the_tracked_offsets(tokenizer, why):
    tokenizer = tokenizer()
    with pytest.raises(NotExpressible, match=why):
        piece_widths.build(encoder_spec(tokenizer), HFEncoder(tokenizer))
    encoder, reason = make_encoder(tokenizer, "hf")
    assert encoder.widths is None and why in reason and "offsets tracked by the tokenizer" in reason


@pytest.mark.parametrize("marker", [{"continuing_subword_prefix": "##"}, {"end_of_word_suffix": "</w>"}])
def test_pieces_with_subword_markers_are_refused(marker):
    tokenizer = sentencepiece_bpe(PREPEND_AND_REPLACE, None)
    spec = encoder_spec(tokenizer)
    spec["model"].update(marker)
    with pytest.raises(NotExpressible, match="subword markers"):
        piece_widths.build(spec, HFEncoder(tokenizer))


def test_a_rule_that_disagrees_with_the_offsets_on_a_probe_is_refused(monkeypatch):
    """The Prepend normaliser adds `▁` to every run of text; claiming it adds none must fail the proof."""
    monkeypatch.setattr(piece_widths, "_prefix_rule", lambda normalizer, pre_tokenizer: "none")
    tokenizer = sentencepiece_bpe(PREPEND_AND_REPLACE, None)
    with pytest.raises(NotExpressible, match="differ from the tokenizer's offsets on the probe"):
        piece_widths.build(encoder_spec(tokenizer), HFEncoder(tokenizer))


def test_real_sentencepiece_tokenizer_uses_widths_and_answers_as_its_offsets():
    tokenizer = real_tokenizer("openhermes-mistral")
    _assert_same_as_offsets(tokenizer, TEXTS + [tokenizer.apply_chat_template(
        [{"role": "user", "content": " hi  there\n\n你好"}, {"role": "assistant", "content": "🙂 ok\tdone "}], tokenize=False)])


def _demo_with(**changes) -> PreTrainedTokenizerFast:
    """The demo tokenizer (byte-level BPE) with parts of its tokenizer.json replaced."""
    return tokenizer_from_json({**demo_tokenizer_json(), **changes})


def _demo_pre_tokenizer(*before_byte_level: dict) -> dict:
    steps = demo_tokenizer_json()["pre_tokenizer"]["pretokenizers"]
    return {"type": "Sequence", "pretokenizers": [*before_byte_level, *steps]}


def test_byte_level_widths_answer_as_the_offsets_do_with_the_hf_encoder():
    _assert_same_as_offsets(demo_tokenizer(), TEXTS + ["<|user|>\n你好 world  \n\t🙂<|assistant|>\n好的～🙂 e\u0301"])


def test_a_byte_level_tokenizer_tiktoken_cannot_express_gets_the_widths():
    """Several splits before the byte level (as DeepSeek and StarCoder tokenizers have) are not one regex tiktoken
    takes; `auto` then takes the HF tokenizer, still without tracking offsets."""
    tokenizer = _demo_with(pre_tokenizer=_demo_pre_tokenizer({"type": "Digits", "individual_digits": True}))
    encoder, reason = make_encoder(tokenizer, "auto")
    assert encoder.name == "hf" and encoder.widths is not None and "tiktoken not used" in reason, reason
    _assert_same_as_offsets(tokenizer, TEXTS)


def test_text_an_nfc_normaliser_would_change_keeps_the_tracked_offsets():
    tokenizer = _demo_with(normalizer={"type": "NFC"})
    encoder, _ = make_encoder(tokenizer, "hf")
    out = encoder(["cafe\u0301 and re\u0301sume\u0301", "café"])
    assert [type(e.spans).__name__ for e in out] == ["OffsetSpans", "ByteSpans"]
    _assert_same_as_offsets(tokenizer, ["cafe\u0301 and re\u0301sume\u0301", "café", *PROBES])


@pytest.mark.parametrize(("changes", "why"), [
    ({"pre_tokenizer": _demo_pre_tokenizer({"type": "Split", "pattern": {"String": "x"}, "behavior": "Removed", "invert": False})}, "may drop text"),
    ({"pre_tokenizer": _demo_pre_tokenizer({"type": "WhitespaceSplit"})}, "may drop text"),
    ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}}, "adds a prefix space"),
    ({"normalizer": {"type": "Lowercase"}}, "changes text"),
    ({"post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}}, "differ from the tokenizer's offsets"),
])
def test_byte_level_tokenizers_the_rules_do_not_describe_keep_the_tracked_offsets(changes, why):
    tokenizer = _demo_with(**changes)
    with pytest.raises(NotExpressible, match=why):
        piece_widths.build(encoder_spec(tokenizer), HFEncoder(tokenizer))
