"""`make bench` helpers: the worker counts of the scaling table, and the start-up table (the first run on a tokenizer
on its own row, before the measured runs; every command shares one fresh tokenizer cache)."""
from __future__ import annotations

import pytest

from tests.conftest import DEMO_TOKENIZER
from tools import bench
from tools.bench import worker_counts


@pytest.mark.parametrize("cores, counts", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (16, [1, 2, 4, 8, 16])])
def test_worker_counts_double_up_to_the_cores(cores, counts):
    assert worker_counts(cores) == counts


def test_the_first_preprocess_fills_a_fresh_cache_before_the_measured_runs(tmp_path, monkeypatch):
    calls: list[tuple[list[str], str]] = []

    def fake_seconds(command: list[str], env: dict[str, str] | None = None) -> float:
        calls.append((command, env["CHATSHARD_CACHE"]))
        return 4.0 if "-c" in command else 1.0 + len(calls) / 100

    monkeypatch.setattr(bench, "_seconds", fake_seconds)
    rows = bench.startup_table("demo", DEMO_TOKENIZER, tmp_path, runs=2)
    kinds = ["auto" if "-c" in command else command[3] for command, _ in calls]
    assert kinds == ["preprocess", "auto", "preprocess", "check", "auto", "preprocess", "check"]
    assert {cache for _, cache in calls} == {str(tmp_path / "demo.cache")}
    assert [row.split("|")[2].strip() for row in rows] == [
        "python -c 'AutoTokenizer.from_pretrained(DIR)'", "preprocess, one row, first run on the tokenizer",
        "preprocess, one row", "check of its output"]
    assert rows[1].split("|")[3].strip() == "1.01" and rows[0].endswith(" 1.00x |")
