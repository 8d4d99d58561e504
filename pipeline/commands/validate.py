"""The `validate` command: read every input, count accepted and rejected rows per reason, write rejects, report.

The rules themselves are in `pipeline.stages.validate`; this module reads files and reports.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import RowError
from pipeline.progress import progress
from pipeline.stages.ingest import detect_formats, read_conversations, resolve_inputs
from pipeline.stages.validate import notes_for
from pipeline.stats import Stats
from schemas.sources import SourceConfig


@dataclass
class ValidationReport:
    """One `validate_inputs` run: the files with their formats, the counts (`Stats`, whose written rows are the
    accepted ones: `read == accepted + rejected` always) and the first errors."""

    files: dict[str, str] = field(default_factory=dict)
    counts: Stats = field(default_factory=Stats)
    examples: list[RowError] = field(default_factory=list)

    @property
    def read(self) -> int:
        return self.counts.read

    @property
    def accepted(self) -> int:
        return self.counts.written

    @property
    def rejected(self) -> int:
        return sum(self.counts.rejected.values())

    @property
    def reasons(self) -> Counter[str]:
        return self.counts.rejected

    @property
    def notes(self) -> Counter[str]:
        return self.counts.notes

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "notes": dict(sorted(self.notes.items())),
            "files": self.files,
            "errors": [{k: v for k, v in e.to_json().items() if k != "raw"} for e in self.examples],
        }

    def to_text(self) -> str:
        width = max((len(p) for p in self.files), default=0)
        lines = ["files:"] + [f"  {p:<{width}}  {fmt}" for p, fmt in self.files.items()]
        lines.append(f"read {self.read}, accepted {self.accepted}, rejected {self.rejected}")
        for title, counts in (("rejected by reason:", self.reasons), ("accepted with notes:", self.notes)):
            if counts:
                lines.append(title)
                lines += [f"  {code:<24} {n}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        if self.examples:
            lines.append(f"first {len(self.examples)} error(s):")
            for e in self.examples:
                at = f" (line {e.extra['line']})" if e.extra.get("line") else ""
                lines.append(f"  {e}{at}  [{e.reason}]")
        return "\n".join(lines)


def validate_inputs(
    inputs: Sequence[str], source: SourceConfig, *, rejects: Path | None = None, max_examples: int = 10,
    show_progress: bool | None = None,
) -> ValidationReport:
    """Read every input with `source`, count accepted and rejected rows per reason, keep the first errors, and
    write every rejected row to `rejects` as JSONL (written to a temp file, renamed when the run completes).

    `InputError` when an input is missing or unreadable; nothing is left at `rejects` then.
    """
    formats = detect_formats(resolve_inputs(inputs, source.storage_options), source)
    report = ValidationReport(files={str(path): fmt for path, fmt in formats.items()})
    counts = report.counts
    out = None
    if rejects is not None:  # a temp file of our own (created, never opened over another's), renamed when complete
        handle, name = tempfile.mkstemp(dir=rejects.parent, prefix=f".{rejects.name}.", suffix=".tmp")
        tmp, out = Path(name), os.fdopen(handle, "w", encoding="utf-8")
    else:
        tmp = None
    try:
        for item in progress(read_conversations(formats, source), desc="validate", enabled=show_progress):
            counts.read += 1
            if isinstance(item, RowError):
                counts.rejected[item.reason] += 1
                if len(report.examples) < max_examples:
                    report.examples.append(item)
                if out is not None:
                    out.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
            else:
                counts.written += 1
                counts.notes.update(notes_for(item))
        if out is not None:
            out.close()
            os.replace(tmp, rejects)
    finally:
        if out is not None and not out.closed:
            out.close()
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return report
