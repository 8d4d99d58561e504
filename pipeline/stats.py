"""Counts that add up across workers and shards, so `read == written + rejected + filtered` is checked, not assumed."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Row accounting for one run. `rejected` are bad rows; `filtered` are good rows dropped by policy (truncation)."""

    read: int = 0
    written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def __iadd__(self, other: "Stats") -> "Stats":
        self.read += other.read
        self.written += other.written
        self.rejected.update(other.rejected)
        self.filtered.update(other.filtered)
        self.notes.update(other.notes)
        return self

    @property
    def balanced(self) -> bool:
        return self.read == self.written + sum(self.rejected.values()) + sum(self.filtered.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "written": self.written,
            "rejected": sum(self.rejected.values()),
            "filtered": sum(self.filtered.values()),
            "rejected_reasons": dict(sorted(self.rejected.items())),
            "filtered_reasons": dict(sorted(self.filtered.items())),
            "notes": dict(sorted(self.notes.items())),
            "balanced": self.balanced,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Stats":
        return cls(
            read=data["read"],
            written=data["written"],
            rejected=Counter(data.get("rejected_reasons", {})),
            filtered=Counter(data.get("filtered_reasons", {})),
            notes=Counter(data.get("notes", {})),
        )
