"""Row accounting adds up across batches and workers; the journal keeps the counts per step, the manifest does not."""
from __future__ import annotations

from collections import Counter

from pipeline.stats import Stats


def test_counts_add_up_and_survive_the_journal():
    a = Stats(read=5, written=3, rejected=Counter(invalid_json=1), filtered=Counter(too_long=1),
              notes=Counter(truncated=2), steps={"adapt": Counter({"in": 5, "out": 4, "invalid_json": 1})})
    b = Stats(read=2, written=2, steps={"adapt": Counter({"in": 2, "out": 2})})
    a += b
    assert (a.read, a.written, a.balanced) == (7, 5, True)
    assert a.steps == {"adapt": {"in": 7, "out": 6, "invalid_json": 1}}
    assert "steps" not in a.to_json()
    again = Stats.from_json(a.to_journal())
    assert again == a
    assert Stats.from_json(a.to_json()).steps == {}


def test_an_unbalanced_count_is_seen():
    assert not Stats(read=3, written=1, rejected=Counter(no_assistant=1)).balanced
