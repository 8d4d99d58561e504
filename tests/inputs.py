"""The same chat records in every input container (JSON Lines, Parquet, Arrow IPC file and stream,
`datasets.save_to_disk`), and the shards `preprocess` builds from an input, for tests that check a container, a store
or the hub gives the same tokens as the JSON Lines file."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.run import preprocess
from pipeline.shards.reader import iter_batches
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER

CONVERSIONS = ("parquet", "arrow_file", "arrow_stream", "save_to_disk")


def chat_records(count: int = 12) -> list[dict]:
    """OpenAI records whose keys differ from row to row (a system message in some, tool calls in others, `content:
    null` on a call): a columnar file unifies them into one schema with nulls, which must read back as the JSON did."""
    rows = []
    for k in range(count):
        messages = [{"role": "system", "content": f"Be brief, #{k}."}] if k % 3 == 0 else []
        messages.append({"role": "user", "content": f"Question {k}: 第{k}题 is {k} + 2?"})
        if k % 4 == 1:
            call = {"id": f"c{k}", "type": "function", "function": {"name": "add", "arguments": json.dumps({"a": k, "b": 2})}}
            messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": f"c{k}", "content": str(k + 2)}]
        messages.append({"role": "assistant", "content": f"It is {k + 2}."})
        rows.append({"id": f"row-{k}", "messages": messages})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def convert(jsonl: Path, kind: str, directory: Path) -> Path:
    """The JSON Lines file converted by `datasets` (as users convert data) into `kind`, in `directory`."""
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    dataset = datasets.Dataset.from_list(rows)
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        dataset.to_parquet(str(directory / "chats.parquet"))
        return directory / "chats.parquet"
    if kind == "save_to_disk":
        datasets.DatasetDict({"train": dataset}).save_to_disk(str(directory / "saved"))
        return directory / "saved"
    table = dataset.data.table
    path = directory / "chats.arrow"
    with pa.OSFile(str(path), "wb") as sink:
        new = pa.ipc.new_file if kind == "arrow_file" else pa.ipc.new_stream
        with new(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=5)  # several record batches
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def build(inputs: list[str], out: Path, **overrides) -> dict:
    """`preprocess` with the demo tokenizer and an eval split; the manifest."""
    config = load_config(None, {"inputs": inputs, "render.tokenizer": str(DEMO_TOKENIZER), "output.eval_split": 0.25,
                                "output.rows_per_shard": 5, **overrides})
    return preprocess(config, out)


def shard_tables(out: Path, manifest: dict) -> dict[str, list[pa.Table]]:
    """Every shard of every split, as Arrow tables in manifest order."""
    return {split: [pa.Table.from_batches(list(iter_batches(out / split / shard["file"]))) for shard in info["shards"]]
            for split, info in manifest["splits"].items()}


def same_shards(out: Path, manifest: dict, reference_out: Path, reference: dict, sources: dict[str, str]) -> None:
    """The shards under `out` hold the reference's rows, tokens and labels exactly, and differ only in `source`, which
    names the file each row came from (`sources`: the reference's source -> this run's)."""
    assert manifest["accounting"] == reference["accounting"]
    assert {s: (i["rows"], i["tokens"], i["trained_tokens"]) for s, i in manifest["splits"].items()} == \
        {s: (i["rows"], i["tokens"], i["trained_tokens"]) for s, i in reference["splits"].items()}
    got, want = shard_tables(out, manifest), shard_tables(reference_out, reference)
    assert got.keys() == want.keys()
    for split in want:
        for mine, theirs in zip(got[split], want[split], strict=True):
            assert mine.drop_columns(["source"]).equals(theirs.drop_columns(["source"]))
            assert mine["source"].to_pylist() == [sources[s] for s in theirs["source"].to_pylist()]
