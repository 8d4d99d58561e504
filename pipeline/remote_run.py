"""`preprocess --out s3://...`: the local run writes into a staging directory, its journal is mirrored to the
prefix's `.work/` as each chunk finishes, and the finished output is published object by object, the manifest last.

The journal lives with the output, not on the machine: a run killed on one machine resumes on any other that can
reach the prefix (the journal is pulled down, each chunk checked against its checksums, as a local resume does).
Staging is a fresh temporary directory for each run, so nothing is left behind on the machine. The published files
are the staging files as they are: the same bytes as a local run's. A shard is uploaded once, into the journal: the
published shard is a copy made on the server of the journal's file with the same sha256.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import OutputError
from pipeline.outputs import LEDGER, claim
from pipeline.remote_outputs import OwnedPrefix, claim_prefix
from pipeline.run import OUTPUT_PATHS, WORK_DIR, preprocess
from pipeline.shards.format import MANIFEST
from pipeline.storage import is_url, open_store
from schemas.config import PreprocessConfig


def preprocess_to_store(config: PreprocessConfig, url: str, *, ray_address: str | None = None) -> dict[str, Any]:
    """Run preprocess into the object-storage prefix `url` and return the manifest; resumes an interrupted run.
    `ray_address`: as for `preprocess`."""
    store = open_store(url, config.output.storage_options)
    _refuse_overlap(store.url, config.inputs or [source.path for source in config.sources])
    prefix = claim_prefix(store, "shards", writes=OUTPUT_PATHS)
    prefix.scratch(WORK_DIR)
    with tempfile.TemporaryDirectory(prefix="chatshard-staging-") as tmp:
        staging = Path(tmp)
        journal = JournalMirror(prefix, claim(staging, "shards").scratch(WORK_DIR))
        journal.pull()
        manifest = preprocess(config, staging, ray_address=ray_address, on_journal=journal.push)
        publish(prefix, staging, manifest, journal.shards())
    return manifest


class JournalMirror:
    """Keeps the prefix's `.work/` equal to the local journal folder: what changed is uploaded, what is gone is
    deleted (a journal discarded for another config goes from both). It knows the shard files its receipts name,
    so that publishing copies them on the server instead of uploading them again."""

    def __init__(self, prefix: OwnedPrefix, work: Path):
        self.prefix = prefix
        self.work = work
        self._sent: dict[str, tuple[int, int]] = {}  # file name -> (size, mtime) as last mirrored
        self._receipts: dict[str, dict[str, str]] = {}  # receipt mirrored -> {sha256: key} of the shards it names

    def pull(self) -> None:
        """Copy the prefix's journal into the (empty) local journal folder."""
        for key in self.prefix.store.keys(WORK_DIR):
            name = key[len(WORK_DIR) + 1:]
            if "/" not in name and not name.endswith(".tmp"):
                self.prefix.store.download(key, self.work / name)
        self._sent = self._stamps()
        self._note_receipts(self._sent, gone=[])

    def push(self) -> None:
        """Mirror the local journal folder to the prefix."""
        here = self._stamps()
        gone = [name for name in self._sent if name not in here]
        changed = [name for name, stamp in sorted(here.items()) if self._sent.get(name) != stamp]
        self.prefix.store.delete(f"{WORK_DIR}/{name}" for name in gone)
        self.prefix.store.upload((self.work / name, f"{WORK_DIR}/{name}") for name in changed)
        self._sent = here
        self._note_receipts(changed, gone)

    def shards(self) -> dict[str, str]:
        """The shard files in the prefix's journal: sha256 -> key."""
        return {sha: key for named in self._receipts.values() for sha, key in named.items()}

    def _note_receipts(self, sent: Iterable[str], gone: Iterable[str]) -> None:
        """Read the chunk receipts just mirrored (`chunk-NNNNN.json`), forget those deleted."""
        for name in gone:
            self._receipts.pop(name, None)
        for name in sent:
            if name.startswith("chunk-") and name.endswith(".json"):
                receipt = json.loads((self.work / name).read_bytes())
                self._receipts[name] = {info["sha256"]: f"{WORK_DIR}/{info['file']}"
                                        for info in receipt["shards"].values()}

    def _stamps(self) -> dict[str, tuple[int, int]]:
        stats = {p.name: p.stat() for p in self.work.iterdir() if p.is_file() and not p.name.endswith(".tmp")}
        return {name: (st.st_size, st.st_mtime_ns) for name, st in stats.items()}


def publish(prefix: OwnedPrefix, staging: Path, manifest: dict[str, Any], journaled: dict[str, str]) -> None:
    """Put the finished output in `staging` under the prefix: the old manifest goes first (a prefix without one is
    incomplete), then old files the new output does not have, then every file, the manifest last, then the
    journal. A shard whose sha256 is in `journaled` (sha256 -> key of the journal's copy) is copied on the server
    from there; every other file is uploaded."""
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    files = [f for f in files if f != LEDGER]
    copies = {f"{split}/{shard['file']}": journaled[shard["sha256"]] for split, info in manifest["splits"].items()
              for shard in info["shards"] if shard["sha256"] in journaled}
    prefix.remove(MANIFEST)
    stale = [key for rel in OUTPUT_PATHS if rel not in (MANIFEST, WORK_DIR) for key in prefix.store.keys(rel)
             if key not in files]
    if stale:
        prefix.remove(*stale)
    prefix.record(*files)
    prefix.store.copy((source, dest) for dest, source in copies.items())
    prefix.store.upload((staging / f, f) for f in files if f != MANIFEST and f not in copies)
    prefix.store.upload([(staging / MANIFEST, MANIFEST)])
    prefix.remove(WORK_DIR)


def _refuse_overlap(url: str, inputs: tuple[str, ...]) -> None:
    """An output prefix may not be, hold or sit inside an input given as a URL."""
    for given in inputs:
        if not is_url(given):
            continue
        name = given.rstrip("/")
        relation = ("is" if name == url else "holds" if name.startswith(url + "/") else
                    "sits inside" if url.startswith(name + "/") else None)
        if relation:
            raise OutputError(f"{url}: the output prefix {relation} the input {given}; choose an --out apart from the "
                              "inputs")
