"""Write the JSON Schema files of the input formats (and of the ingest options) to `schemas/json/`.

Run `python -m schemas.export` after changing a model in `schemas/sources.py`; `tests/test_schemas_export.py` fails
while a committed file differs from a fresh export. Non-Python tools can validate input files against them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.sources import AlpacaRecord, GlmRecord, OpenAIRecord, ShareGPTRecord, SourceConfig

OUT = Path(__file__).resolve().parent / "json"
SCHEMAS: dict[str, type[BaseModel]] = {
    "glm_messages": GlmRecord,
    "openai_messages": OpenAIRecord,
    "sharegpt": ShareGPTRecord,
    "alpaca": AlpacaRecord,
    "source_config": SourceConfig,
}


def render(model: type[BaseModel]) -> str:
    """The schema file's text: sorted keys, 2-space indent, a trailing newline, non-ASCII kept."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema(by_alias=True)}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMAS.items():
        path = out / f"{name}.schema.json"
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in export(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(path)
