"""Where characters land among tokens: the two questions the mask stage asks of an encoded text, and the probes that
prove an encoder answers them as the HF tokenizer does.

`OffsetSpans` answers from a tokenizers.Encoding's tracked offsets. `ByteSpans` answers without offsets, for the
encoders that know each token's width in bytes of the original text from its id alone: cumulative widths give each
token's byte range, the text's UTF-8 layout turns characters into bytes, and numpy's searchsorted answers all of a
text's questions at once. Such an encoder is used only once `probe_texts` (CJK, emoji, code, whitespace runs, special
tokens, mixed newlines) have shown it to agree with the tokenizer's own offsets.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

PROBES = [
    "Hello, world! It's 2024 and we'll see.",
    "你好，世界！这是一个测试。中文、日本語のテキスト、한국어 텍스트。",
    "emoji 🙂🙃 👨‍👩‍👧‍👦 🇨🇳 flags and ZWJ",
    "def f(x):\n    return x ** 2  # square\n\n\tif x:\r\n        pass\r\r\n",
    "    leading and trailing spaces    \n\n\n   \t \u3000full-width space",
    "numbers 1234567890 3.14159 -42 1e-9 ١٢٣ ⅷ",
    '{"name": "get_weather", "arguments": {"city": "北京", "unit": "°C"}}',
    "mixed\nnewlines\r\nand\rcarriage\u2028line\u2029para\x0bvertical\x0cfeed",
    "Ünïcödé ñ é (composed) e\u0301 (decomposed) ﬁ ligature Ω Å",
    "'S 'T 'RE 'VE 'M 'LL 'D don'T I'M",
    "a" * 300 + " " + "的" * 200,
]


class NotExpressible(Exception):
    """The tokenizer is not one this encoder reproduces exactly; the message says why."""


def probe_texts(special: list[str]) -> list[str]:
    """The probes alone, and wrapped in the tokenizer's special tokens (text right after a special token is where
    tokenizers add prefix spaces and split words)."""
    wrapped = [f"{special[k % len(special)]}{p}{special[(k + 1) % len(special)]}\n{p}" for k, p in enumerate(PROBES)]
    return PROBES + (wrapped if special else [])


class TokenSpans(Protocol):
    """The mask stage's two questions, asked for all of a text's character positions at once (a position may equal
    the text's length; the answer is then the number of tokens)."""

    def locate(self, holding: Sequence[int], starting: Sequence[int]) -> tuple[list[int], list[int]]:
        """For each position in `holding`, the first token holding a character at or after it; for each position in
        `starting`, the first token whose first character is at or after it."""


class OffsetSpans:
    """The answers from the HF tokenizer's tracked offsets (`char_to_token`, `token_to_chars`). A character the
    normaliser dropped belongs to no token: the next one that does is taken."""

    __slots__ = ("encoding", "n_chars", "n_tokens")

    def __init__(self, encoding, n_chars: int):
        self.encoding, self.n_chars, self.n_tokens = encoding, n_chars, len(encoding.ids)

    def locate(self, holding: Sequence[int], starting: Sequence[int]) -> tuple[list[int], list[int]]:
        return [self._holding(c) for c in holding], [self._starting(c) for c in starting]

    def _starting(self, char: int) -> int:
        token = self._holding(char)
        if token < self.n_tokens and self.encoding.token_to_chars(token)[0] < char:
            token += 1  # that token also holds characters before `char`
        return token

    def _holding(self, position: int) -> int:
        for char in range(position, self.n_chars):
            token = self.encoding.char_to_token(char)
            if token is not None:
                return token
        return self.n_tokens


class ByteSpans:
    """The answers from each token's byte range. A token may be zero bytes wide (a `▁` prefix the tokenizer added):
    like the HF tokenizer, which aligns it to the next character, it then counts as holding that character."""

    __slots__ = ("_starts", "_ends", "_text")

    def __init__(self, widths: np.ndarray, text: str):
        ends = np.cumsum(widths)
        self._starts = ends - widths
        self._ends = np.maximum(ends, self._starts + 1)  # a zero-width token holds the character at its position
        self._text = text

    def locate(self, holding: Sequence[int], starting: Sequence[int]) -> tuple[list[int], list[int]]:
        offsets = self._bytes_of([*holding, *starting])
        return (np.searchsorted(self._ends, offsets[: len(holding)], side="right").tolist(),
                np.searchsorted(self._starts, offsets[len(holding) :], side="left").tolist())

    def _bytes_of(self, chars: Sequence[int]) -> list[int]:
        """Byte offsets of character positions; an ASCII text's characters are its bytes, otherwise only the text up
        to the furthest position is encoded, in order."""
        if self._text.isascii():
            return list(chars)
        offsets, last_char, last_byte = {}, 0, 0
        for char in sorted(set(chars)):
            last_byte += len(self._text[last_char:char].encode("utf-8"))
            offsets[char], last_char = last_byte, char
        return [offsets[c] for c in chars]


def same_spans(ours: TokenSpans, reference: TokenSpans, n_chars: int) -> bool:
    """Whether `ours` answers both questions as `reference` does for every position of an `n_chars` text."""
    every = range(n_chars + 1)
    return ours.locate(every, every) == reference.locate(every, every)


def prove(encode: Callable[[list[str]], list], reference: Callable[[list[str]], list], special: list[str],
          covers: Callable[[str], bool] = lambda text: True) -> None:
    """`encode` must give the ids and the span answers `reference` (the HF tokenizer with its offsets) gives, on
    every probe it covers (alone, and wrapped in the `special` tokens); NotExpressible names the first probe where it
    does not. One text per call: the HF tokenizer then encodes without its thread pool, so the process can still
    fork workers cleanly."""
    for probe in filter(covers, probe_texts(special)):
        ((want,), (have,)) = reference([probe]), encode([probe])
        if want.input_ids.tolist() != have.input_ids.tolist():
            raise NotExpressible(f"ids differ from the tokenizer's on the probe {probe[:30]!r}")
        if not same_spans(have.spans, want.spans, len(probe)):
            raise NotExpressible(f"span answers differ from the tokenizer's offsets on the probe {probe[:30]!r}")
