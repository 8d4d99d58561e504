"""Choose the encoder for a tokenizer: tiktoken where it is proven exact, else the HF tokenizer (with proven token
widths where they hold)."""
from __future__ import annotations

from typing import Any

from pipeline.encoders import piece_widths, tiktoken_encoder
from pipeline.encoders.hf import HFEncoder, encoder_spec
from pipeline.encoders.token_spans import NotExpressible
from pipeline.errors import PipelineError


def make_encoder(tokenizer, choice: str, threads: int | None = None) -> tuple[Any, str]:
    """The encoder for `choice` (auto | hf | tiktoken) and why it was chosen. `auto` takes tiktoken when the
    tokenizer is byte-level BPE that tiktoken reproduces exactly on the probe set, else the HF tokenizer, which
    skips offset tracking when the tokenizer's token widths are proven on the probe set."""
    spec = encoder_spec(tokenizer)
    hf = HFEncoder(tokenizer)
    if choice != "hf":
        try:
            return tiktoken_encoder.build(spec, hf, threads), "byte-level BPE, identical to the HF tokenizer on every probe"
        except NotExpressible as why:
            if choice == "tiktoken":
                raise PipelineError(f"--encoder tiktoken: this tokenizer cannot be encoded exactly by tiktoken: {why}") from None
            reason = f"tiktoken not used: {why}"
    else:
        reason = "requested"
    try:
        widths = piece_widths.build(spec, hf)
    except NotExpressible as why:
        return hf, f"{reason}; offsets tracked by the tokenizer ({why})"
    return HFEncoder(tokenizer, widths), f"{reason}; spans from token widths, identical to its offsets on every probe"
