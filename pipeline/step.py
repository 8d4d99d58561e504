"""The step interface: each stage is a small object with one job, built once with what it needs (tokenizer, renderer,
encoder, its own config), called on a batch. A `Chain` runs steps in order and counts per step and reason.

A step passes items on, and hands the rows it does not pass on to its `Tally`, each a `RowError` whose `Reason` says
whether it is rejected (bad data) or filtered (good data dropped by policy); it notes remarks on rows it passes on
there too. Steps know nothing of files, chunks or processes: the local executor (`pipeline.run`) runs a chain in
worker processes over the chunks of its inputs, and another engine can run the same chain on its own batches.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.errors import Kind, Reason, RowError
from pipeline.stats import Stats


@dataclass
class Outcome:
    """What a step or a chain made of a batch: the items passed on, the rows rejected and filtered and the remarks
    listed in warnings.jsonl (each in the order they arose), the remarks only counted, and counts per step."""

    read: int = 0
    items: list[Any] = field(default_factory=list)
    rejected: list[RowError] = field(default_factory=list)
    filtered: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    note_tokens: Counter[str] = field(default_factory=Counter)
    steps: dict[str, Counter[str]] = field(default_factory=dict)

    def stats(self) -> Stats:
        """The batch's accounting: every row read is written (passed on by the last step), rejected or filtered."""
        return Stats(
            read=self.read,
            written=len(self.items),
            rejected=Counter(error.reason for error in self.rejected),
            filtered=Counter(error.reason for error in self.filtered),
            notes=Counter(self.notes),
            note_tokens=Counter(self.note_tokens),
            steps={step: Counter(counts) for step, counts in self.steps.items()},
        )


class Tally:
    """Where one step puts what it does not pass on, and its remarks, counted under the step's name."""

    def __init__(self, outcome: Outcome, step: str):
        self.outcome = outcome
        self.counts = outcome.steps.setdefault(step, Counter())

    def drop(self, error: RowError) -> None:
        """Reject or filter a row, as its reason's kind says."""
        if error.reason.kind is Kind.REJECTED:
            self.outcome.rejected.append(error)
        elif error.reason.kind is Kind.FILTERED:
            self.outcome.filtered.append(error)
        else:
            raise ValueError(f"{error.reason} notes a row, it cannot drop one")
        self.counts[error.reason] += 1

    def warn(self, remark: RowError) -> None:
        """A remark on a row passed on, listed in warnings.jsonl and counted as a note."""
        self.outcome.warnings.append(remark)
        self.note(remark.reason)

    def note(self, reason: Reason, *, tokens: int = 0) -> None:
        """A remark on a row passed on, only counted; `tokens`: how many of its tokens the remark is about."""
        self.outcome.notes[reason] += 1
        self.counts[reason] += 1
        if tokens:
            self.outcome.note_tokens[reason] += tokens


class Step(ABC):
    """One stage, as datatrove's `PipelineStep`: built once, then called on batch after batch."""

    name: ClassVar[str]

    @abstractmethod
    def process(self, items: list[Any], tally: Tally) -> list[Any]:
        """The items passed on; the rest go to `tally` with their reasons."""

    def __call__(self, items: list[Any]) -> Outcome:
        """This step alone on a batch."""
        return Chain([self])(items)


class RowStep(Step):
    """A step that decides one row at a time. A chain runs consecutive row steps in one pass over the batch (as Ray
    Data fuses map operators), so their rejects come in input order."""

    @abstractmethod
    def row(self, item: Any, tally: Tally) -> Any | None:
        """The item passed on, or None when it went to `tally`."""

    def process(self, items: list[Any], tally: Tally) -> list[Any]:
        return [kept for item in items if (kept := self.row(item, tally)) is not None]


class Chain:
    """Steps run in order on a batch. Each step sees only what the steps before it passed on; each row not passed
    on is counted once, under the step and reason that dropped it."""

    def __init__(self, steps: Sequence[Step]):
        names = [step.name for step in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"a chain names each step once: {names}")
        self.steps = list(steps)
        self._stretches = _stretches(self.steps)

    def __call__(self, items: list[Any]) -> Outcome:
        outcome = Outcome(read=len(items))
        for stretch in self._stretches:
            if not items:
                break
            tallies = [Tally(outcome, step.name) for step in stretch]
            if isinstance(stretch[0], RowStep):
                items = _fused(stretch, tallies, items)
            else:
                tallies[0].counts["in"] += len(items)
                items = stretch[0].process(items, tallies[0])
                tallies[0].counts["out"] += len(items)
        outcome.items = items
        return outcome


def _stretches(steps: list[Step]) -> list[list[Step]]:
    """Consecutive row steps grouped; every other step alone."""
    stretches: list[list[Step]] = []
    for step in steps:
        if isinstance(step, RowStep) and stretches and isinstance(stretches[-1][-1], RowStep):
            stretches[-1].append(step)
        else:
            stretches.append([step])
    return stretches


def _fused(steps: list[Step], tallies: list[Tally], items: list[Any]) -> list[Any]:
    """Each item through every row step in turn, until one drops it."""
    passed = []
    for item in items:
        for step, tally in zip(steps, tallies):
            tally.counts["in"] += 1
            item = step.row(item, tally)
            if item is None:
                break
            tally.counts["out"] += 1
        else:
            passed.append(item)
    return passed
