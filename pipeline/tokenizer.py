"""Load the fast tokenizer and its chat template, and describe it: special ids, added-token classes, the summary and
fingerprint the manifest records, and the copy saved beside the shards. Encoding lives in `pipeline.encoders`.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from pipeline.errors import InputError, PipelineError
from pipeline.saved_tokenizer import SavedTokenizer
from pipeline.templates import load_template
from pipeline.tokenizer_cache import load_cached, remember
from schemas.config import RenderConfig


def from_pretrained(path: str, trust_remote_code: bool = False):
    """What `AutoTokenizer.from_pretrained(path)` returns, loaded without importing torch where that is safe.

    transformers' Auto machinery imports its model configuration code, which imports torch: about 3 s of a
    one-row run. A local tokenizer directory with no config.json and no custom code names its class in
    tokenizer_config.json; for a fast (tokenizers-backed) class, AutoTokenizer then calls that class's own
    `from_pretrained`, so calling it directly gives the same object. Anything else goes through AutoTokenizer."""
    tokenizer_class = None if trust_remote_code else declared_fast_class(Path(path).expanduser())
    if tokenizer_class is None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return tokenizer_class.from_pretrained(path)


# AutoTokenizer loads this hub-declared class as the generic backend when tokenizer.json is byte-level.
_AUTO_REMAPS = {"LlamaTokenizer"}


def declared_fast_class(directory: Path):
    """The fast class tokenizer_config.json declares, when AutoTokenizer would load exactly that class; else None."""
    config_path = directory / "tokenizer_config.json"
    if not (directory / "tokenizer.json").is_file() or (directory / "config.json").exists() or not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # AutoTokenizer gives the error
    name = config.get("tokenizer_class") if isinstance(config, dict) and "auto_map" not in config else None
    if not isinstance(name, str) or name.removesuffix("Fast") in _AUTO_REMAPS:
        return None
    import transformers
    from transformers import PreTrainedTokenizer, TokenizersBackend

    found = getattr(transformers, name.removesuffix("Fast"), None) or getattr(transformers, name, None)
    if found is PreTrainedTokenizer:  # `PreTrainedTokenizerFast`: AutoTokenizer takes the generic fast backend
        return TokenizersBackend
    return found if isinstance(found, type) and issubclass(found, TokenizersBackend) else None


def load_tokenizer(config: RenderConfig):
    """The fast tokenizer at `config.tokenizer`. A slow-only tokenizer is refused: spans need character offsets.
    A local directory loaded before comes from the tokenizer cache (`pipeline.tokenizer_cache`), without
    transformers; otherwise transformers loads it, and the cache keeps it for the next run."""
    directory = Path(config.tokenizer).expanduser()
    if config.tokenizer.startswith((".", "/", "~")) and not directory.is_dir():
        # a path, not a hub name: say so rather than pass on the hub's rules for repository names
        raise PipelineError(f"cannot load tokenizer {config.tokenizer!r}: no such directory (give the model's "
                            "folder with --tokenizer)")
    cacheable = directory.is_dir() and not config.trust_remote_code
    cached = load_cached(directory) if cacheable else None
    if cached is not None:
        return cached
    try:
        tokenizer = from_pretrained(config.tokenizer, trust_remote_code=config.trust_remote_code)
    except Exception as exc:  # transformers raises many kinds here; all mean the same to the user
        raise PipelineError(f"cannot load tokenizer {config.tokenizer!r}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise PipelineError(
            f"tokenizer {config.tokenizer!r} has no fast (Rust) version: character offsets, which the masks are "
            "computed from, need one (add a tokenizer.json, or convert it with transformers)"
        )
    tokenizer.backend_tokenizer.no_truncation()  # limits are applied by the truncation stage, never silently here
    tokenizer.backend_tokenizer.no_padding()
    if cacheable:
        remember(directory, tokenizer, tokenizer_fingerprint(tokenizer))
    return tokenizer


def load_saved_tokenizer(path: Path) -> SavedTokenizer:
    """The tokenizer `preprocess` saved beside the shards; `InputError` when it is missing or cannot be loaded."""
    if not (path / "tokenizer.json").is_file():
        raise InputError(f"{path}: the tokenizer saved beside the shards is missing (tokenizer.json)")
    try:
        return SavedTokenizer(path)
    except Exception as exc:  # unreadable JSON, a tokenizer.json the tokenizers library refuses, ...
        raise InputError(f"{path}: cannot load the saved tokenizer: {exc}") from None


def chat_template_of(tokenizer, config: RenderConfig) -> str:
    """The template to render with: `config.chat_template` (a built-in name or a file), else the tokenizer's own."""
    if config.chat_template:
        return load_template(config.chat_template)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise PipelineError(
            f"tokenizer {config.tokenizer!r} has no chat template: pass --chat-template "
            "(chatml, glm4, llama3, alpaca, or a .jinja file)"
        )
    return template


def special_token_ids(tokenizer) -> np.ndarray:
    """Ids of every special token, the candidates for end-of-turn."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return np.array(sorted(ids), dtype=np.int64)


class TokenSearch:
    """Finds any of a set of tokens typed in text. A regex alternation of them costs microseconds per text, so a text
    is searched only when it holds the first character of one of them (`<` or `[` for most tokenizers): a check that
    takes next to nothing."""

    def __init__(self, tokens: list[str]):
        self.pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
        self.first_characters = sorted({t[0] for t in tokens})

    def search(self, text: str) -> re.Match | None:
        return self.pattern.search(text) if any(c in text for c in self.first_characters) else None

    def findall(self, text: str) -> list[str]:
        """Every distinct token in `text`, sorted."""
        return sorted(set(self.pattern.findall(text)))


def added_token_classes(tokenizer, template: str) -> tuple[list[str], list[str]]:
    """The tokenizer's added tokens, each of which becomes a single id when data types it as text, in two classes:

    - control tokens: marked special (`<|im_end|>`, `<|user|>`), or written by the chat template (Qwen's
      `<tool_call>`, which is not marked special): typed in data, one forges the template's own structure (a turn,
      a role, a tool call), so a row holding one is rejected;
    - other added tokens (Qwen's `<|fim_prefix|>`, `<|file_sep|>`, `<|repo_name|>`): neither special nor part of the
      chat format, but still one id each where data types them, so a row holding one is kept and noted.

    Whitespace-only added tokens are in neither class: they are ordinary text to any reader."""
    control, other = [], []
    for token in tokenizer.added_tokens_decoder.values():
        if not token.content.isspace():
            (control if token.special or token.content in template else other).append(token.content)
    return control, other


def added_token_searches(tokenizer, template: str) -> tuple[TokenSearch | None, TokenSearch | None]:
    """Searches for the control tokens and for the other added tokens (see `added_token_classes`); None for a class
    that has no token."""
    control, other = added_token_classes(tokenizer, template)
    return (TokenSearch(control) if control else None), (TokenSearch(other) if other else None)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary, merges and added tokens (its backend JSON), independent of paths."""
    if getattr(tokenizer, "fingerprint", None):
        return tokenizer.fingerprint
    backend = tokenizer.backend_tokenizer.to_str()
    return hashlib.sha256(backend.encode("utf-8")).hexdigest()


def tokenizer_summary(tokenizer, template: str) -> dict:
    """What the manifest records about the tokenizer: enough for the trainer to size a model without loading it."""
    return {
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "class": getattr(tokenizer, "class_name", type(tokenizer).__name__),
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "special_tokens": {k: v for k, v in sorted(tokenizer.special_tokens_map.items()) if isinstance(v, str)},
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
    }


def save_tokenizer(tokenizer, template: str, out: Path) -> None:
    """Save the tokenizer with the template actually used, so the shards are self-contained."""
    if isinstance(tokenizer, SavedTokenizer):
        tokenizer.save(template, out)
    else:
        tokenizer.chat_template = template
        tokenizer.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    if config_path.exists():  # keep the template inline so every transformers version finds it
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if "chat_template" not in config:
            config["chat_template"] = template
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
