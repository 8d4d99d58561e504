"""A tokenizer directory written by transformers' `save_pretrained`, read without importing transformers.

Such a directory holds the fast tokenizer exactly as transformers built it: tokenizer.json is its Rust backend
serialised (after whatever the tokenizer's class changed while loading), tokenizer_config.json names its class and
special tokens, chat_template.jinja holds its template. Reading them with `tokenizers` alone gives the same ids,
special tokens and template as `AutoTokenizer.from_pretrained` on that directory (tests compare them on every real
tokenizer), in a fraction of its start-up: importing transformers and indexing its classes takes most of a second.
Only what the pipeline asks of a tokenizer is here; the trainer loads the real thing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
TEMPLATE_FILE = "chat_template.jinja"


class SavedTokenizer:
    """The saved tokenizer at `directory`, answering as a transformers fast tokenizer does for the calls the pipeline
    makes (encode, decode, special tokens, chat template)."""

    is_fast = True

    def __init__(self, directory: Path, fingerprint: str | None = None):
        self.directory = directory
        self.fingerprint = fingerprint  # `tokenizer_fingerprint`, when known already (serialising it takes a while)
        self.backend_tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        template_path = directory / TEMPLATE_FILE
        self.chat_template = (template_path.read_text(encoding="utf-8") if template_path.is_file()
                              else self.config.get("chat_template"))
        self.class_name = self.config.get("tokenizer_class") or "TokenizersBackend"
        self.special_tokens_map = {key: _content(self.config[key]) for key in _NAMED_SPECIAL
                                   if self.config.get(key) is not None}
        self.added_tokens_decoder: dict[int, AddedToken] = self.backend_tokenizer.get_added_tokens_decoder()

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def _id(self, key: str) -> int | None:
        token = self.special_tokens_map.get(key)
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad_token")

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the named special tokens and of the extra special tokens the config lists (under the name of the
        transformers version that saved it)."""
        extra = [token for key in ("extra_special_tokens", "additional_special_tokens")
                 if isinstance(self.config.get(key), list) for token in self.config[key]]
        ids = (self.backend_tokenizer.token_to_id(_content(t)) for t in [*self.special_tokens_map.values(), *extra])
        return sorted({i for i in ids if i is not None})

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int | None]:
        """Each token's id; the unknown token's id (None when there is none) for a token not in the vocabulary."""
        ids = (self.backend_tokenizer.token_to_id(token) for token in tokens)
        return [self._id("unk_token") if i is None else i for i in ids]

    def convert_ids_to_tokens(self, token_id: int) -> str | None:
        return self.backend_tokenizer.id_to_token(token_id)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool = False) -> str:
        _no_clean_up(clean_up_tokenization_spaces)
        return self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows: list[list[int]], *, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool = False) -> list[str]:
        _no_clean_up(clean_up_tokenization_spaces)
        return self.backend_tokenizer.decode_batch(rows, skip_special_tokens=skip_special_tokens)

    def save(self, template: str, out: Path) -> None:
        """What `save_pretrained` writes with `template` as the chat template: the saved files, the template's own."""
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.iterdir()):
            if path.is_file() and path.name != TEMPLATE_FILE:
                shutil.copyfile(path, out / path.name)
        (out / TEMPLATE_FILE).write_text(template, encoding="utf-8")


def _content(token: str | dict) -> str:
    """A special token as the config writes it: its text, or an AddedToken's fields."""
    return token["content"] if isinstance(token, dict) else token


def _no_clean_up(clean_up: bool) -> None:
    if clean_up:
        raise ValueError("clean_up_tokenization_spaces is not supported: the pipeline decodes text as it is")
