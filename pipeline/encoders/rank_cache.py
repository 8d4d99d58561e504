"""tiktoken's rank table of a tokenizer, kept in the tokenizer cache so that a run need not rebuild it.

Rebuilding it reads the whole vocabulary back from the Rust tokenizer and turns each piece into its bytes: a fifth of
a second of a one-row run for a 150k vocabulary, against a twentieth to read it here. The table is stored as flat
numpy arrays (no pickle) in `cache_root()/encoders/<key>.npz`, keyed by the tokenizer's fingerprint (a sha256 of its
vocabulary, merges and added tokens). A file that cannot be read is rebuilt (the zip format's checksums catch a
damaged one: a table with two long pieces' ranks swapped could still pass the probes), and the encoder built from
it is proven on the probe set as every tiktoken encoder is.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from pipeline.tokenizer_cache import cache_root

RANKS_FORMAT = 1


def _path(fingerprint: str) -> Path:
    key = json.dumps({"format": RANKS_FORMAT, "tokenizer": fingerprint}, sort_keys=True)
    return cache_root() / "encoders" / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()}.npz"


def load_ranks(fingerprint: str) -> dict[bytes, int] | None:
    """The stored rank table of the tokenizer with this fingerprint, or None."""
    try:
        with np.load(_path(fingerprint), allow_pickle=False) as stored:
            data, offsets, ranks = stored["data"].tobytes(), stored["offsets"].tolist(), stored["ranks"].tolist()
        return {data[offsets[k] : offsets[k + 1]]: rank for k, rank in enumerate(ranks)}
    except Exception:  # missing or damaged: the table is rebuilt from the vocabulary
        return None


def store_ranks(fingerprint: str, ranks: dict[bytes, int]) -> None:
    """Keep `ranks`, proven for the tokenizer with this fingerprint; a cache that cannot be written costs only time."""
    pieces = list(ranks)
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(piece) for piece in pieces], out=offsets[1:])
    data = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    values = np.fromiter(ranks.values(), dtype=np.int64, count=len(pieces))
    path = _path(fingerprint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, data=data, offsets=offsets, ranks=values)
        os.replace(scratch, path)
    except OSError:
        Path(scratch).unlink(missing_ok=True)
