"""The committed JSON Schema files equal a fresh export, and SourceConfig refuses bad options naming the fields."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from schemas.export import OUT, SCHEMAS, export, render
from schemas.sources import GlmRecord, SourceConfig


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_schema_equals_fresh_export(name):
    path = OUT / f"{name}.schema.json"
    assert path.exists(), "run `python -m schemas.export` and commit schemas/json/"
    assert path.read_text(encoding="utf-8") == render(SCHEMAS[name]), "stale: run `python -m schemas.export`"


def test_export_writes_every_schema(tmp_path):
    written = export(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.schema.json" for n in SCHEMAS)
    sharegpt = json.loads((tmp_path / "sharegpt.schema.json").read_text(encoding="utf-8"))
    assert "from" in sharegpt["$defs"]["ShareGPTTurn"]["properties"]  # the alias, as written in the data
    config = json.loads((tmp_path / "source_config.schema.json").read_text(encoding="utf-8"))
    assert config["additionalProperties"] is False and config["properties"]["csv_map"]["default"]["user"] == "question"


def test_source_config_defaults_and_frozen():
    config = SourceConfig()
    assert (config.format, config.encoding, config.alpaca_input_separator) == ("auto", "utf-8", "\n\n")
    assert config.csv_map == {"system": "system", "user": "question", "assistant": "chosen"} and not config.csv_map_given
    with pytest.raises(ValidationError):
        config.format = "glm"
    with pytest.raises(ValidationError, match="extra"):
        SourceConfig(fromat="glm")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"encoding": "klingon"}, "unknown encoding"),
        ({"encoding": "utf-16"}, "not ASCII-compatible"),
        ({"csv_map": {"user": "q"}}, "needs an `assistant` column"),
        ({"csv_map": {"user": "q", "assistant": "a"}, "csv_messages_column": "m"}, "csv_map and csv_messages_column"),
        ({"format": "glm", "csv_messages_column": "m"}, "csv_messages_column: only used with format csv or auto"),
        ({"csv_map": {"bot": "x", "assistant": "a"}}, "csv_map.bot"),
    ],
)
def test_source_config_refuses_bad_options(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        SourceConfig(**kwargs)


def test_record_models_are_strict():
    with pytest.raises(ValidationError):
        GlmRecord.model_validate({"messages": [{"role": "user", "content": 1}]})
    assert GlmRecord.model_validate({"messages": [], "metainfo": {"x": 1}}).messages == []  # extras are ignored
