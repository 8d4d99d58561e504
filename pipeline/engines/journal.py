"""The journal of a run (`DIR/.work/`): each finished chunk's receipt, so that a rerun of an interrupted run does
only the chunks it lacks. A journal belongs to one run key (config, inputs, tokenizer, version): one from another
run is discarded, never reused, and a receipt counts only while every file it names still has its checksum."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.checksums import sha256_file
from pipeline.errors import PipelineError
from pipeline.outputs import OwnedDir, write_atomic

WORK_DIR = ".work"


class Journal:
    """The receipts of the finished chunks of one run, kept in `work`."""

    def __init__(self, owned: OwnedDir, run_key: str):
        key_file = owned.root / WORK_DIR / "run.key"
        fresh = not key_file.exists() or key_file.read_text() != run_key
        self.work = owned.scratch(WORK_DIR, fresh=fresh)
        if fresh:
            write_atomic(key_file, run_key.encode())
        self._receipts: dict[int, dict[str, Any]] = {}

    def finished(self, index: int) -> bool:
        """Whether chunk `index` is done: its receipt is journaled and every file it names has its checksum."""
        if index in self._receipts:
            return True
        path = self._path(index)
        if not path.exists():
            return False
        receipt = json.loads(path.read_text())
        files = [*(info["file"] for info in receipt["shards"].values()), receipt["rejects"], receipt["warnings"]]
        sums = [*(info["sha256"] for info in receipt["shards"].values()),
                receipt["rejects_sha256"], receipt["warnings_sha256"]]
        if all((self.work / f).exists() and sha256_file(self.work / f) == s for f, s in zip(files, sums)):
            self._receipts[index] = receipt
            return True
        return False

    def record(self, index: int, receipt: dict[str, Any]) -> None:
        """Journal chunk `index` as done (its files are in place)."""
        write_atomic(self._path(index), json.dumps(receipt, sort_keys=True).encode())
        self._receipts[index] = receipt

    def receipts(self) -> list[dict[str, Any]]:
        """Every chunk's receipt, in chunk order; an error if one is missing."""
        if sorted(self._receipts) != list(range(len(self._receipts))):
            raise PipelineError(f"internal error: chunks {sorted(self._receipts)} are not all the run's chunks")
        return [self._receipts[index] for index in range(len(self._receipts))]

    def _path(self, index: int) -> Path:
        return self.work / f"chunk-{index:05d}.json"
