"""Choose the encoder for a tokenizer: tiktoken where it is proven exact, else the HF tokenizer (with proven token
widths where they hold)."""
from __future__ import annotations

import functools
from typing import Any, Callable

from pipeline.encoders import piece_widths, tiktoken_encoder
from pipeline.encoders.hf import HFEncoder, encoder_spec
from pipeline.encoders.rank_cache import load_ranks, store_ranks
from pipeline.encoders.token_spans import NotExpressible
from pipeline.errors import PipelineError
from pipeline.tokenizer import tokenizer_fingerprint


def make_encoder(tokenizer, choice: str, threads: int | None = None) -> tuple[Any, str]:
    """The encoder for `choice` (auto | hf | tiktoken) and why it was chosen. `auto` takes tiktoken when the
    tokenizer is byte-level BPE that tiktoken reproduces exactly on the probe set, else the HF tokenizer, which
    skips offset tracking when the tokenizer's token widths are proven on the probe set."""
    spec = functools.cache(lambda: encoder_spec(tokenizer))  # read once, and only when needed
    hf = HFEncoder(tokenizer)
    if choice != "hf":
        try:
            return _tiktoken(tokenizer, spec, hf, threads), "byte-level BPE, identical to the HF tokenizer on every probe"
        except NotExpressible as why:
            if choice == "tiktoken":
                raise PipelineError(f"--encoder tiktoken: this tokenizer cannot be encoded exactly by tiktoken: {why}") from None
            reason = f"tiktoken not used: {why}"
    else:
        reason = "requested"
    try:
        widths = piece_widths.build(spec(), hf)
    except NotExpressible as why:
        return hf, f"{reason}; offsets tracked by the tokenizer ({why})"
    return HFEncoder(tokenizer, widths), f"{reason}; spans from token widths, identical to its offsets on every probe"


def _tiktoken(tokenizer, spec: Callable[[], dict], hf: HFEncoder, threads: int | None):
    """The proven tiktoken encoder, built from the rank table an earlier run kept (`rank_cache`) when there is one,
    which spares reading the vocabulary back; else from the vocabulary, keeping its table for the next run."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    ranks = load_ranks(fingerprint)
    if ranks is not None:
        try:
            return tiktoken_encoder.build(encoder_spec(tokenizer, with_vocab=False), hf, threads, ranks)
        except NotExpressible:
            pass  # a kept table that does not prove: built again from the vocabulary, which gives the reason
    encoder = tiktoken_encoder.build(spec(), hf, threads)
    store_ranks(fingerprint, encoder.ranks)
    return encoder
