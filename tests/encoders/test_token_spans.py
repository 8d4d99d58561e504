"""`prove`, the one check every encoder passes before it is used: the tokenizer's ids and span answers on the probes."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.encoders.base import Encoded
from pipeline.encoders.hf import encode_batch
from pipeline.encoders.token_spans import ByteSpans, NotExpressible, probe_texts, prove
from tests.conftest import demo_tokenizer

SPECIAL = ["<|user|>", "<|assistant|>"]


def reference(texts: list[str]) -> list[Encoded]:
    return encode_batch(demo_tokenizer(), texts)


def test_the_reference_proves_itself():
    prove(reference, reference, SPECIAL)


def test_other_ids_are_refused():
    shifted = lambda texts: [Encoded(e.input_ids + 1, e.spans) for e in reference(texts)]  # noqa: E731
    with pytest.raises(NotExpressible, match="ids differ from the tokenizer's on the probe"):
        prove(shifted, reference, SPECIAL)


def test_other_span_answers_are_refused():
    one_byte_each = lambda texts: [Encoded(e.input_ids, ByteSpans(np.ones(len(e.input_ids), np.int64), t))  # noqa: E731
                                   for e, t in zip(reference(texts), texts)]
    with pytest.raises(NotExpressible, match="span answers differ from the tokenizer's offsets on the probe"):
        prove(one_byte_each, reference, SPECIAL)


def test_only_the_probes_covered_are_tried():
    seen = []
    prove(lambda texts: seen.extend(texts) or reference(texts), reference, SPECIAL, covers=str.isascii)
    assert seen == [p for p in probe_texts(SPECIAL) if p.isascii()] and seen
