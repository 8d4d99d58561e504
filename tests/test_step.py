"""The step interface: a chain runs steps in order, routes each dropped row by its reason's kind, and counts per step
and reason; consecutive row steps make one pass, so their rejects come in input order."""
from __future__ import annotations

import pytest

from pipeline.errors import Reason, RowError
from pipeline.step import Chain, RowStep, Step, Tally


def _error(item: int, reason: Reason) -> RowError:
    return RowError("in.jsonl", item, reason, f"row {item}")


class RejectMultiplesOf(RowStep):
    def __init__(self, name: str, k: int, reason: Reason = Reason.WRONG_TYPE):
        self.name, self.k, self.reason = name, k, reason

    def row(self, item: int, tally: Tally) -> int | None:
        if item % self.k == 0:
            tally.drop(_error(item, self.reason))
            return None
        return item


class NoteOdd(RowStep):
    name = "note_odd"

    def row(self, item: int, tally: Tally) -> int:
        if item % 2:
            tally.note(Reason.TRUNCATED)
        return item


class WarnAll(Step):
    """A batch step: sees the whole batch at once."""

    name = "warn_all"

    def process(self, items: list[int], tally: Tally) -> list[int]:
        for item in items:
            tally.warn(_error(item, Reason.ADDED_TOKEN_IN_TEXT))
        return items


def test_row_steps_in_a_row_reject_in_input_order_and_count_per_step_and_reason():
    chain = Chain([RejectMultiplesOf("threes", 3), RejectMultiplesOf("fives", 5, Reason.TOO_LONG), NoteOdd()])
    outcome = chain(list(range(1, 16)))
    assert [e.row for e in outcome.rejected] == [3, 6, 9, 12, 15]
    assert [e.row for e in outcome.filtered] == [5, 10]  # too_long filters: a good row dropped by policy
    assert outcome.items == [1, 2, 4, 7, 8, 11, 13, 14]
    assert outcome.steps == {
        "threes": {"in": 15, "out": 10, Reason.WRONG_TYPE: 5},
        "fives": {"in": 10, "out": 8, Reason.TOO_LONG: 2},
        "note_odd": {"in": 8, "out": 8, Reason.TRUNCATED: 4},
    }
    stats = outcome.stats()
    assert (stats.read, stats.written, stats.balanced) == (15, 8, True)
    assert stats.rejected == {"wrong_type": 5} and stats.filtered == {"too_long": 2} and stats.notes == {"truncated": 4}


def test_a_batch_step_ends_a_pass_and_its_remarks_are_listed_and_counted():
    chain = Chain([RejectMultiplesOf("threes", 3), WarnAll(), RejectMultiplesOf("twos", 2)])
    outcome = chain([1, 2, 3, 4, 5, 6])
    assert [e.row for e in outcome.rejected] == [3, 6, 2, 4]  # the pass before the batch step first
    assert [e.row for e in outcome.warnings] == [1, 2, 4, 5]
    assert outcome.notes == {"added_token_in_text": 4}
    assert outcome.steps["warn_all"] == {"in": 4, "out": 4, Reason.ADDED_TOKEN_IN_TEXT: 4}


def test_a_step_runs_alone_on_a_batch():
    outcome = RejectMultiplesOf("threes", 3)([3, 4])
    assert outcome.items == [4] and [e.reason for e in outcome.rejected] == [Reason.WRONG_TYPE]


def test_an_empty_batch_runs_no_step():
    outcome = Chain([RejectMultiplesOf("threes", 3)])([])
    assert outcome.items == [] and outcome.steps == {} and outcome.stats().balanced


def test_a_note_cannot_drop_a_row_and_a_chain_names_each_step_once():
    with pytest.raises(ValueError, match="notes a row"):
        RejectMultiplesOf("threes", 3, Reason.TRUNCATED)([3])
    with pytest.raises(ValueError, match="once"):
        Chain([RejectMultiplesOf("same", 2), RejectMultiplesOf("same", 3)])
