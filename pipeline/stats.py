"""Counts that add up across workers and shards, so `read == written + rejected + filtered` is checked, not assumed.
One counter for `preprocess` (where `written` rows went to the shards) and `validate` (where they were accepted)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Row accounting. `rejected` are bad rows; `filtered` are good rows dropped by policy (truncation); `notes` count
    remarks on written rows. `steps` counts per step of the chain the rows it took in and passed on and each reason
    it gave, and `files` per input file its rows written, rejected and filtered and the tokens and trained tokens
    written (both kept in the journal, not in the manifest's `accounting`; a mixture sums `files` per source)."""

    read: int = 0
    written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    note_tokens: Counter[str] = field(default_factory=Counter)  # per note, the tokens of the written rows it concerns
    steps: dict[str, Counter[str]] = field(default_factory=dict)
    files: dict[str, Counter[str]] = field(default_factory=dict)

    def __iadd__(self, other: "Stats") -> "Stats":
        self.read += other.read
        self.written += other.written
        self.rejected.update(other.rejected)
        self.filtered.update(other.filtered)
        self.notes.update(other.notes)
        self.note_tokens.update(other.note_tokens)
        for step, counts in other.steps.items():
            self.steps.setdefault(step, Counter()).update(counts)
        for file, counts in other.files.items():
            self.files.setdefault(file, Counter()).update(counts)
        return self

    @property
    def balanced(self) -> bool:
        return self.read == self.written + sum(self.rejected.values()) + sum(self.filtered.values())

    def to_json(self) -> dict[str, Any]:
        """The manifest's `accounting`."""
        return {
            "read": self.read,
            "written": self.written,
            "rejected": sum(self.rejected.values()),
            "filtered": sum(self.filtered.values()),
            "rejected_reasons": dict(sorted(self.rejected.items())),
            "filtered_reasons": dict(sorted(self.filtered.items())),
            "notes": dict(sorted(self.notes.items())),
            "note_tokens": dict(sorted(self.note_tokens.items())),
            "balanced": self.balanced,
        }

    def to_journal(self) -> dict[str, Any]:
        """`to_json` and the counts per step and file: what a journal keeps of a finished chunk."""
        return {**self.to_json(), "steps": {step: dict(counts) for step, counts in self.steps.items()},
                "files": {file: dict(counts) for file, counts in self.files.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Stats":
        return cls(
            read=data["read"],
            written=data["written"],
            rejected=Counter(data.get("rejected_reasons", {})),
            filtered=Counter(data.get("filtered_reasons", {})),
            notes=Counter(data.get("notes", {})),
            note_tokens=Counter(data.get("note_tokens", {})),
            steps={step: Counter(counts) for step, counts in data.get("steps", {}).items()},
            files={file: Counter(counts) for file, counts in data.get("files", {}).items()},
        )
