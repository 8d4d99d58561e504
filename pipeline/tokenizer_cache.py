"""A user cache of tokenizers as transformers loads them, so that a run loads a known tokenizer without transformers.

The first run on a local tokenizer directory loads it with transformers and saves it (`save_pretrained`) under
`cache_root()/tokenizers/<key>/tokenizer`; later runs read that copy with `SavedTokenizer`, with the tokenizer's fingerprint recorded beside it. The key is a sha256 of everything
the loaded tokenizer depends on: every file of the directory (name and sha256 of its bytes), the directory's path,
the versions of transformers and tokenizers, and the offline setting transformers records in the saved config. An
entry whose key differs is never read; an entry is complete or absent (written beside, then renamed into place).
The cache only saves time: when it cannot be read or written, the run loads with transformers as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

from pipeline.checksums import sha256_file
from pipeline.saved_tokenizer import SavedTokenizer

CACHE_FORMAT = 2
_KEY_FILE = "key.json"
_FINGERPRINT_FILE = "fingerprint"
_CONTENTS_FILE = "contents.json"  # sha256 of every file of the saved tokenizer, checked before it is read


def cache_root() -> Path:
    """$CHATSHARD_CACHE, else $XDG_CACHE_HOME/chatshard, else ~/.cache/chatshard."""
    if os.environ.get("CHATSHARD_CACHE"):
        return Path(os.environ["CHATSHARD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatshard"


def cache_key(directory: Path) -> dict:
    """What a tokenizer loaded from `directory` depends on."""
    return {"format": CACHE_FORMAT, "path": str(directory.resolve()), "files": _contents(directory),
            "transformers": version("transformers"), "tokenizers": version("tokenizers"),
            "offline": [os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]}


def _entry(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
    return cache_root() / "tokenizers" / digest


def load_cached(directory: Path) -> SavedTokenizer | None:
    """The cached copy of the tokenizer at `directory`, or None when there is none for its current key."""
    try:
        key = cache_key(directory)
        entry = _entry(key)
        if json.loads((entry / _KEY_FILE).read_text(encoding="utf-8")) != key:
            return None
        if json.loads((entry / _CONTENTS_FILE).read_text(encoding="utf-8")) != _contents(entry / "tokenizer"):
            return None  # a file of the copy changed since it was saved (even into other valid JSON)
        fingerprint = (entry / _FINGERPRINT_FILE).read_text(encoding="utf-8")
        return SavedTokenizer(entry / "tokenizer", fingerprint=fingerprint)
    except Exception:  # missing, unreadable or damaged: transformers loads it instead
        return None


def remember(directory: Path, tokenizer, fingerprint: str) -> None:
    """Save `tokenizer`, just loaded by transformers from `directory`, as that directory's cache entry, with its
    `fingerprint` (`pipeline.tokenizer.tokenizer_fingerprint`). An entry already there is one `load_cached` could
    not read (damaged, or from an older layout): it is replaced."""
    try:
        key = cache_key(directory)
        entry = _entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            tokenizer.save_pretrained(str(scratch / "tokenizer"))
            (scratch / _FINGERPRINT_FILE).write_text(fingerprint, encoding="utf-8")
            (scratch / _CONTENTS_FILE).write_text(json.dumps(_contents(scratch / "tokenizer")), encoding="utf-8")
            (scratch / _KEY_FILE).write_text(json.dumps(key, sort_keys=True), encoding="utf-8")
            if entry.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent)) / "stale"
                os.replace(entry, stale)
                shutil.rmtree(stale.parent)
            os.replace(scratch, entry)
        except OSError:  # another run wrote the entry first: keep that one
            shutil.rmtree(scratch, ignore_errors=True)
    except Exception:  # a read-only or full disk costs only the time saved
        return


def _contents(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its relative name, with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
