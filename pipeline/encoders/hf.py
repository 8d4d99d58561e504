"""Encode rendered texts with the HF fast tokenizer in large batches, with offsets or with proven token widths.

The Rust tokenizer does the work on all cores; everything here is kept off that hot path.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from pipeline.encoders.base import Encoded
from pipeline.encoders.piece_widths import PieceWidths
from pipeline.encoders.token_spans import OffsetSpans


def encode_batch(tokenizer, texts: list[str]) -> list[Encoded]:
    """Tokenize rendered texts in one batched Rust call; the template already wrote every special token."""
    if not texts:
        return []
    # What `tokenizer(texts, add_special_tokens=False)` runs, without building Python offset lists: spans are mapped
    # with the encodings' own char_to_token, a few calls per message instead of a tuple per token.
    backend = tokenizer.backend_tokenizer
    if len(texts) == 1:  # no thread pool for one text: a process that has not started one can fork safely
        encodings = [backend.encode(texts[0], add_special_tokens=False)]
    else:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
    return [Encoded(np.array(e.ids, dtype=np.int64), OffsetSpans(e, len(text))) for e, text in zip(encodings, texts)]


class HFEncoder:
    """The HF fast tokenizer's batch call: the reference every other encoder is proven against. With proven
    `PieceWidths` (byte-level or SentencePiece-style BPE) it encodes without tracking offsets, and maps spans from
    token widths."""

    name = "hf"

    def __init__(self, tokenizer, widths: PieceWidths | None = None):
        self.tokenizer = tokenizer
        self.widths = widths

    def __call__(self, texts: list[str]) -> list[Encoded]:
        if self.widths is None or len(texts) < 2:
            return encode_batch(self.tokenizer, texts)
        covered = [self.widths.covers(t) for t in texts]
        fast = iter(self.tokenizer.backend_tokenizer.encode_batch_fast([t for t, ok in zip(texts, covered) if ok],
                                                                       add_special_tokens=False))
        tracked = iter(encode_batch(self.tokenizer, [t for t, ok in zip(texts, covered) if not ok]))
        return [self._from_widths(next(fast), text) if ok else next(tracked) for text, ok in zip(texts, covered)]

    def _from_widths(self, encoding, text: str) -> Encoded:
        ids = np.array(encoding.ids, dtype=np.int64)
        return Encoded(ids, self.widths.spans(ids, text))


def encoder_spec(tokenizer, *, with_vocab: bool = True) -> dict:
    """The parts of the loaded tokenizer.json that the encoder builders read, in its shape: the model's type, flags and
    vocabulary (left out without `with_vocab`: reading it back takes a sixth of a second for a 150k vocabulary), the
    normaliser, pre-tokenizer and added tokens. Taken from the backend part by part: parsing the whole JSON (half of
    it merges) takes a third of a second for a 150k vocabulary."""
    backend = tokenizer.backend_tokenizer
    model: dict[str, Any] = {"type": type(backend.model).__name__}
    if model["type"] == "BPE":
        if with_vocab:
            model["vocab"] = backend.get_vocab(with_added_tokens=False)
        model.update(byte_fallback=backend.model.byte_fallback,
                     continuing_subword_prefix=backend.model.continuing_subword_prefix,
                     end_of_word_suffix=backend.model.end_of_word_suffix)
    added = [{"id": i, "content": t.content, "single_word": t.single_word, "lstrip": t.lstrip, "rstrip": t.rstrip,
              "normalized": t.normalized, "special": t.special}
             for i, t in sorted(backend.get_added_tokens_decoder().items())]
    return {"model": model, "normalizer": component_json(backend.normalizer),
            "pre_tokenizer": component_json(backend.pre_tokenizer), "added_tokens": added}


def component_json(component) -> dict | None:
    """One component of a loaded tokenizer (normaliser, pre-tokenizer, decoder) as its tokenizer.json part, without
    serialising the whole tokenizer."""
    return None if component is None else json.loads(component.__getstate__())
