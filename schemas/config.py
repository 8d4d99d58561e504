"""Preprocess run configuration: one small model per concern, composed into `PreprocessConfig`.

Each stage receives only its own model. Defaults live here and nowhere else; a YAML file lists only what differs,
and command-line flags override it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from schemas.loading import read_yaml_mapping, validate_model
from schemas.mixture import MixtureConfig, MixtureSource
from schemas.sources import CSV_KEYS, SourceConfig

Preset = Literal["default", "glm4", "trl_completion_only", "rasbt"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RenderConfig(_Frozen):
    """Which tokenizer and chat template turn conversations into text and tokens."""

    tokenizer: str = "data/tokenizer"
    chat_template: str | None = Field(None, description="built-in name (chatml, glm4, llama3, alpaca) or a .jinja file")
    trust_remote_code: bool = False
    allow_special_tokens_in_content: bool = False
    encoder: Literal["auto", "hf", "tiktoken"] = Field(
        "auto", description="auto: tiktoken where it reproduces the tokenizer exactly (proven at start-up), else hf"
    )
    time_limit: float = Field(
        10.0, gt=0, description="seconds one rendering may take; a row over it is rejected (template_error)"
    )
    max_chars: int = Field(
        64 * 2**20, ge=1, description="characters one rendering may produce; a row over it is rejected (template_error)"
    )


class MaskConfig(_Frozen):
    """What is trained. `preset` reproduces a reference tool label for label; the other keys refine `default`."""

    preset: Preset = "default"
    roles_to_train: tuple[Literal["system", "user", "assistant", "tool"], ...] = ("assistant",)
    last_turn_only: bool = False
    train_on_prompt: bool = False
    train_end_of_turn: bool = True
    append_eos: bool = False
    response_template: str | None = None
    instruction_template: str | None = None

    @model_validator(mode="after")
    def _preset_needs(self) -> "MaskConfig":
        if self.preset == "trl_completion_only" and not self.response_template:
            raise ValueError("mask.preset 'trl_completion_only' needs mask.response_template (e.g. '<|im_start|>assistant\\n')")
        if self.instruction_template and self.preset != "trl_completion_only":
            raise ValueError("mask.instruction_template is only used by mask.preset 'trl_completion_only'")
        return self


class TruncationConfig(_Frozen):
    """Length limits: `max_length`, or GLM-style `max_input_length` + `max_output_length` (their sum)."""

    max_length: int | None = Field(2048, ge=2)
    max_input_length: int | None = Field(None, ge=1)
    max_output_length: int | None = Field(None, ge=1)
    strategy: Literal["cut_tail", "drop", "drop_oldest_turns"] = "cut_tail"

    @model_validator(mode="after")
    def _one_limit(self) -> "TruncationConfig":
        if (self.max_input_length is None) != (self.max_output_length is None):
            raise ValueError("truncation.max_input_length and truncation.max_output_length go together")
        return self

    def limit(self, preset: Preset) -> int | None:
        """The token limit. GLM-4's finetune.py cuts at input + output + 1 (room for its appended eos)."""
        if self.max_input_length is not None and self.max_output_length is not None:
            return self.max_input_length + self.max_output_length + (1 if preset == "glm4" else 0)
        return self.max_length


class OutputConfig(_Frozen):
    """How rows become splits and shards."""

    eval_split: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 42
    rows_per_shard: int = Field(20_000, ge=1)
    workers: int = Field(1, ge=1)
    batch_size: int = Field(512, ge=1)
    engine: Literal["local", "ray"] = Field(
        "local", description="local: worker processes on this machine; ray: Ray Data workers on a Ray cluster"
    )
    # How to reach an object-storage --out (the fsspec backend's keyword arguments, e.g. s3fs's endpoint_url, key,
    # secret). Never written to the manifest or the run's fingerprint: it may hold credentials, and it does not change
    # the output.
    storage_options: dict[str, Any] = Field(default_factory=dict, exclude=True)


PRESET_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # LLMs-from-scratch ch. 7: the alpaca text with "### Input:", every token a target (the template ends with eos).
    "rasbt": {
        "render": {"chat_template": "alpaca"},
        "mask": {"train_on_prompt": True},
        "source": {"alpaca_input_separator": "\n\n### Input:\n"},
    },
}


class PreprocessConfig(_Frozen):
    """Everything one `preprocess` run needs; written in full into the manifest.

    The rows come from `inputs` (every file read with `source`) or from `sources` (each entry with its own settings,
    `source` giving the defaults of what an entry does not set, and a sampling rule combined by `mixture`)."""

    inputs: tuple[str, ...] = ()
    sources: tuple[MixtureSource, ...] = ()
    mixture: MixtureConfig = MixtureConfig()
    source: SourceConfig = SourceConfig()
    render: RenderConfig = RenderConfig()
    mask: MaskConfig = MaskConfig()
    truncation: TruncationConfig = TruncationConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """A preset's settings first, then the `source` section (with them) as the defaults of each source."""
        return _source_defaults(_preset_defaults(data))

    @model_validator(mode="after")
    def _combinations(self) -> "PreprocessConfig":
        if self.mask.preset == "glm4" and self.truncation.strategy != "cut_tail":
            raise ValueError("mask.preset 'glm4' reproduces GLM-4's cut at the tail: truncation.strategy must be cut_tail")
        if self.inputs and self.sources:
            raise ValueError("inputs and sources: give one or the other, not both")
        if "mixture" in self.model_fields_set and not self.sources:
            raise ValueError("mixture: only used with sources")
        weighted = [s.weight is not None for s in self.sources]
        total = self.mixture.total
        if any(weighted) and not all(weighted):
            raise ValueError(f"sources: weights share out mixture.{total or 'total_rows'}, so give every source a "
                             "weight or none")
        if any(weighted) and total is None:
            raise ValueError("sources: weighted sources need mixture.total_rows or mixture.total_tokens (the rows or "
                             "tokens to share out)")
        if total is not None and not any(weighted):
            raise ValueError(f"mixture.{total}: is shared out by weight, so give every source a weight")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A config of `inputs` dumps without the `sources` and `mixture` keys: its manifest stays as it was."""
        data = handler(self)
        if not self.sources:
            data.pop("sources", None)
            data.pop("mixture", None)
        return data


def _preset_defaults(data: Any) -> Any:
    """A preset fills in the settings of the tool it reproduces, unless the config sets them itself."""
    if not isinstance(data, dict) or not isinstance(data.get("mask"), dict):
        return data
    defaults = PRESET_DEFAULTS.get(data["mask"].get("preset", "default"), {})
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, values in defaults.items():
        target = merged.setdefault(section, {})
        if isinstance(target, dict):
            for key, value in values.items():
                target.setdefault(key, value)
    return merged


def _source_defaults(data: Any) -> Any:
    """Each entry of `sources` takes the keys of `source` it does not set; the CSV column keys only where the entry
    may read CSV (format csv or auto), since other formats refuse them."""
    if not isinstance(data, dict) or not isinstance(data.get("source"), dict) or not isinstance(data.get("sources"), list):
        return data
    shared = data["source"]
    entries = []
    for entry in data["sources"]:
        if isinstance(entry, dict):
            reads_csv = entry.get("format", shared.get("format", "auto")) in ("auto", "csv")
            entry = {**{k: v for k, v in shared.items() if reads_csv or k not in CSV_KEYS}, **entry}
        entries.append(entry)
    return {**data, "sources": entries}


def load_config(path: Path | None, overrides: dict[str, Any]) -> PreprocessConfig:
    """Read a YAML config, apply dotted-key overrides (`mask.preset`), validate, and report every problem at once."""
    data = read_yaml_mapping(path) if path is not None else {}
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return validate_model(PreprocessConfig, data, source=path)
