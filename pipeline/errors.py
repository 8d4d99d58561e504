"""Typed errors. A `RowError` rejects one row and goes to rejects.jsonl; the others stop the run.

Library code raises these and never imports click: the CLI maps them to exit codes. `PipelineError` and
`ConfigError` are defined in `schemas.errors` (config loading raises them, and `schemas` imports nothing from here)
and re-exported, so every caller imports errors from this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from schemas.errors import ConfigError, PipelineError

__all__ = ["ConfigError", "InputError", "OptionError", "OutputError", "PipelineError", "RowError"]


class InputError(PipelineError):
    """An input file cannot be read at all (missing, undecodable container, unknown format)."""


class OptionError(PipelineError):
    """An option asks for what the data does not hold (a split, a row index, a row id): a usage error."""


class OutputError(PipelineError):
    """An output path cannot be used: it holds files this tool did not write, overlaps an input, or cannot be
    created. Nothing has been removed or overwritten when this is raised."""


@dataclass
class RowError(Exception):
    """One input row that cannot be used. Reads `file:line: field: message`; `reason` is a short snake_case code."""

    source: str
    row: int
    reason: str
    message: str
    field: str = ""
    raw: Any = None
    id: str | None = None
    extra: dict[str, Any] = dataclass_field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}:{self.row}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def __reduce__(self):
        """Pickle by fields (workers send rejected rows back), not by the exception's message argument."""
        return RowError, (self.source, self.row, self.reason, self.message, self.field, self.raw, self.id, self.extra)

    def to_json(self) -> dict[str, Any]:
        """The rejects.jsonl line for this row."""
        return {
            "source": self.source,
            "row": self.row,
            "id": self.id,
            "field": self.field,
            "reason": self.reason,
            "message": self.message,
            "raw": self.raw,
            **self.extra,
        }
