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


def test_scaling_points_are_the_difference_of_a_full_and_a_fifth_run(tmp_path, monkeypatch):
    def fake_run(job):  # (tokens, rows, seconds, parent CPU, children CPU, peak MiB): start-up 5 s, 1 s per 1,000 tokens
        full = "fifth" not in job.kwargs["data"]
        tokens, rows = (10_000, 1_000) if full else (2_000, 200)
        seconds = 5 + tokens / 1_000 / job.kwargs["workers"] * (1.25 if job.kwargs["workers"] > 1 else 1)
        return tokens, rows, seconds, 3 + rows / 1_000 * 0.1, rows / 1_000 * 2.0, 100.0

    monkeypatch.setattr(bench, "_in_fresh_process", fake_run)
    lines = bench.scaling_table("x", DEMO_TOKENIZER, tmp_path / "all.jsonl", tmp_path / "fifth.jsonl", tmp_path,
                                ["hf"], cores=2)
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    assert cells[0][:6] == ["local", "hf", "1", "1,000", "1.00x", "1.00"]  # 8,000 tokens in 8 s: start-up cancels
    assert cells[1][:6] == ["local", "hf", "2", "1,600", "1.60x", "0.80"]
    assert cells[1][6:] == ["0.100", "2.000", "21x"] and cells[3][7:] == ["-", "-"]  # Ray's workers are not ours
