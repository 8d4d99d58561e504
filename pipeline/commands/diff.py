"""`python -m pipeline diff OLD NEW`: what changed between two builds, row by row and in what built them.

Rows are matched by `id`. An id that occurs more than once in a build (a record's own `id` used twice) is matched
occurrence by occurrence in build order (split, then index: input order), so `source` and `row` decide among
duplicates. A matched row is changed when its `input_ids` or its `labels` differ; one that only moved between
splits is counted as moved, not changed.

Why a hashed join on disk: a build is written in input order, not in id order, and one edit shifts every row after
it, so a merge join of the two streams would first need both sorted, and a dictionary of every id would grow with
the build. Instead each build is streamed once, one record batch at a time (`Shards.stream`), and each row becomes a
small record (id, split, index, source, row, a blake2b digest of its input_ids and one of its labels, tokens,
trained tokens) appended to one of P bucket files, chosen by a hash of the id. Equal ids land in the same bucket on
both sides, so each bucket pair is joined on its own (Arrow's hash join), and memory is bounded by one bucket
(`ROWS_PER_BUCKET` rows; P is sized from the manifests), not by the build. The few rows shown are read again by
index, streaming (`Shards.take`). The buckets live in a temporary folder (under $TMPDIR) removed at the end.

What the summary measures: a row differs when it is added, removed or changed. The changed share of rows is
differing rows / (matched + added + removed); the changed share of trained tokens is (trained tokens of OLD's
removed and changed rows + trained tokens of NEW's added and changed rows) / (OLD's + NEW's trained tokens). Both are
0 for identical builds and 1 when no row is the same. A threshold below 1 is a fraction of those, 1 or more a count
(of differing rows, of trained tokens in differing rows).
"""
from __future__ import annotations

import hashlib
import json
import math
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.commands.show import CLOSE, OPEN, token_pieces
from pipeline.shards.format import IGNORE_INDEX
from pipeline.shards.reader import RowBatch, RowSample, Shards, open_shards
from pipeline.tokenizer import load_saved_tokenizer

ROWS_PER_BUCKET = 250_000  # rows of one build joined at a time (about 40 MB of records per side)
CONTEXT = 12  # tokens decoded on each side of a row's first difference
MARK = "▸"  # where the first difference is, in the decoded context
PROVENANCE = ("input_ids", "labels", "id", "source", "row")
RECORD = pa.schema([
    ("id", pa.string()),
    ("rank", pa.int32()),  # the split's place in build order (train first)
    ("split", pa.string()),
    ("index", pa.int64()),
    ("source", pa.string()),
    ("row", pa.int64()),
    ("ids_digest", pa.binary(16)),
    ("labels_digest", pa.binary(16)),
    ("tokens", pa.int64()),
    ("trained", pa.int64()),
])
COUNTED = ("rejected.", "filtered.")  # build fields that are counts: a reason absent from a manifest counted 0 times


@dataclass
class RowCounts:
    """How the rows of two builds compare, summed over the buckets."""

    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    moved: int = 0  # matched rows in another split (changed or not)
    input_ids_only: int = 0  # changed rows whose labels are the same
    labels_only: int = 0  # changed rows whose tokens are the same: a mask change
    both: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    trained_tokens: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    changed_tokens: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})  # in changed rows
    changed_trained_tokens: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    differing_trained_tokens: int = 0  # OLD's removed and changed rows + NEW's added and changed rows

    @property
    def differing(self) -> int:
        return self.added + self.removed + self.changed

    @property
    def rows_fraction(self) -> float:
        return self.differing / max(1, self.differing + self.unchanged)

    @property
    def trained_fraction(self) -> float:
        return self.differing_trained_tokens / max(1, sum(self.trained_tokens.values()))


@dataclass(frozen=True)
class Threshold:
    """One limit: below 1 a fraction (of rows, of trained tokens), 1 or more a count."""

    option: str
    limit: float
    count: int
    fraction: float

    @property
    def value(self) -> float:
        return self.fraction if self.limit < 1 else self.count

    @property
    def passed(self) -> bool:
        return self.value <= self.limit

    def to_json(self) -> dict[str, Any]:
        return {"option": self.option, "limit": self.limit, "count": self.count, "fraction": self.fraction,
                "passed": self.passed}


@dataclass
class DiffReport:
    old: Path
    new: Path
    rows: RowCounts
    build: dict[str, dict[str, Any]]  # build field -> {"old": ..., "new": ...}, only those that differ
    examples: list[dict[str, Any]]  # the first changed rows (NEW's order), with their first difference decoded
    added_ids: list[str]  # the first added rows' ids (NEW's order)
    removed_ids: list[str]  # the first removed rows' ids (OLD's order)
    thresholds: list[Threshold]

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.thresholds)

    def to_json(self) -> dict[str, Any]:
        r = self.rows
        return {
            "old": str(self.old), "new": str(self.new),
            "added": r.added, "removed": r.removed, "changed": r.changed, "unchanged": r.unchanged, "moved": r.moved,
            "changed_in": {"input_ids": r.input_ids_only, "labels": r.labels_only, "both": r.both},
            "tokens": r.tokens, "trained_tokens": r.trained_tokens,
            "changed_rows": {"tokens": r.changed_tokens, "trained_tokens": r.changed_trained_tokens},
            "altered": {"rows": r.differing, "rows_fraction": r.rows_fraction,
                        "trained_tokens": r.differing_trained_tokens, "trained_tokens_fraction": r.trained_fraction},
            "build": self.build,
            "examples": self.examples,
            "added_ids": self.added_ids,
            "removed_ids": self.removed_ids,
            "thresholds": [t.to_json() for t in self.thresholds],
            "passed": self.passed,
        }

    def to_markdown(self) -> str:
        """A short summary for a pull-request comment."""
        r = self.rows
        lines = [f"## chatshard diff: `{self.old}` → `{self.new}`", ""]
        if r.differing:
            lines.append(f"**This change alters {r.trained_fraction:.1%} of trained tokens** "
                         f"({r.differing_trained_tokens:,} in rows that differ) and {r.rows_fraction:.1%} of rows: "
                         f"{r.added:,} added, {r.removed:,} removed, {r.changed:,} changed "
                         f"({r.input_ids_only:,} in input_ids only, {r.labels_only:,} in labels only, {r.both:,} in "
                         f"both); {r.unchanged:,} unchanged.")
        else:
            lines.append(f"**No change to the training data**: all {r.unchanged:,} rows have the same input_ids and "
                         "labels.")
        if r.moved:
            lines.append(f"{r.moved:,} rows moved to another split.")
        lines += ["", "| | old | new |", "|---|---|---|",
                  f"| rows | {r.changed + r.unchanged + r.removed:,} | {r.changed + r.unchanged + r.added:,} |",
                  f"| tokens | {r.tokens['old']:,} | {r.tokens['new']:,} |",
                  f"| trained tokens | {r.trained_tokens['old']:,} | {r.trained_tokens['new']:,} |"]
        if r.changed:
            lines += [f"| changed rows: tokens | {r.changed_tokens['old']:,} | {r.changed_tokens['new']:,} |",
                      f"| changed rows: trained tokens | {r.changed_trained_tokens['old']:,} | "
                      f"{r.changed_trained_tokens['new']:,} |"]
        lines += [f"| `{name}` | {_cell(values['old'])} | {_cell(values['new'])} |"
                  for name, values in self.build.items()]
        if self.examples:
            lines += ["", f"### First changed rows ({MARK}: first difference, "
                          f"{OPEN}...{CLOSE}: trained)"]
            for ex in self.examples:
                old, new = ex["old"], ex["new"]
                lines += ["", f"**{new['split']}[{new['index']}]** id `{ex['id']}` ({new['source']} row {new['row']}): "
                              f"{ex['changed_in'].replace('both', 'input_ids and labels')} changed at token "
                              f"{ex['first_difference']}; tokens {old['tokens']} → {new['tokens']}, trained "
                              f"{old['trained_tokens']} → {new['trained_tokens']}",
                          "", "| old | new |", "|---|---|", f"| {_code(old['context'])} | {_code(new['context'])} |"]
        if self.thresholds:
            lines += ["", "| threshold | limit | value | |", "|---|---|---|---|"]
            for t in self.thresholds:
                value = f"{t.fraction:.2%}" if t.limit < 1 else f"{t.count:,}"
                limit = f"{t.limit:.2%}" if t.limit < 1 else f"{t.limit:,g}"
                lines.append(f"| `{t.option}` | {limit} | {value} | {'pass' if t.passed else '**FAIL**'} |")
        return "\n".join(lines)


def _code(text: str) -> str:
    """`text` as a Markdown code span that a table cell can hold: newlines and tabs escaped, pipes escaped."""
    text = json.dumps(text, ensure_ascii=False)[1:-1].replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _cell(value: Any) -> str:
    """A build value for a table cell: checksums shortened to 12 hex digits, absent values as a dash."""
    if value is None:
        return "–"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"`{value[:12]}…`"
    return _code(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


# --- build-level differences ----------------------------------------------------------------------------------------
def build_fields(shards: Shards) -> dict[str, Any]:
    """What built an output and what it accounted for, as flat dotted names: tool version, tokenizer, chat template,
    encoder, every config key, splits, row accounting, counts per reason and per source."""
    m = shards.manifest
    fields: dict[str, Any] = {
        "tool.version": m.tool.version,
        "tokenizer.fingerprint": m.tokenizer.fingerprint,
        "tokenizer.class": m.tokenizer.class_name,
        "tokenizer.vocab_size": m.tokenizer.vocab_size,
        "chat_template.source": m.chat_template.source,
        "chat_template.sha256": m.chat_template.sha256,
        "encoder.name": m.encoder.name,
    }
    fields |= {f"config.{key}": value for key, value in _flatten(m.config)}
    for name, split in m.splits.items():
        fields |= {f"splits.{name}.{key}": getattr(split, key) for key in ("rows", "tokens", "trained_tokens")}
    acc = m.accounting
    fields |= {f"accounting.{key}": getattr(acc, key) for key in ("read", "written", "rejected", "filtered")}
    fields |= {f"rejected.{reason}": n for reason, n in acc.rejected_reasons.items()}
    fields |= {f"filtered.{reason}": n for reason, n in acc.filtered_reasons.items()}
    for source in shards.sources:
        fields |= {f"sources.{source['path']}.{key}": value for key, value in source.items() if key != "path"}
    return fields


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [item for key, inner in value.items() for item in _flatten(inner, f"{prefix}{key}.")]
    return [(prefix.removesuffix("."), value)]


def build_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: {"old", "new"}} for every field whose values differ (absent: None, or 0 for a count)."""
    changed = {}
    for name in [*old, *(k for k in new if k not in old)]:
        missing = 0 if name.startswith(COUNTED) else None
        before, after = old.get(name, missing), new.get(name, missing)
        if before != after:
            changed[name] = {"old": before, "new": after}
    return changed


# --- rows: records, buckets, join -----------------------------------------------------------------------------------
def row_records(batch: RowBatch, rank: int) -> pa.RecordBatch:
    """The compact record of every row of a batch (see the module docstring)."""
    offsets, ids, labels = batch.offsets, batch.input_ids, batch.labels
    spans = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    trained = np.concatenate([[0], np.cumsum(labels != IGNORE_INDEX)])
    n = len(batch)
    return pa.record_batch([
        batch.batch.column("id"),
        pa.array(np.full(n, rank, np.int32)),
        pa.array([batch.split] * n, pa.string()),
        pa.array(np.arange(batch.start, batch.start + n, dtype=np.int64)),
        batch.batch.column("source"),
        batch.batch.column("row"),
        pa.array([_digest(ids[lo:hi]) for lo, hi in spans], pa.binary(16)),
        pa.array([_digest(labels[lo:hi]) for lo, hi in spans], pa.binary(16)),
        pa.array(np.diff(offsets).astype(np.int64)),
        pa.array((trained[offsets[1:]] - trained[offsets[:-1]]).astype(np.int64)),
    ], schema=RECORD)


def _digest(values: np.ndarray) -> bytes:
    return hashlib.blake2b(values.tobytes(), digest_size=16).digest()


def write_buckets(shards: Shards, folder: Path, buckets: int) -> list[Path]:
    """Stream every row of `shards` into `buckets` Arrow files by a hash of its id; returns the files."""
    folder.mkdir()
    paths = [folder / f"{b:05d}.arrow" for b in range(buckets)]
    writers = [pa.ipc.new_stream(str(path), RECORD) for path in paths]
    try:
        for rank, name in enumerate(shards.split_names):
            for batch in shards.stream(name, PROVENANCE):
                records = row_records(batch, rank)
                which = np.array([zlib.crc32(i.encode()) % buckets for i in batch.column("id")], np.int64)
                order = np.argsort(which, kind="stable")
                records = records.take(pa.array(order))
                bounds = np.searchsorted(which[order], np.arange(buckets + 1))
                for b in np.flatnonzero(np.diff(bounds)):
                    writers[b].write_batch(records.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])))
    finally:
        for writer in writers:
            writer.close()
    return paths


def _numbered(path: Path) -> pa.Table:
    """A bucket's records with `occurrence`: how many earlier rows (in build order) have the same id."""
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    table = table.sort_by([("id", "ascending"), ("rank", "ascending"), ("index", "ascending")]).combine_chunks()
    ids = table.column("id")
    starts = np.ones(len(table), bool)
    if len(table) > 1:
        starts[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(table) - 1)).to_numpy()
    position = np.arange(len(table))
    first = np.maximum.accumulate(np.where(starts, position, 0))
    return table.append_column("occurrence", pa.array(position - first))


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).fill_null(0).to_numpy()


def join_bucket(old: Path, new: Path, counts: RowCounts, first: dict[str, list[dict[str, Any]]], show: int) -> None:
    """Join one bucket pair on (id, occurrence), add what it holds to `counts`, and keep in `first` the earliest
    changed, added and removed rows seen so far."""
    joined = _numbered(old).join(_numbered(new), keys=["id", "occurrence"], join_type="full outer",
                                 left_suffix="_old", right_suffix="_new")
    in_old = pc.is_valid(joined.column("index_old")).to_numpy(zero_copy_only=False)
    in_new = pc.is_valid(joined.column("index_new")).to_numpy(zero_copy_only=False)
    same_ids = pc.equal(joined.column("ids_digest_old"), joined.column("ids_digest_new")).fill_null(False).to_numpy()
    same_labels = pc.equal(joined.column("labels_digest_old"), joined.column("labels_digest_new")).fill_null(
        False).to_numpy()
    matched = in_old & in_new
    changed = matched & ~(same_ids & same_labels)
    added, removed = in_new & ~in_old, in_old & ~in_new
    tokens = {side: _column(joined, f"tokens_{side}") for side in ("old", "new")}
    trained = {side: _column(joined, f"trained_{side}") for side in ("old", "new")}
    counts.added += int(added.sum())
    counts.removed += int(removed.sum())
    counts.changed += int(changed.sum())
    counts.unchanged += int((matched & ~changed).sum())
    moved = pc.not_equal(joined.column("split_old"), joined.column("split_new")).fill_null(False).to_numpy()
    counts.moved += int((matched & moved).sum())
    counts.input_ids_only += int((changed & ~same_ids & same_labels).sum())
    counts.labels_only += int((changed & same_ids & ~same_labels).sum())
    counts.both += int((changed & ~same_ids & ~same_labels).sum())
    for side in ("old", "new"):
        counts.tokens[side] += int(tokens[side].sum())
        counts.trained_tokens[side] += int(trained[side].sum())
        counts.changed_tokens[side] += int(tokens[side][changed].sum())
        counts.changed_trained_tokens[side] += int(trained[side][changed].sum())
    counts.differing_trained_tokens += int(trained["old"][removed | changed].sum())
    counts.differing_trained_tokens += int(trained["new"][added | changed].sum())
    for kind, mask, side in (("changed", changed, "new"), ("added", added, "new"), ("removed", removed, "old")):
        rows = joined.filter(pa.array(mask))
        rows = rows.sort_by([(f"rank_{side}", "ascending"), (f"index_{side}", "ascending")]).slice(0, show)
        first[kind] = sorted(first[kind] + rows.to_pylist(), key=lambda r: (r[f"rank_{side}"], r[f"index_{side}"]))[
            :show]


# --- the rows shown -------------------------------------------------------------------------------------------------
def first_difference(a: np.ndarray, b: np.ndarray) -> int:
    """The first position where `a` and `b` differ (the shorter length when one is a prefix of the other)."""
    n = min(len(a), len(b))
    found = np.flatnonzero(a[:n] != b[:n])
    return int(found[0]) if found.size else n


def context(tokenizer, row: RowSample, position: int) -> str:
    """The row's text decoded a few tokens around `position`, MARK there and trained runs in OPEN...CLOSE."""
    lo, hi = max(0, position - CONTEXT), min(len(row.input_ids), position + CONTEXT)
    pieces = token_pieces(tokenizer, row.input_ids[lo:hi].tolist())
    trained = (row.labels[lo:hi] != IGNORE_INDEX).tolist()
    text, inside = "…" if lo else "", False
    for k, (piece, is_trained) in enumerate(zip(pieces, trained)):
        if lo + k == position:
            text += MARK
        if is_trained != inside:
            text += OPEN if is_trained else CLOSE
            inside = is_trained
        text += piece
    text += (CLOSE if inside else "") + (MARK if position >= hi else "")
    return text + ("…" if hi < len(row.input_ids) else "")


def examples(old: Shards, new: Shards, changed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each changed row's first difference, decoded with each build's own tokenizer."""
    if not changed:
        return []
    tokenizers = {"old": load_saved_tokenizer(old.tokenizer_dir), "new": load_saved_tokenizer(new.tokenizer_dir)}
    fetched = {side: _fetch(shards, [(r[f"split_{side}"], r[f"index_{side}"]) for r in changed])
               for side, shards in (("old", old), ("new", new))}
    found = []
    for r in changed:
        rows = {side: fetched[side][r[f"split_{side}"], r[f"index_{side}"]] for side in ("old", "new")}
        same_ids = r["ids_digest_old"] == r["ids_digest_new"]
        same_labels = r["labels_digest_old"] == r["labels_digest_new"]
        arrays = "labels" if same_ids else "input_ids"
        position = first_difference(getattr(rows["old"], arrays), getattr(rows["new"], arrays))
        found.append({
            "id": r["id"],
            "changed_in": "labels" if same_ids else "input_ids" if same_labels else "both",
            "first_difference": position,
            **{side: {"split": r[f"split_{side}"], "index": r[f"index_{side}"], "source": r[f"source_{side}"],
                      "row": r[f"row_{side}"], "tokens": r[f"tokens_{side}"], "trained_tokens": r[f"trained_{side}"],
                      "context": context(tokenizers[side], rows[side], position)} for side in ("old", "new")},
        })
    return found


def _fetch(shards: Shards, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], RowSample]:
    """The rows at these (split, index) places, one streaming pass per split."""
    found = {}
    for split in dict.fromkeys(name for name, _ in wanted):
        found |= {(split, row.index): row for row in shards.take(split, [i for name, i in wanted if name == split])}
    return found


# --- the command ----------------------------------------------------------------------------------------------------
def diff_builds(old_path: Path | str, new_path: Path | str, *, show: int = 3, max_changed_rows: float | None = None,
                max_changed_trained_tokens: float | None = None, rows_per_bucket: int = ROWS_PER_BUCKET,
                storage_options: dict[str, Any] | None = None) -> DiffReport:
    """Compare two `preprocess` outputs (`storage_options`: how to reach those in object storage); `InputError`
    (exit 2) when either is not a usable build."""
    old, new = open_shards(old_path, storage_options), open_shards(new_path, storage_options)
    total = max(sum(s.rows for s in shards.manifest.splits.values()) for shards in (old, new))
    buckets = max(1, math.ceil(total / rows_per_bucket))
    counts = RowCounts()
    first: dict[str, list[dict[str, Any]]] = {"changed": [], "added": [], "removed": []}
    with tempfile.TemporaryDirectory(prefix="chatshard-diff-") as work:
        pairs = zip(write_buckets(old, Path(work) / "old", buckets), write_buckets(new, Path(work) / "new", buckets))
        for old_bucket, new_bucket in pairs:
            join_bucket(old_bucket, new_bucket, counts, first, show)
    thresholds = [Threshold(option, limit, count, fraction) for option, limit, count, fraction in (
        ("--max-changed-rows", max_changed_rows, counts.differing, counts.rows_fraction),
        ("--max-changed-trained-tokens", max_changed_trained_tokens, counts.differing_trained_tokens,
         counts.trained_fraction),
    ) if limit is not None]
    return DiffReport(old=Path(old_path), new=Path(new_path), rows=counts,
                      build=build_differences(build_fields(old), build_fields(new)),
                      examples=examples(old, new, first["changed"]),
                      added_ids=[r["id"] for r in first["added"]], removed_ids=[r["id"] for r in first["removed"]],
                      thresholds=thresholds)
