"""The preprocess chain runs without the executor: built from a config and called on one batch, it gives exactly
what `preprocess` writes for those rows (samples, splits, rejects, warnings, counts)."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from pipeline.chain import Toolkit, build_chain
from pipeline.run import preprocess
from pipeline.stages.ingest import detect_formats, read_records
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER

SYSTEM = {"role": "system", "content": "Be brief."}


def _chat(k: int, turns: int) -> dict:
    messages = [SYSTEM]
    for t in range(turns):
        messages += [{"role": "user", "content": f"Question {k}.{t}: " + "why? " * (k % 7)},
                     {"role": "assistant", "content": f"Answer {k}.{t}: " + "because. " * (k % 5)}]
    return {"messages": messages}


ROWS = [_chat(k, turns=1 + k % 4) for k in range(40)]
ROWS[3] = "{not json"
ROWS[9] = {"messages": [{"role": "user", "content": "no answer"}]}
ROWS[14] = {"messages": [{"role": "user", "content": "a typed <|assistant|> token"},
                         {"role": "assistant", "content": "x"}]}
ROWS[21] = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""},
                         {"role": "user", "content": "q"}]}


@pytest.mark.parametrize("overrides", [
    {"truncation.max_length": 48, "mask.append_eos": True},
    {"truncation.max_length": 60, "truncation.strategy": "drop_oldest_turns"},
    {"truncation.max_length": 70, "truncation.strategy": "drop", "mask.train_on_prompt": True},
    {"mask.preset": "glm4", "truncation.max_input_length": 30, "truncation.max_output_length": 20},
])
def test_the_chain_on_a_batch_gives_what_preprocess_writes(tmp_path, overrides):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in ROWS), encoding="utf-8")
    config = load_config(None, {"inputs": [str(data)], "render.tokenizer": str(DEMO_TOKENIZER),
                                "output.eval_split": 0.25, **overrides})
    out = tmp_path / "out"
    manifest = preprocess(config, out)

    chain = build_chain(config, Toolkit.load(config))
    outcome = chain(list(read_records(detect_formats([data], config.source), config.source)))

    written = datasets.load_from_disk(str(out))
    on_disk = {(split, row["id"]): (row["input_ids"], row["labels"]) for split in written for row in written[split]}
    from_chain = {(row.split, row.conversation.id): (row.input_ids.tolist(), row.labels.tolist())
                  for row in outcome.items}
    assert from_chain == on_disk
    assert _jsonl(out / "rejects.jsonl") == [e.to_json() for e in outcome.rejected + outcome.filtered]
    assert _jsonl(out / "warnings.jsonl") == [e.to_json() for e in outcome.warnings]
    assert outcome.stats().to_json() == manifest["accounting"]
    assert manifest["accounting"]["rejected"] == 4 and manifest["accounting"]["written"] > 0


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
