"""Token widths from ids, so the HF tokenizer can encode without tracking offsets.

Tracking character offsets through a tokenizer's normalisation is about a fifth of its time, yet for two families of
BPE tokenizers every token's width in bytes of the original text follows from its id alone:
- byte-level BPE (GPT-2, Qwen, Llama 3, GLM-4, DeepSeek, StarCoder class): a piece's characters stand for one byte
  each. This serves the byte-level tokenizers tiktoken cannot express (several split regexes in sequence) and
  `--encoder hf`;
- SentencePiece-style BPE (Llama 2, Mistral v1, OpenHermes, Zephyr, TinyLlama, Gemma class): pieces where `▁` stands
  for a space, byte-fallback tokens `<0xNN>` for anything else, and a `▁` prefix the tokenizer adds: a piece with `▁`
  read as a space, one byte for a byte token, one byte less for the token that carries an added prefix.
The widths are used only for a tokenizer.json these rules fully describe, only once they give the same span answers
as the tokenizer's own offsets on every probe, and not for a text the tokenizer would change or read ambiguously: one
that is not NFC-normalised under an NFC tokenizer, or one holding a literal `▁` (a piece's `▁` could then be either).
"""
from __future__ import annotations

import unicodedata

import numpy as np

from pipeline.encoders.base import Encoded
from pipeline.encoders.token_spans import ByteSpans, NotExpressible, prove

SPACE_PIECE = "\u2581"
_BYTE_PIECES = {f"<0x{b:02X}>" for b in range(256)}


def _bytes_to_unicode() -> dict[int, str]:
    """The byte <-> printable character table of byte-level BPE (GPT-2)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


_TO_LATIN1 = {ord(c): b for b, c in _bytes_to_unicode().items()}
_TO_LATIN1.update({b: 0x10FFFF for b in range(256) if b not in _TO_LATIN1})
"""A byte-level token's characters -> its bytes as Latin-1 characters; the 0-255 characters outside the byte-level
alphabet (raw spaces, controls) map to U+10FFFF, which Latin-1 cannot encode, so a non-byte-level token fails."""


def byte_level_bytes(piece: str) -> bytes:
    """The bytes a byte-level BPE piece stands for; NotExpressible when a character is outside the byte alphabet."""
    try:
        return piece.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        raise NotExpressible(f"vocabulary entry {piece!r} is not byte-level") from None


class PieceWidths:
    """Each token's width in bytes of the text it came from; where the tokenizer adds a `▁` prefix: to every run of
    text between added tokens (`every_run`), to the text's start (`text_start`), or nowhere (`none`); and which texts
    the widths describe (`covers`)."""

    def __init__(self, widths: np.ndarray, added: np.ndarray, prefix: str, *, ambiguous: str | None, nfc: bool):
        self.widths, self.added, self.prefix = widths, added, prefix
        self.ambiguous, self.nfc = ambiguous, nfc

    def covers(self, text: str) -> bool:
        return (self.ambiguous is None or self.ambiguous not in text) and (
            not self.nfc or unicodedata.is_normalized("NFC", text))

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
    if model.get("type") != "BPE":
        raise NotExpressible("not a BPE model")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise NotExpressible("its pieces carry subword markers that are not text")
    vocab: dict[str, int] = model["vocab"]
    added_tokens = spec.get("added_tokens", [])
    size = max([*vocab.values(), *(a["id"] for a in added_tokens)]) + 1
    widths, added = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=bool)
    if model.get("byte_fallback"):
        prefix, nfc = _prefix_rule(spec.get("normalizer"), spec.get("pre_tokenizer")), False
        if not _BYTE_PIECES <= vocab.keys() or SPACE_PIECE not in vocab:
            raise NotExpressible("byte-fallback tokens or the ▁ piece are missing from the vocabulary")
        for piece, token in vocab.items():
            widths[token] = 1 if piece in _BYTE_PIECES else len(piece.replace(SPACE_PIECE, " ").encode("utf-8"))
    else:
        prefix, nfc = "none", _byte_level_normaliser(spec.get("normalizer"))
        _check_byte_level_pre_tokenizer(spec.get("pre_tokenizer"))
        for piece, token in vocab.items():
            widths[token] = len(byte_level_bytes(piece))
    for token in added_tokens:
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word") or (token.get("normalized") and spec.get("normalizer")):
            raise NotExpressible(f"added token {token['content']!r} strips, matches whole words or is normalised")
        widths[token["id"]], added[token["id"]] = len(token["content"].encode("utf-8")), True
    pieces = PieceWidths(widths, added, prefix, ambiguous=SPACE_PIECE if model.get("byte_fallback") else None, nfc=nfc)

    def from_widths(texts: list[str]) -> list[Encoded]:  # the tokenizer's ids, spans from the widths
        return [Encoded(e.input_ids, pieces.spans(e.input_ids, t)) for e, t in zip(encode_tracked(texts), texts)]

    prove(from_widths, encode_tracked, [t["content"] for t in added_tokens], covers=pieces.covers)
    return pieces


def _byte_level_normaliser(normalizer: dict | None) -> bool:
    """Whether texts must be NFC-normalised to be covered; NotExpressible for a normaliser that changes text."""
    if normalizer is None:
        return False
    if normalizer.get("type") == "NFC":
        return True
    raise NotExpressible(f"normaliser {normalizer.get('type')} changes text")


_TEXT_KEEPING_SPLITS = {"Split", "Digits", "Punctuation"}


def _check_byte_level_pre_tokenizer(pre_tokenizer: dict | None) -> None:
    """A ByteLevel step without a prefix space, after splits that keep every character (no `Removed` behaviour)."""
    steps = (pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]) if pre_tokenizer else []
    kinds = [step.get("type") for step in steps]
    if kinds.count("ByteLevel") != 1 or kinds[-1] != "ByteLevel":
        raise NotExpressible("not a byte-level BPE model")
    if steps[-1].get("add_prefix_space"):
        raise NotExpressible("its ByteLevel pre-tokenizer adds a prefix space")
    for step in steps[:-1]:
        if step.get("type") not in _TEXT_KEEPING_SPLITS or step.get("behavior") == "Removed":
            raise NotExpressible(f"pre-tokenizer step {step.get('type')} may drop text")


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
