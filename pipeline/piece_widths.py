"""Token widths for SentencePiece-style BPE tokenizers, so the HF tokenizer can encode without tracking offsets.

Llama 2, Mistral v1, OpenHermes, Zephyr, TinyLlama and Gemma class tokenizers are BPE over pieces where `▁` stands
for a space, with byte-fallback tokens `<0xNN>` for anything else, and a `▁` prefix added to the text. Tracking
character offsets through that normalisation is a fifth of the HF tokenizer's time; yet every token's width in
bytes of the original text follows from its id: its piece with `▁` read as a space, one byte for a byte token, and
one byte less for the token that carries an added prefix. The widths are used only for a tokenizer.json these rules
fully describe, only once they give the same span answers as the tokenizer's own offsets on every probe, and never
for a text holding a literal `▁` (there a piece's `▁` could be either).
"""
from __future__ import annotations

import numpy as np

from pipeline.token_spans import ByteSpans, NotExpressible, probe_texts, same_spans

SPACE_PIECE = "\u2581"
_BYTE_PIECES = {f"<0x{b:02X}>" for b in range(256)}


class PieceWidths:
    """Each token's width in bytes of the text it came from, and where the tokenizer adds a `▁` prefix: to every
    run of text between added tokens (`every_run`), to the text's start (`text_start`), or nowhere (`none`)."""

    def __init__(self, widths: np.ndarray, added: np.ndarray, prefix: str):
        self.widths, self.added, self.prefix = widths, added, prefix

    @staticmethod
    def covers(text: str) -> bool:
        return SPACE_PIECE not in text

    def spans(self, ids: np.ndarray, text: str) -> ByteSpans:
        widths = self.widths[ids]
        if len(ids) and self.prefix != "none":
            added = self.added[ids]
            prefixed = ~added  # a run's first token carries the prefix
            if self.prefix == "every_run":
                prefixed[1:] &= added[:-1]
            else:  # only a run at the text's start, and only when the text does not start with a space
                prefixed[1:] = False
                prefixed[0] &= not text.startswith(" ")
            widths = widths - prefixed
        return ByteSpans(widths, text)


def build(spec: dict, encode_tracked) -> PieceWidths:
    """PieceWidths for the tokenizer whose tokenizer.json is `spec`, proven against `encode_tracked` (texts ->
    Encoded with the HF encodings), or NotExpressible."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise NotExpressible("not a byte-fallback BPE model")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise NotExpressible("its pieces carry subword markers that are not text")
    prefix = _prefix_rule(spec.get("normalizer"), spec.get("pre_tokenizer"))
    vocab: dict[str, int] = model["vocab"]
    if not _BYTE_PIECES <= vocab.keys() or SPACE_PIECE not in vocab:
        raise NotExpressible("byte-fallback tokens or the ▁ piece are missing from the vocabulary")
    size = max([*vocab.values(), *(a["id"] for a in spec.get("added_tokens", []))]) + 1
    widths, added = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=bool)
    for piece, token in vocab.items():
        widths[token] = 1 if piece in _BYTE_PIECES else len(piece.replace(SPACE_PIECE, " ").encode("utf-8"))
    for token in spec.get("added_tokens", []):
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word") or token.get("normalized"):
            raise NotExpressible(f"added token {token['content']!r} strips, matches whole words or is normalised")
        widths[token["id"]], added[token["id"]] = len(token["content"].encode("utf-8")), True
    pieces = PieceWidths(widths, added, prefix)
    _prove(pieces, encode_tracked, [t["content"] for t in spec.get("added_tokens", [])])
    return pieces


def _prefix_rule(normalizer: dict | None, pre_tokenizer: dict | None) -> str:
    """Where the `▁` prefix goes, for the two ways tokenizer.json writes a SentencePiece normalisation: normalisers
    (Prepend `▁` to every run, then Replace spaces) or a Metaspace pre-tokenizer."""
    steps = (normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]) if normalizer else []
    kinds = [step.get("type") for step in steps]
    replaces_spaces = bool(steps) and steps[-1] == {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_PIECE}
    if pre_tokenizer is None and replaces_spaces and kinds == ["Prepend", "Replace"] and steps[0].get("prepend") == SPACE_PIECE:
        return "every_run"
    if pre_tokenizer is None and replaces_spaces and kinds == ["Replace"]:
        return "none"
    if not steps and pre_tokenizer and pre_tokenizer.get("type") == "Metaspace" and pre_tokenizer.get("replacement") == SPACE_PIECE:
        scheme = pre_tokenizer.get("prepend_scheme")
        if scheme in ("first", "never"):
            return {"first": "text_start", "never": "none"}[scheme]
        raise NotExpressible(f"Metaspace prepend scheme {scheme!r}")
    raise NotExpressible("normaliser and pre-tokenizer are not a SentencePiece `▁` normalisation")


def _prove(pieces: PieceWidths, encode_tracked, special: list[str]) -> None:
    """The widths must answer every span question as the tokenizer's offsets do, on every probe. One text per call:
    the HF tokenizer then encodes without its thread pool, so the process can still fork workers cleanly."""
    for probe in probe_texts(special):
        (reference,) = encode_tracked([probe])
        if not same_spans(pieces.spans(reference.input_ids, probe), reference.spans, len(probe)):
            raise NotExpressible(f"token widths differ from the tokenizer's offsets on the probe {probe[:30]!r}")
