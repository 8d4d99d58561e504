"""Span mapping from token byte widths, for the encoders that give ids without offsets, and the probes that prove it.

An encoder that knows each token's width in bytes of the original text (from its id alone) needs no offsets from
the tokenizer: cumulative widths give each token's first byte, and the text's UTF-8 layout turns characters into
bytes. Such an encoder is used only once `probe_texts` (CJK, emoji, code, whitespace runs, special tokens, mixed
newlines) have shown it to agree with the HF tokenizer's own encodings.
"""
from __future__ import annotations

import bisect

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


class ByteSpans:
    """char_to_token / token_to_chars for one text, from its tokens' first bytes and the text's UTF-8 layout: the two
    methods the mask stage uses, with the semantics of a tokenizers.Encoding. The mask stage asks a handful of
    times per message, in text order, so a character's byte offset is found by encoding only the text since the
    previous question (an ASCII text's characters are its bytes), and tokens are found by bisecting a plain list.

    A token may be zero bytes wide (a prefix `▁` the tokenizer added): like the HF tokenizer, which aligns it to the
    next character, char_to_token then answers the first token starting at that character."""

    __slots__ = ("token_byte_start", "_text", "_ascii", "_cursor", "_starts", "_utf8")

    def __init__(self, token_byte_start: np.ndarray, text: str):
        self.token_byte_start = token_byte_start
        self._text = text
        self._ascii = text.isascii()
        self._cursor = (0, 0)  # (character, its byte offset) of the last question
        self._starts: list[int] | None = None
        self._utf8: bytes | None = None

    @classmethod
    def of_widths(cls, widths: np.ndarray, text: str) -> "ByteSpans":
        return cls(np.cumsum(widths) - widths, text)

    def _byte_of(self, char: int) -> int:
        if self._ascii:
            return char
        last_char, last_byte = self._cursor if char >= self._cursor[0] else (0, 0)
        byte = last_byte + len(self._text[last_char:char].encode("utf-8"))
        self._cursor = (char, byte)
        return byte

    def char_to_token(self, char: int) -> int | None:
        if char >= len(self._text) or not len(self.token_byte_start):
            return None
        if self._starts is None:
            self._starts = self.token_byte_start.tolist()
        byte = self._byte_of(char)
        token = bisect.bisect_left(self._starts, byte)
        return token if token < len(self._starts) and self._starts[token] == byte else token - 1

    def token_to_chars(self, token: int) -> tuple[int, int]:
        """The character holding the token's first byte (one character: enough for the mask stage's question)."""
        byte = int(self.token_byte_start[token])
        if not self._ascii:
            if self._utf8 is None:
                self._utf8 = self._text.encode("utf-8")
            byte = len(self._utf8[:byte].decode("utf-8", errors="ignore"))  # whole characters before that byte
        return byte, byte + 1


def same_spans(ours: ByteSpans, reference, text: str, tokens: int) -> bool:
    """Whether `ours` answers both mask-stage questions as the HF encoding `reference` does, for every character
    and every token of `text`."""
    return all(ours.char_to_token(c) == reference.char_to_token(c) for c in range(len(text))) and all(
        ours.token_to_chars(t)[0] == reference.token_to_chars(t)[0] for t in range(tokens))
