"""What every encoder returns for one text, in a module of its own so that each encoder can import it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.encoders.token_spans import TokenSpans


@dataclass(frozen=True)
class Encoded:
    """One tokenized text: its ids, and where its characters land among them."""

    input_ids: np.ndarray
    spans: TokenSpans
