"""Property: whatever the mix of rows and limits, every row is written, rejected or filtered, and counted once."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import datasets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.run import preprocess
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER

words = st.text(alphabet="abc 你好🙂\n", min_size=0, max_size=30)
good = st.lists(st.tuples(words, words), min_size=1, max_size=4).map(
    lambda turns: json.dumps({"messages": [m for q, a in turns for m in ({"role": "user", "content": q or "?"},
                                                                         {"role": "assistant", "content": a or "!"})]})
)
bad = st.sampled_from([
    "{not json",
    json.dumps({"messages": []}),
    json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
    json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    json.dumps({"messages": [{"role": "user", "content": "<|user|>"}, {"role": "assistant", "content": "y"}]}),
    json.dumps({"messages": "not a list"}),
])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.one_of(good, bad), min_size=1, max_size=25),
       limit=st.integers(min_value=8, max_value=200),
       strategy=st.sampled_from(["cut_tail", "drop", "drop_oldest_turns"]))
def test_every_row_is_accounted_for_exactly_once(rows, limit, strategy):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "rows.jsonl")
        data.write_text("\n".join(rows) + "\n", encoding="utf-8")
        config = load_config(None, {"inputs": [str(data)], "render.tokenizer": str(DEMO_TOKENIZER),
                                    "truncation.max_length": limit, "truncation.strategy": strategy,
                                    "output.eval_split": 0.3, "output.batch_size": 4, "output.rows_per_shard": 7})
        manifest = preprocess(config, Path(tmp, "out"))
        acc = manifest["accounting"]
        assert acc["read"] == len(rows)
        assert acc["read"] == acc["written"] + acc["rejected"] + acc["filtered"]
        assert acc["rejected"] == sum(acc["rejected_reasons"].values())
        assert acc["filtered"] == sum(acc["filtered_reasons"].values())
        not_written = Path(tmp, "out", "rejects.jsonl").read_text().splitlines()
        assert len(not_written) == acc["rejected"] + acc["filtered"]
        written = [row for split in manifest["splits"] for row in datasets.load_from_disk(str(Path(tmp, "out", split)))]
        assert len(written) == acc["written"]
        rows_seen = sorted([r["row"] for r in written] + [json.loads(line)["row"] for line in not_written])
        assert rows_seen == list(range(1, len(rows) + 1))
        assert all(r["length"] <= limit and any(x != -100 for x in r["labels"]) for r in written)
