"""The shard contract: one ignore index, the manifest model (strict, versioned) and the README's manifest example."""
from __future__ import annotations

import json
import re

import datasets
import pytest
from pydantic import ValidationError

from pipeline.shards.format import (
    FEATURES,
    IGNORE_INDEX,
    MANIFEST_VERSION,
    READABLE_VERSIONS,
    SCHEMA,
    Manifest,
)
from tests.conftest import REPO


def readme_manifest() -> dict:
    """The JSON block that follows the README's "`manifest.json` (`version` N" line."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"`manifest.json` \(`version` (\d+).*?\n```json\n(.*?)\n```", text, re.S)
    assert found, "README.md has no manifest.json example"
    assert int(found.group(1)) == MANIFEST_VERSION
    return json.loads(found.group(2))


def test_the_readme_example_is_a_valid_manifest_of_this_version():
    manifest = Manifest.model_validate(readme_manifest())
    assert manifest.version == MANIFEST_VERSION
    assert manifest.to_json() == readme_manifest()  # every field shown, none dropped on the way


def test_the_ignore_index_is_defined_once():
    assignments = [path.relative_to(REPO).as_posix() for path in (REPO / "pipeline").rglob("*.py")
                   if re.search(r"^IGNORE_INDEX\s*=", path.read_text(encoding="utf-8"), re.M)]
    assert assignments == ["pipeline/shards/format.py"] and IGNORE_INDEX == -100


def test_the_arrow_schema_carries_the_datasets_features():
    features = datasets.Features.from_arrow_schema(SCHEMA)
    assert list(features) == list(FEATURES) == SCHEMA.names
    assert features.to_dict() == datasets.Features.from_dict(FEATURES).to_dict()


def errors(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(data)
    return [(".".join(map(str, e["loc"])), e["type"]) for e in info.value.errors()]


def test_an_unknown_version_is_refused_before_any_other_field():
    [(loc, kind)] = errors({"version": 99, "something": "else"})
    assert (loc, kind) == ("", "value_error")
    with pytest.raises(ValidationError, match=r"version 99 is not one this chatshard reads \(2\)"):
        Manifest.model_validate({"version": 99})
    assert MANIFEST_VERSION in READABLE_VERSIONS


def test_unknown_and_missing_fields_are_refused_by_name():
    data = readme_manifest()
    data["splits"]["train"]["shards"][0]["bytes"] = 10
    del data["encoder"]
    assert sorted(errors(data)) == [("encoder", "missing"), ("splits.train.shards.0.bytes", "extra_forbidden")]


@pytest.mark.parametrize("edit, loc", [
    (lambda m: m["accounting"].update(read="70"), "accounting.read"),  # no strings for numbers
    (lambda m: m["accounting"].update(written=True), "accounting.written"),  # nor booleans
    (lambda m: m["splits"]["train"].update(rows=-1), "splits.train.rows"),
    (lambda m: m["tokenizer"].update(vocab_size=0), "tokenizer.vocab_size"),
    (lambda m: m["tokenizer"].update(pad_token_id=m["tokenizer"]["vocab_size"]), "tokenizer"),
    (lambda m: m.update(rejects_sha256="e3b0c442"), "rejects_sha256"),
    (lambda m: m["tool"].update(name="other"), "tool.name"),
])
def test_the_model_is_as_strict_as_the_writer(edit, loc):
    data = readme_manifest()
    edit(data)
    assert [found for found, _ in errors(data)] == [loc]


def test_the_manifest_is_immutable():
    manifest = Manifest.model_validate(readme_manifest())
    with pytest.raises(ValidationError):
        manifest.version = 3


SOURCE = {"path": "a.jsonl", "read": 4, "drawn": 6, "written": 5, "rejected": 1, "filtered": 0, "tokens": 50,
          "trained_tokens": 20}


def test_a_manifest_of_sources_has_its_sources_list_and_dumps_it():
    data = {**readme_manifest(), "sources": [SOURCE]}
    manifest = Manifest.model_validate(data)
    assert manifest.sources[0].drawn == 6 and manifest.to_json() == data
    assert "sources" not in Manifest.model_validate(readme_manifest()).to_json()  # a run of inputs has none
    shared = {**data, "sources": [{**SOURCE, "token_share": 45}]}  # a mixture of tokens adds the tokens asked
    assert Manifest.model_validate(shared).to_json() == shared
    with pytest.raises(ValidationError, match="sources.0.drawn"):
        Manifest.model_validate({**readme_manifest(), "sources": [{**SOURCE, "drawn": "6"}]})
