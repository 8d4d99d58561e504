"""The preprocess runner: layout, accounting, truncation, determinism across workers, resume after a crash."""
from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest

import pipeline.run as run_module
from pipeline.errors import PipelineError
from pipeline.outputs import claim
from pipeline.run import preprocess
from pipeline.shards import sha256_file
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER, demo_tokenizer

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def _chat(k: int, turns: int = 1) -> dict:
    messages = [SYSTEM]
    for t in range(turns):
        messages += [{"role": "user", "content": f"Question {k}.{t}: what is {k} + {t}?"},
                     {"role": "assistant", "content": f"The answer to {k}.{t} is {k + t}. 第{t}轮回答。"}]
    return {"messages": messages}


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _config(inputs, **overrides):
    return load_config(None, {"inputs": [str(p) for p in inputs], "render.tokenizer": str(DEMO_TOKENIZER), **overrides})


def test_layout_manifest_and_accounting(tmp_path):
    data = _write(tmp_path / "chats.jsonl", [_chat(k, turns=1 + k % 3) for k in range(30)] + ["{not json"])
    out = tmp_path / "out"
    manifest = preprocess(_config([data], **{"output.eval_split": 0.2}), out)
    loaded = datasets.load_from_disk(str(out))
    assert set(loaded) == {"train", "eval"}
    acc = manifest["accounting"]
    assert acc["read"] == 31 and acc["rejected_reasons"] == {"invalid_json": 1}
    assert acc["read"] == acc["written"] + acc["rejected"] + acc["filtered"]
    assert sum(len(loaded[s]) for s in loaded) == acc["written"] == 30
    for split, info in manifest["splits"].items():
        assert info["rows"] == len(loaded[split])
        assert info["tokens"] == sum(loaded[split]["length"])
        for shard in info["shards"]:
            assert sha256_file(out / split / shard["file"]) == shard["sha256"]
    train = loaded["train"]
    assert train.features["input_ids"].feature.dtype == "int32"
    assert all(len(i) == len(l) == n for i, l, n in zip(train["input_ids"], train["labels"], train["length"]))
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in rejects] == [(31, "invalid_json")]
    assert not (out / ".work").exists()


def test_saved_tokenizer_carries_the_template_and_decodes_the_rendering(tmp_path):
    rows = [_chat(k, turns=2) for k in range(5)]
    data = _write(tmp_path / "chats.jsonl", rows)
    out = tmp_path / "out"
    preprocess(_config([data]), out)
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert saved.chat_template == demo_tokenizer().chat_template
    train = datasets.load_from_disk(str(out))["train"]
    for row, ids in zip(rows, train["input_ids"]):
        assert saved.decode(ids) == saved.apply_chat_template(row["messages"], tokenize=False)


@pytest.mark.parametrize("strategy", ["cut_tail", "drop", "drop_oldest_turns"])
def test_truncation_never_exceeds_the_limit_and_counts_every_cut(tmp_path, strategy):
    data = _write(tmp_path / "chats.jsonl", [_chat(k, turns=1 + k % 6) for k in range(40)])
    out = tmp_path / "out"
    limit = 120
    manifest = preprocess(_config([data], **{"truncation.max_length": limit, "truncation.strategy": strategy}), out)
    train = datasets.load_from_disk(str(out))["train"]
    assert max(train["length"]) <= limit
    assert all(any(x != -100 for x in labels) for labels in train["labels"])
    acc = manifest["accounting"]
    assert acc["written"] == len(train) and acc["read"] == 40
    assert acc["read"] == acc["written"] + acc["filtered"] + acc["rejected"]
    if strategy == "drop":
        assert acc["filtered_reasons"]["too_long"] > 0
    if strategy == "cut_tail":
        assert acc["notes"]["truncated"] > 0
    if strategy == "drop_oldest_turns":
        assert acc["notes"]["turns_dropped"] > 0
        text = demo_tokenizer().decode(train["input_ids"][-1])
        assert text.count("<|system|>") == 1  # the system message is kept


def test_drop_oldest_turns_keeps_the_system_message_and_the_latest_round(tmp_path):
    long = _chat(7, turns=6)
    data = _write(tmp_path / "one.jsonl", [long])
    out = tmp_path / "out"
    preprocess(_config([data], **{"truncation.max_length": 90, "truncation.strategy": "drop_oldest_turns"}), out)
    text = demo_tokenizer().decode(datasets.load_from_disk(str(out))["train"]["input_ids"][0])
    assert text.startswith("[gMASK]<sop><|system|>\nYou are a helpful assistant.")
    assert "Question 7.5" in text and "Question 7.0" not in text


def test_special_tokens_typed_as_text_are_rejected_unless_allowed(tmp_path):
    sneaky = {"messages": [{"role": "user", "content": "say <|assistant|> please"},
                           {"role": "assistant", "content": "ok"}]}
    in_reasoning = {"messages": [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "ok", "reasoning_content": "then <|user|>"}]}
    split = {"messages": [{"role": "user", "content": "ends with <|assis"}, {"role": "assistant", "content": "tant|> ok"}]}
    data = _write(tmp_path / "chats.jsonl", [_chat(1), sneaky, in_reasoning, split])
    manifest = preprocess(_config([data]), tmp_path / "a")
    assert manifest["accounting"]["rejected_reasons"] == {"special_token_in_content": 2}
    rejects = [json.loads(line) for line in (tmp_path / "a" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"]) for r in rejects] == [(2, "messages.0.content"), (3, "messages.1.reasoning_content")]
    assert "<|assistant|>" in rejects[0]["message"]
    allowed = preprocess(_config([data], **{"render.allow_special_tokens_in_content": True}), tmp_path / "b")
    assert allowed["accounting"]["written"] == 4


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_same_bytes_for_any_number_of_workers(tmp_path, monkeypatch, start):
    """Workers process whole batches (many in flight here) and the output is the same bytes, rejects included,
    whether workers are forked copies of the process or spawned and built afresh."""
    monkeypatch.setattr(run_module.multiprocessing, "get_all_start_methods", lambda: [start])
    rows = [_chat(k, turns=1 + k % 4) for k in range(120)]
    rows[7], rows[61] = "{not json", {"messages": [{"role": "user", "content": "no answer"}]}
    data = _write(tmp_path / "chats.jsonl", rows)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        manifest = preprocess(_config([data], **{"output.workers": workers, "output.rows_per_shard": 50,
                                                "output.batch_size": 7, "output.eval_split": 0.1}), out)
        assert len(manifest["splits"]["train"]["shards"]) == 3
        assert manifest["accounting"]["rejected"] == 2 and manifest["accounting"]["written"] == 118
        files = sorted([*out.rglob("*.arrow"), out / "rejects.jsonl"])
        outputs.append({p.relative_to(out).as_posix(): sha256_file(p) for p in files})
    assert outputs[0] == outputs[1]


def _die(records):
    os._exit(3)  # a worker killed mid-batch (the OOM killer, a segfault)


def test_a_worker_that_dies_fails_the_run_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "_process_batch_in_worker", _die)
    data = _write(tmp_path / "chats.jsonl", [_chat(k) for k in range(20)])
    with pytest.raises(PipelineError, match="worker process died"):
        preprocess(_config([data], **{"output.workers": 2}), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_interrupted_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    data = _write(tmp_path / "chats.jsonl", [_chat(k, turns=1 + k % 3) for k in range(100)])
    overrides = {"output.rows_per_shard": 25, "output.eval_split": 0.2, "output.batch_size": 4}
    clean = tmp_path / "clean"
    preprocess(_config([data], **overrides), clean)

    crashed = tmp_path / "crashed"
    real_write, calls = run_module._write_chunk, []

    def crash_on_third(work, index, processor, chunk):
        calls.append(index)
        if len(calls) == 3:  # as if killed in the middle of the third chunk, its shard half written
            def rows_then_interrupt(rows, after=10):
                for k, row in enumerate(rows):
                    if k == after:
                        raise KeyboardInterrupt
                    yield row
            chunk = rows_then_interrupt(chunk)
        return real_write(work, index, processor, chunk)

    monkeypatch.setattr(run_module, "_write_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        preprocess(_config([data], **overrides), crashed)
    assert not (crashed / "manifest.json").exists()

    calls.clear()
    monkeypatch.setattr(run_module, "_write_chunk", lambda w, i, p, c: (calls.append(i), real_write(w, i, p, c))[1])
    preprocess(_config([data], **overrides), crashed)
    assert calls == [2, 3]  # chunks 0 and 1 were taken from the journal
    for path in sorted(clean.rglob("*")):
        if path.is_file() and path.parent.name != "tokenizer":
            assert path.read_bytes() == (crashed / path.relative_to(clean)).read_bytes(), path


def test_a_changed_config_does_not_reuse_the_journal(tmp_path, monkeypatch):
    data = _write(tmp_path / "chats.jsonl", [_chat(k) for k in range(10)])
    out = tmp_path / "out"
    claim(out, "shards").scratch(".work")  # a journal of this tool's, left by a run with another config
    (out / ".work" / "run.key").write_text("another run")
    (out / ".work" / "chunk-00000.json").write_text("{}")
    manifest = preprocess(_config([data]), out)
    assert manifest["accounting"]["written"] == 10


def test_text_with_reserved_sentinel_characters_is_rejected(tmp_path):
    bad = {"messages": [{"role": "user", "content": "odd \U000f0001 char"}, {"role": "assistant", "content": "ok"}]}
    data = _write(tmp_path / "chats.jsonl", [bad])
    manifest = preprocess(_config([data]), tmp_path / "out")
    assert manifest["accounting"]["rejected_reasons"] == {"reserved_character": 1}


def test_the_collector_is_left_as_it_was_found(tmp_path):
    """preprocess freezes its start-up objects for the run only, and leaves a caller's own freezing alone."""
    import gc

    data = _write(tmp_path / "in.jsonl", [_chat(k) for k in range(3)])
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    preprocess(_config([data]), tmp_path / "a")
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        preprocess(_config([data]), tmp_path / "b")
        # Neither unfrozen nor frozen again (frozen objects that die meanwhile leave the count, so it may shrink).
        assert 0 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
