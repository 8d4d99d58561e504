"""What is on disk, defined once: the Arrow schema of a shard, the ignore index, and the manifest's model and version.

The writer builds a `Manifest` and dumps it; every reader validates `manifest.json` against the same model. Every
model forbids unknown fields and requires every field the writer writes: a field added or removed changes
`MANIFEST_VERSION`, and a reader refuses a version it does not know by name rather than misreading it. The
preprocess config is kept as written (provenance and fingerprint); the consumers that use part of it validate that
part against this version's config models.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_serializer, model_validator

IGNORE_INDEX = -100  # labels that are not trained (the Hugging Face / PyTorch cross-entropy convention)
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # what this version writes
READABLE_VERSIONS = (2,)  # what this version reads

FEATURES = {
    "input_ids": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
    "labels": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
    "length": {"dtype": "int32", "_type": "Value"},
    "id": {"dtype": "string", "_type": "Value"},
    "source": {"dtype": "string", "_type": "Value"},
    "row": {"dtype": "int64", "_type": "Value"},
}  # the `datasets` features, so `datasets.load_from_disk` opens the shards as they are
ARROW_TYPES = {
    "input_ids": pa.list_(pa.int32()),
    "labels": pa.list_(pa.int32()),
    "length": pa.int32(),
    "id": pa.string(),
    "source": pa.string(),
    "row": pa.int64(),
}
ATTENTION_MASK = "attention_mask"  # not stored: all ones over a row's tokens, derived by `export` for trainers that want it
DERIVED_FEATURES = {ATTENTION_MASK: {"feature": {"dtype": "int8", "_type": "Value"}, "_type": "List"}}
DERIVED_TYPES = {ATTENTION_MASK: pa.list_(pa.int8())}  # int8, as `datasets` stores a tokenizer's attention_mask


def schema_of(columns: tuple[str, ...]) -> pa.Schema:
    """The Arrow schema, with its `datasets` feature metadata, of files holding `columns` (stored or derived)."""
    types, features = {**ARROW_TYPES, **DERIVED_TYPES}, {**FEATURES, **DERIVED_FEATURES}
    return pa.schema([(c, types[c]) for c in columns],
                     metadata={"huggingface": json.dumps({"info": {"features": {c: features[c] for c in columns}}})})


SCHEMA = schema_of(tuple(FEATURES))

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
TokenId = Annotated[int, Field(ge=0)]


class _Entry(BaseModel):
    """Strict like the writer: JSON types only (no "3" for 3, no true for 1), no unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ShardInfo(_Entry):
    """One shard file of a split."""

    file: str
    rows: NonNegativeInt
    tokens: NonNegativeInt
    trained_tokens: NonNegativeInt
    sha256: Sha256


class SplitInfo(_Entry):
    """One split: its totals and its shard files, in order."""

    rows: NonNegativeInt
    tokens: NonNegativeInt
    trained_tokens: NonNegativeInt
    shards: list[ShardInfo]

    @classmethod
    def of(cls, shards: list[ShardInfo]) -> "SplitInfo":
        return cls(rows=sum(s.rows for s in shards), tokens=sum(s.tokens for s in shards),
                   trained_tokens=sum(s.trained_tokens for s in shards), shards=shards)


class Accounting(_Entry):
    """Every input row: read = written + rejected + filtered (checked by `check`, not here), with reasons."""

    read: NonNegativeInt
    written: NonNegativeInt
    rejected: NonNegativeInt
    filtered: NonNegativeInt
    rejected_reasons: dict[str, NonNegativeInt]
    filtered_reasons: dict[str, NonNegativeInt]
    notes: dict[str, NonNegativeInt]
    note_tokens: dict[str, NonNegativeInt]  # per note: the tokens of the written rows it concerns (injected_text)
    balanced: bool


class TokenizerInfo(_Entry):
    """Enough to size a model without loading the tokenizer (the trainer reads only this)."""

    model_config = ConfigDict(populate_by_name=True)

    fingerprint: Sha256
    class_name: str = Field(alias="class")
    vocab_size: PositiveInt
    bos_token_id: TokenId | None
    eos_token_id: TokenId | None
    pad_token_id: TokenId | None
    special_tokens: dict[str, str]
    chat_template_sha256: Sha256

    @model_validator(mode="after")
    def _ids_in_vocabulary(self) -> "TokenizerInfo":
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, key)
            if value is not None and value >= self.vocab_size:
                raise ValueError(f"{key} {value} is not below vocab_size {self.vocab_size}")
        return self


class ChatTemplateInfo(_Entry):
    source: str  # "tokenizer", a built-in name or a file
    sha256: Sha256
    tool_role: str | None
    injects: str  # the text it adds to a conversation of one user turn and one reply ("" when none)


class EncoderInfo(_Entry):
    name: str
    reason: str


class InputFile(_Entry):
    """One input file: a local file by its sha256, a remote one by what its store reports (etag and/or version id)
    and its size, so it is not read a second time to be fingerprinted."""

    path: str
    format: str
    bytes: NonNegativeInt
    sha256: Sha256 | None = None
    etag: str | None = None
    version_id: str | None = None

    @model_validator(mode="after")
    def _fingerprinted(self) -> "InputFile":
        if self.sha256 is None and self.etag is None and self.version_id is None:
            raise ValueError(f"{self.path}: an input needs a sha256, an etag or a version_id")
        return self

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: Any) -> dict[str, Any]:
        """Only the fingerprints the input has: a local file's entry stays as it always was."""
        return {key: value for key, value in handler(self).items() if value is not None}


class SourceEntry(_Entry):
    """One entry of the config's `sources`: `read` rows the source holds, `drawn` rows the mixture took from them
    (repeats included), and what became of the drawn rows: drawn = written + rejected + filtered (checked by
    `check`); `tokens` and `trained_tokens` of the rows written. `token_share`: in a mixture of `total_tokens` only,
    the tokens asked of the source, which `tokens` reaches (checked by `check`)."""

    path: str
    read: NonNegativeInt
    drawn: NonNegativeInt
    written: NonNegativeInt
    rejected: NonNegativeInt
    filtered: NonNegativeInt
    tokens: NonNegativeInt
    trained_tokens: NonNegativeInt
    token_share: NonNegativeInt | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """A mixture of rows has no `token_share` key, rather than a null one."""
        data = handler(self)
        if self.token_share is None:
            data.pop("token_share", None)
        return data


class ToolInfo(_Entry):
    name: Literal["chatshard"]
    version: str


class Manifest(_Entry):
    """`manifest.json`: written last, so a directory that has one is a complete output."""

    version: int
    tool: ToolInfo
    config: dict[str, Any]
    inputs: list[InputFile]
    tokenizer: TokenizerInfo
    chat_template: ChatTemplateInfo
    encoder: EncoderInfo
    splits: dict[str, SplitInfo]
    accounting: Accounting
    rejects_sha256: Sha256
    sources: list[SourceEntry] | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_version(cls, data: Any) -> Any:
        """Checked before any other field: another version may differ in all of them."""
        version = data.get("version") if isinstance(data, dict) else None
        if version not in READABLE_VERSIONS:
            known = ", ".join(map(str, READABLE_VERSIONS))
            raise ValueError(f"version {version!r} is not one this chatshard reads ({known}): "
                             "written by another version of the tool")
        return data

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        if self.sources is None:
            del data["sources"]
        return data
