"""A tiktoken encoder for byte-level BPE tokenizers that tiktoken can express exactly.

Qwen2/2.5/3, Llama 3, GLM-4 and GPT-2 class tokenizers are a split regex plus byte-level BPE whose ranks are the token
ids. tiktoken encodes those several times faster than the HF fast tokenizer. Exactness is proven, not assumed: the
encoder is built only from a tokenizer.json it fully understands, and `build` compares it with the HF tokenizer on a
probe set (CJK, emoji, code, whitespace runs, special tokens, mixed newlines) before it is used. Character spans map
to tokens through byte offsets (token_spans.py): each token's byte length comes from its id, so no offsets are needed
from the encoder.
"""
from __future__ import annotations

import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.encoders.base import Encoded
from pipeline.encoders.piece_widths import byte_level_bytes
from pipeline.encoders.token_spans import ByteSpans, NotExpressible, prove

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TiktokenEncoder:
    """Encodes rendered texts with tiktoken, returning ids and ByteSpans; texts that are not NFC-normalised under an
    NFC tokenizer go to the HF tokenizer (its normaliser would change them).

    The texts are cut into one contiguous slice per core, each encoded by a thread (tiktoken releases the GIL while
    it encodes): one task per slice, not per text as `Encoding.encode_batch` submits them."""

    name = "tiktoken"

    def __init__(self, encoding: Any, token_bytes: np.ndarray, nfc: bool, hf_encode, threads: int | None = None,
                 ranks: dict[bytes, int] | None = None):
        self.encoding = encoding
        self.ranks = ranks  # the rank table it was built from (tiktoken keeps it too), for `rank_cache`
        self.token_bytes = token_bytes
        self.nfc = nfc
        self._hf_encode = hf_encode
        self._threads = max(1, threads or min(8, os.cpu_count() or 1))

    def __call__(self, texts: list[str]):
        direct = [not self.nfc or unicodedata.is_normalized("NFC", t) for t in texts]
        chosen = [t for t, ok in zip(texts, direct) if ok]
        step = -(-len(chosen) // self._threads) or 1
        slices = [chosen[k : k + step] for k in range(0, len(chosen), step)]
        if len(slices) > 1:
            # A pool per call (a few per thousand texts, so cheap) holds no thread across a fork into workers.
            with ThreadPoolExecutor(len(slices), thread_name_prefix="tiktoken") as pool:
                encoded = [e for part in pool.map(self._encode_slice, slices) for e in part]
        else:
            encoded = self._encode_slice(chosen)
        fallback = iter(self._hf_encode([t for t, ok in zip(texts, direct) if not ok]))
        fast = iter(encoded)
        return [next(fast) if ok else next(fallback) for ok in direct]

    def _encode_slice(self, texts: list[str]) -> list:
        out = []
        for text in texts:
            ids = self.encoding.encode_to_numpy(text, allowed_special="all").astype(np.int64)
            out.append(Encoded(ids, ByteSpans(self.token_bytes[ids], text)))
        return out


def build(spec: dict, hf_encode, threads: int | None = None, ranks: dict[bytes, int] | None = None) -> TiktokenEncoder:
    """A verified tiktoken encoder for the tokenizer whose tokenizer.json is `spec`, encoding on `threads` threads
    (default: the cores, up to 8), or NotExpressible with the reason. `ranks`, the rank table kept from an earlier
    run (`rank_cache`), stands in for the vocabulary, which `spec` may then leave out."""
    import tiktoken

    model, normalizer = spec.get("model") or {}, spec.get("normalizer")
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise NotExpressible("not a byte-level BPE model")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise NotExpressible(f"normaliser {normalizer.get('type')} changes text")
    pattern = _split_pattern(spec.get("pre_tokenizer"))
    if ranks is None:
        ranks = {byte_level_bytes(piece): rank for piece, rank in model["vocab"].items()}
    special: dict[str, int] = {}
    for added in spec.get("added_tokens", []):
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            raise NotExpressible(f"added token {added['content']!r} strips or matches whole words")
        special[added["content"]] = added["id"]
    size = max([*ranks.values(), *special.values()]) + 1
    token_bytes = np.zeros(size, dtype=np.int64)
    for piece, rank in ranks.items():
        token_bytes[rank] = len(piece)
    for content, rank in special.items():
        token_bytes[rank] = len(content.encode("utf-8"))
    try:
        encoding = tiktoken.Encoding("chatshard", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)
    except Exception as exc:  # tiktoken refuses some regexes and rank tables
        raise NotExpressible(f"tiktoken cannot build it: {exc}") from None
    encoder = TiktokenEncoder(encoding, token_bytes, normalizer is not None, hf_encode, threads, ranks)
    # the same ids and span answers on every probe (a tokenizer whose offsets leave out whitespace, `trim_offsets`,
    # answers differently from byte ranges)
    prove(encoder, hf_encode, sorted(special))
    return encoder


def _split_pattern(pre_tokenizer: dict | None) -> str:
    """The split regex of a `Split(Isolated) + ByteLevel(no regex)` or `ByteLevel(use_regex)` pre-tokenizer."""
    if pre_tokenizer is None:
        raise NotExpressible("no pre-tokenizer")
    if pre_tokenizer.get("type") == "ByteLevel":
        if pre_tokenizer.get("add_prefix_space") or not pre_tokenizer.get("use_regex", True):
            raise NotExpressible("ByteLevel pre-tokenizer with a prefix space or without its regex")
        return GPT2_PATTERN
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else []
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and "Regex" in steps[0].get("pattern", {})
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("add_prefix_space")
        and not steps[1].get("use_regex", True)
    ):
        return steps[0]["pattern"]["Regex"]
    raise NotExpressible(f"pre-tokenizer {pre_tokenizer.get('type')} is not a split regex plus byte level")
