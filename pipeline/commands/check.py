"""Data-quality checks on a `preprocess` output, for CI: one pass over the shards, then one small function per check.

`open_output` opens the directory through the shard reader (manifest, shard files) and loads the saved tokenizer; it
raises `InputError` when the directory is not a usable output. `scan_shards` reads every shard once (memory-mapped
Arrow, numpy per record batch; a broken file is reported by a check, not raised) and collects what the checks need;
each `check_*` function turns that into one `CheckResult`. `run_checks` does all.

Two criteria worth knowing:
- duplicates: two rows are the same conversation when their whole token sequence (trained and untrained), decoded
  with special tokens and whitespace runs collapsed to one space, has the same sha256. Role tokens stay in the text,
  so the same words said by another role are not a duplicate; whitespace-only variants are. Counted across splits.
  In an output of `sources`, a row from the same source file and row as an earlier one with the same text is a
  repeated draw of that record, asked for by the config: it is counted as a repeat, not as a duplicate.
- decode round trip (byte-level tokenizers only): `encode(decode(ids), add_special_tokens=False) == ids`, decoding
  with special tokens kept and no clean-up of spaces. A row that may have been cut (`cut_tail`, length == limit)
  may differ in its last `cut_tail_tokens` tokens, where the cut can split a character or a word.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from pipeline.encoders.hf import component_json
from pipeline.shards.format import IGNORE_INDEX, Manifest
from pipeline.shards.reader import RowSample, Shards, iter_batches, open_shards, row_arrays
from pipeline.tokenizer import load_saved_tokenizer, special_token_ids
from schemas.check_config import CheckConfig
from schemas.config import MaskConfig, TruncationConfig

Status = Literal["pass", "fail", "skip"]
EXAMPLES = 5  # row ids listed per failing check
_ROLE_NAMES = {"system", "user", "assistant", "observation", "tool", "ipython", "function", "developer"}
_ROLE_OPENERS = {"im_start", "start_header_id"}  # ChatML, Llama 3: the role is the next token's text
_WHITESPACE = re.compile(r"\s+")
DATASETS_CACHE_PREFIX = "cache-"  # what `Dataset.map` and friends write beside the files they read


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    value: Any
    threshold: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "value": self.value, "threshold": self.threshold,
                "detail": self.detail}


@dataclass
class Output:
    """A preprocess output directory, its manifest and what the checks read from it."""

    shards: Shards
    tokenizer: Any
    limit: int | None
    strategy: str
    preset: str
    train_end_of_turn: bool

    @property
    def path(self) -> Path:
        return self.shards.path

    @property
    def manifest(self) -> Manifest:
        return self.shards.manifest


@dataclass
class Found:
    """How many rows a check found, and the first few by name: memory stays flat however many there are."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, items) -> None:
        for item in items:
            self.count += 1
            if len(self.examples) < EXAMPLES:
                self.examples.append(item)

    def describe(self) -> str:
        more = f" (+{self.count - len(self.examples)} more)" if self.count > len(self.examples) else ""
        return "; ".join(self.examples) + more


@dataclass
class Scan:
    """What one pass over every shard collected."""

    rows: Counter = field(default_factory=Counter)  # per split
    tokens: Counter = field(default_factory=Counter)
    trained: Counter = field(default_factory=Counter)
    lengths: list[np.ndarray] = field(default_factory=list)
    row_trained: list[np.ndarray] = field(default_factory=list)
    no_trained: Found = field(default_factory=Found)
    label_problems: Found = field(default_factory=Found)
    runs: int = 0
    runs_closed: int = 0
    open_runs: Found = field(default_factory=Found)
    hashes: dict[bytes, tuple[str, tuple[str, int]]] = field(default_factory=dict)  # hash -> first (split, origin)
    origins: dict[bytes, set[tuple[str, int]]] = field(default_factory=dict)  # every (source, row) of a repeated hash
    repeats: int = 0  # rows that repeat their own record (a mixture's draws)
    duplicates: Found = field(default_factory=Found)
    cross_split_duplicates: int = 0
    round_trip_tried: int = 0
    round_trip_failed: Found = field(default_factory=Found)
    unreadable: dict[str, str] = field(default_factory=dict)
    role_tokens: Counter = field(default_factory=Counter)
    role_trained: Counter = field(default_factory=Counter)
    samples: list[RowSample] = field(default_factory=list)

    @property
    def unreadable_splits(self) -> set[str]:
        return {name.split("/")[0] for name in self.unreadable}

    @property
    def all_lengths(self) -> np.ndarray:
        return np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)


@dataclass
class CheckReport:
    directory: str
    results: list[CheckResult]
    output: Output
    scan: Scan

    @property
    def passed(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"directory": self.directory, "passed": self.passed, "checks": [r.to_json() for r in self.results]}

    def to_markdown(self) -> str:
        icon = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}
        lines = [f"## check {self.directory}", "", "| check | status | value | threshold | detail |",
                 "|---|---|---|---|---|"]
        for r in self.results:
            detail = r.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.name} | {icon[r.status]} | {format_value(r.value)} | {r.threshold} | {detail} |")
        failed = [r.name for r in self.results if r.status == "fail"]
        lines += ["", f"**FAILED**: {', '.join(failed)}" if failed else "**all checks passed**"]
        return "\n".join(lines)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# --- the output directory -------------------------------------------------------------------------------------------


def open_output(path: Path | str, storage_options: dict[str, Any] | None = None) -> Output:
    """Open the output (`storage_options`: how to reach one in object storage) and its tokenizer; `InputError` (the
    CLI's exit 2) names what is missing or unreadable."""
    shards = open_shards(path, storage_options)
    truncation = shards.config_section("truncation", TruncationConfig)
    mask = shards.config_section("mask", MaskConfig)
    return Output(shards, load_saved_tokenizer(shards.tokenizer_dir), truncation.limit(mask.preset),
                  truncation.strategy, mask.preset, mask.train_end_of_turn)


def is_byte_level(tokenizer) -> bool:
    decoder = component_json(tokenizer.backend_tokenizer.decoder) or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(p.get("type") == "ByteLevel" for p in parts)


def role_markers(tokenizer) -> tuple[dict[int, str], set[int]]:
    """Special tokens that name a role (`<|assistant|>`), and those after which the next token names it (ChatML)."""
    named, openers = {}, set()
    for token_id in special_token_ids(tokenizer).tolist():
        name = tokenizer.convert_ids_to_tokens(token_id).strip("<|>[] ").lower()
        if name in _ROLE_NAMES:
            named[token_id] = name
        elif name in _ROLE_OPENERS:
            openers.add(token_id)
    return named, openers


# --- one pass over the shards ---------------------------------------------------------------------------------------


def scan_shards(output: Output, config: CheckConfig) -> Scan:
    scan = Scan()
    tokenizer = output.tokenizer
    special_ids = special_token_ids(tokenizer)
    special = np.zeros(max(len(tokenizer), int(special_ids.max(initial=0)) + 1), dtype=bool)
    special[special_ids] = True
    total = sum(info.rows for info in output.manifest.splits.values())
    strides = (_stride(total, config.decode_sample_rows), _stride(total, config.report_samples))
    byte_level = is_byte_level(tokenizer)
    markers = role_markers(tokenizer)
    seen = 0
    for split in output.shards.split_names:
        index = 0
        for path, _ in output.shards.files(split):
            try:
                for batch in iter_batches(path):
                    _scan_batch(scan, batch, split=split, first=index, first_global=seen, strides=strides,
                                output=output, special=special, byte_level=byte_level, markers=markers,
                                config=config)
                    index += batch.num_rows
                    seen += batch.num_rows
            except (pa.ArrowException, OSError, ValueError) as exc:
                scan.unreadable[f"{split}/{path.name}"] = f"{type(exc).__name__}: {exc}"
        scan.rows[split] += index
    return scan


def _stride(total: int, wanted: int) -> int:
    """Every how many rows to take one, to take about `wanted` spread over `total` (0: every row)."""
    return max(1, total // wanted) if wanted else 1


def _scan_batch(scan: Scan, batch: pa.RecordBatch, *, split: str, first: int, first_global: int, strides: tuple[int, int],
                output: Output, special: np.ndarray, byte_level: bool, markers, config: CheckConfig) -> None:
    offsets, ids = row_arrays(batch.column("input_ids"))
    label_offsets, labels = row_arrays(batch.column("labels"))
    row_ids = batch.column("id").to_pylist()
    sources, rows = batch.column("source"), batch.column("row")
    names = [f"{split}[{first + k}] {row_ids[k]}" for k in range(batch.num_rows)]
    lengths = np.diff(offsets)
    scan.lengths.append(lengths)
    scan.tokens[split] += int(lengths.sum())

    same_shape = np.array_equal(offsets, label_offsets)
    if not same_shape:
        label_lengths = np.diff(label_offsets)
        scan.label_problems.add(f"{names[k]} (labels {label_lengths[k]} vs input_ids {lengths[k]})"
                                for k in np.flatnonzero(label_lengths != lengths))
        return  # position-wise checks are meaningless on misaligned rows
    row_of = np.repeat(np.arange(batch.num_rows), lengths)
    trained = labels != IGNORE_INDEX
    bad = trained & (labels != ids)
    if bad.any():
        per_row_bad = np.bincount(row_of[bad], minlength=batch.num_rows)
        scan.label_problems.add(f"{names[k]} (label != token at {per_row_bad[k]} positions)"
                                for k in np.flatnonzero(per_row_bad))
    per_row = np.bincount(row_of, weights=trained, minlength=batch.num_rows).astype(np.int64)
    scan.row_trained.append(per_row)
    scan.trained[split] += int(per_row.sum())
    scan.no_trained.add(names[k] for k in np.flatnonzero(per_row == 0))
    _scan_runs(scan, ids, trained, offsets, row_of, special, names)
    _scan_roles(scan, ids, trained, offsets, row_of, markers, output.tokenizer)
    origins = (list(zip(batch.column("source").to_pylist(), batch.column("row").to_pylist()))
               if output.manifest.sources is not None else [None] * batch.num_rows)
    _scan_duplicates(scan, ids, offsets, split, names, origins, output.tokenizer)
    for k in range(batch.num_rows):
        row_ids_k, row_labels_k = ids[offsets[k] : offsets[k + 1]], labels[offsets[k] : offsets[k + 1]]
        if byte_level and (first_global + k) % strides[0] == 0 and (
            not config.decode_sample_rows or scan.round_trip_tried < config.decode_sample_rows
        ):
            cut = output.strategy == "cut_tail" and output.limit is not None and len(row_ids_k) == output.limit
            scan.round_trip_tried += 1
            if not round_trips(output.tokenizer, row_ids_k, tolerance=config.cut_tail_tokens if cut else 0):
                scan.round_trip_failed.add([names[k]])
        if len(scan.samples) < config.report_samples and (first_global + k) % strides[1] == 0:
            scan.samples.append(RowSample(split, first + k, row_ids[k], sources[k].as_py(), rows[k].as_py(), row_ids_k,
                                          row_labels_k))


def _scan_runs(scan: Scan, ids, trained, offsets, row_of, special, names) -> None:
    """Each maximal run of trained tokens must end on a special token (its end-of-turn) or at the end of the row."""
    n = len(ids)
    if n == 0:
        return
    row_end = np.zeros(n, dtype=bool)
    row_end[offsets[1:][offsets[1:] > 0] - 1] = True
    next_trained = np.append(trained[1:], False) & ~row_end
    ends = np.flatnonzero(trained & ~next_trained)
    closed = special[np.minimum(ids[ends], len(special) - 1)] | row_end[ends]
    scan.runs += len(ends)
    scan.runs_closed += int(closed.sum())
    scan.open_runs.add(f"{names[row_of[e]]} (run ends at position {e - offsets[row_of[e]]})" for e in ends[~closed])


def _scan_roles(scan: Scan, ids, trained, offsets, row_of, markers, tokenizer) -> None:
    """Tokens and trained tokens per role. A role lasts from the token after its marker up to the next marker, so a
    trained marker counts for the turn it ends (GLM-4's next role token is the assistant's end-of-turn)."""
    named, openers = markers
    if not named and not openers:
        return
    n = len(ids)
    code = np.full(n, -1, dtype=np.int64)
    roles = ["(preamble)"]
    lookup = {}
    for position in np.flatnonzero(np.isin(ids, list(named) + list(openers))):
        token = int(ids[position])
        if token in named:
            role = named[token]
        else:
            nxt = int(ids[position + 1]) if position + 1 < n and row_of[position + 1] == row_of[position] else None
            role = tokenizer.decode([nxt]).strip() if nxt is not None else ""
            role = role if role in _ROLE_NAMES else "(other)"
        if position + 1 < n and row_of[position + 1] == row_of[position]:  # the marker closes the previous turn
            code[position + 1] = lookup.setdefault(role, len(roles) + len(lookup))
    names = roles + sorted(lookup, key=lookup.get)
    starts = offsets[:-1][np.diff(offsets) > 0]
    code[starts] = np.where(code[starts] >= 0, code[starts], 0)
    last = np.maximum.accumulate(np.where(code >= 0, np.arange(n), 0))
    role_of = code[last]
    tokens = np.bincount(role_of, minlength=len(names))
    kept = np.bincount(role_of, weights=trained, minlength=len(names))
    for k, name in enumerate(names):
        scan.role_tokens[name] += int(tokens[k])
        scan.role_trained[name] += int(kept[k])


def content_hash(text: str) -> bytes:
    """The duplicate key: sha256 of the decoded row with whitespace runs collapsed to one space."""
    return hashlib.sha256(_WHITESPACE.sub(" ", text).strip().encode("utf-8")).digest()


def _scan_duplicates(scan: Scan, ids, offsets, split, names, origins, tokenizer) -> None:
    rows = [ids[offsets[k] : offsets[k + 1]].tolist() for k in range(len(offsets) - 1)]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for name, text, origin in zip(names, texts, origins):
        key = content_hash(text)
        first = scan.hashes.get(key)
        if first is None:
            scan.hashes[key] = (split, origin)
            continue
        seen = scan.origins.setdefault(key, {first[1]})
        if origin is not None and origin in seen:
            scan.repeats += 1
            continue
        seen.add(origin)
        scan.duplicates.add([name])
        scan.cross_split_duplicates += first[0] != split


def round_trips(tokenizer, ids: np.ndarray, *, tolerance: int = 0) -> bool:
    """`encode(decode(ids)) == ids`; the last `tolerance` tokens may differ (a row cut mid-word or mid-character)."""
    text = tokenizer.decode(ids.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    again = tokenizer.encode(text, add_special_tokens=False)
    if not tolerance:
        return again == ids.tolist()
    keep = max(0, len(ids) - tolerance)
    return again[:keep] == ids[:keep].tolist()


# --- the checks: one function each ----------------------------------------------------------------------------------


def _result(name: str, ok: bool, value: Any, threshold: str, detail: str = "") -> CheckResult:
    return CheckResult(name, "pass" if ok else "fail", value, threshold, detail)


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def check_accounting(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    acc = output.manifest.accounting
    problems = []
    if acc.read != acc.written + acc.rejected + acc.filtered:
        problems.append(f"read {acc.read} != written {acc.written} + rejected {acc.rejected} + filtered {acc.filtered}")
    for kind, reasons in (("rejected", acc.rejected_reasons), ("filtered", acc.filtered_reasons)):
        by_reason = sum(reasons.values())
        if by_reason != getattr(acc, kind):
            problems.append(f"{kind} {getattr(acc, kind)} != sum of {kind}_reasons {by_reason}")
    for split, info in output.manifest.splits.items():
        listed = sum(s.rows for s in info.shards)
        if not info.rows == listed == scan.rows[split]:
            problems.append(f"{split}: manifest rows {info.rows}, shard entries {listed}, "
                            f"shards hold {scan.rows[split]}")
        for key, found in (("tokens", scan.tokens[split]), ("trained_tokens", scan.trained[split])):
            if split not in scan.unreadable_splits and getattr(info, key) != found:
                problems.append(f"{split}: manifest {key} {getattr(info, key)}, shards hold {found}")
    if sum(scan.rows.values()) != acc.written:
        problems.append(f"written {acc.written} != rows in the shards {sum(scan.rows.values())}")
    problems += _source_problems(output.manifest)
    value = f"read {acc.read} = written {acc.written} + rejected {acc.rejected} + filtered {acc.filtered}"
    return _result("accounting", not problems, value if not problems else "broken", "exact", "; ".join(problems))


def _source_problems(manifest: Manifest) -> list[str]:
    """A manifest with `sources`: each source balanced (and given its token share), and the sources adding up to the
    run's totals."""
    if manifest.sources is None:
        return []
    problems = [f"source {s.path}: drawn {s.drawn} != written {s.written} + rejected {s.rejected} + filtered "
                f"{s.filtered}" for s in manifest.sources if s.drawn != s.written + s.rejected + s.filtered]
    problems += [f"source {s.path}: tokens {s.tokens} below its token_share {s.token_share}" for s in manifest.sources
                 if s.token_share is not None and s.tokens < s.token_share]
    acc = manifest.accounting
    totals = {"read": (acc.read, "drawn"), "written": (acc.written, "written"), "rejected": (acc.rejected, "rejected"),
              "filtered": (acc.filtered, "filtered"),
              "tokens": (sum(i.tokens for i in manifest.splits.values()), "tokens"),
              "trained_tokens": (sum(i.trained_tokens for i in manifest.splits.values()), "trained_tokens")}
    for name, (total, key) in totals.items():
        by_source = sum(getattr(s, key) for s in manifest.sources)
        if by_source != total:
            problems.append(f"{name} {total} != the sources' {key} {by_source}")
    return problems


def check_reject_rate(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    acc = output.manifest.accounting
    rate = _rate(acc.rejected, acc.read)
    reasons = ", ".join(f"{k}: {v}" for k, v in acc.rejected_reasons.items())
    return _result("reject_rate", rate <= config.max_reject_rate, round(rate, 6), f"<= {config.max_reject_rate}",
                   f"{acc.rejected} of {acc.read} rows rejected" + (f" ({reasons})" if reasons else ""))


def check_truncation_rate(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    acc = output.manifest.accounting
    cut = acc.notes.get("truncated", 0)
    rate = _rate(cut, acc.written)
    return _result("truncation_rate", rate <= config.max_truncation_rate, round(rate, 6),
                   f"<= {config.max_truncation_rate}", f"{cut} of {acc.written} written rows cut at the limit")


def check_no_trained_tokens(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    rows = scan.no_trained
    return _result("no_trained_tokens", not rows.count, rows.count, "== 0", rows.describe() or "every row trains")


def check_trained_fraction(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    tokens, trained = sum(scan.tokens.values()), sum(scan.trained.values())
    share = _rate(trained, tokens)
    splits = ", ".join(f"{s} {_rate(scan.trained[s], scan.tokens[s]):.1%}" for s in scan.tokens)
    return _result("trained_fraction", share >= config.min_trained_fraction, round(share, 6),
                   f">= {config.min_trained_fraction}", f"{trained} of {tokens} tokens trained ({splits})")


def check_length(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    lengths = scan.all_lengths
    if not len(lengths):
        return _result("length", True, "no rows", "<= limit")
    p50, p95 = (int(np.percentile(lengths, q, method="nearest")) for q in (50, 95))
    longest = int(lengths.max())
    over = int(np.count_nonzero(lengths > output.limit)) if output.limit is not None else 0
    stats = f"p50 {p50}, p95 {p95}, max {longest}"
    if output.limit is None:
        return _result("length", True, stats, "no limit", "the manifest sets no truncation limit")
    detail = f"limit {output.limit} ({output.strategy}); {over} rows over it" if over else f"limit {output.limit} ({output.strategy})"
    return _result("length", over == 0, stats, f"max <= {output.limit}", detail)


def check_duplicates(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    count = scan.duplicates.count
    rate = _rate(count, sum(scan.rows.values()))
    ok = rate <= config.max_duplicate_rate and (config.max_duplicates is None or count <= config.max_duplicates)
    threshold = f"rate <= {config.max_duplicate_rate}" + (
        f", count <= {config.max_duplicates}" if config.max_duplicates is not None else "")
    detail = f"{count} duplicate rows ({scan.cross_split_duplicates} repeat a row of another split)"
    if scan.repeats:
        detail += f"; {scan.repeats} repeated draws of a record (sources) not counted"
    if count:
        detail += ": " + scan.duplicates.describe()
    return _result("duplicates", ok, round(rate, 6), threshold, detail)


def check_labels(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    rows = scan.label_problems
    return _result("labels", not rows.count, rows.count, "== 0 rows",
                   rows.describe() or f"every label is {IGNORE_INDEX} or its token; same lengths")


def check_end_of_turn(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    threshold = f">= {config.min_end_of_turn_fraction}"
    if output.preset != "default" or not output.train_end_of_turn:
        why = f"mask.preset is {output.preset!r}" if output.preset != "default" else "mask.train_end_of_turn is false"
        return CheckResult("end_of_turn", "skip", None, threshold, f"not applicable: {why}")
    share = _rate(scan.runs_closed, scan.runs) if scan.runs else 1.0
    detail = f"{scan.runs_closed} of {scan.runs} trained runs end on a special token or at the row's end"
    if scan.open_runs.count:
        detail += ": " + scan.open_runs.describe()
    return _result("end_of_turn", share >= config.min_end_of_turn_fraction, round(share, 6), threshold, detail)


def check_decode_round_trip(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    threshold = f">= {config.min_decode_round_trip}"
    if not is_byte_level(output.tokenizer):
        return CheckResult("decode_round_trip", "skip", None, threshold,
                           "not applicable: the tokenizer is not byte-level, so decode need not give back the text")
    tried, bad = scan.round_trip_tried, scan.round_trip_failed
    share = _rate(tried - bad.count, tried) if tried else 1.0
    detail = f"{tried - bad.count} of {tried} sampled rows give back their ids"
    if bad.count:
        detail += ": " + bad.describe()
    return _result("decode_round_trip", share >= config.min_decode_round_trip, round(share, 6), threshold, detail)


def check_checksums(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    files = [(split, path, entry) for split in output.shards.split_names for path, entry in output.shards.files(split)]
    differ = [f"{path.parent.name}/{path.name}" for path in output.shards.changed_files()]
    problems = [f"{name}: sha256 differs from the manifest" for name in differ]
    problems += [f"{name}: unreadable ({error})" for name, error in scan.unreadable.items()]
    arrow = [p for split in output.shards.split_names for p in (output.path / split).glob("*.arrow")]
    caches = sorted(f"{p.parent.name}/{p.name}" for p in arrow if p.name.startswith(DATASETS_CACHE_PREFIX))
    on_disk = {f"{p.parent.name}/{p.name}" for p in arrow} - set(caches)
    listed = {f"{split}/{path.name}" for split, path, _ in files}
    problems += [f"{name}: not in the manifest" for name in sorted(on_disk - listed)]
    detail = "; ".join(problems) if problems else f"{len(files)} shard file(s)"
    if caches:
        detail += (f"; {len(caches)} cache file(s) that `datasets` wrote beside the shards ignored "
                   f"({', '.join(caches[:3])}{', ...' if len(caches) > 3 else ''})")
    return _result("checksums", not problems, f"{len(files) - len(differ)}/{len(files)} match", "all match", detail)


def check_injected_text(output: Output, scan: Scan, config: CheckConfig) -> CheckResult:
    acc, injects = output.manifest.accounting, output.manifest.chat_template.injects
    rows, tokens = acc.notes.get("injected_text", 0), acc.note_tokens.get("injected_text", 0)
    rate = _rate(rows, acc.written)
    detail = f"{rows} of {acc.written} written rows hold {tokens} tokens of text the chat template added, not the data"
    if injects:
        detail += f"; to a one-turn conversation it adds {_shorten(injects)!r}"
    if rows:
        detail += "; give those rows a system message, use another template, or raise max_injected_text_rate"
    return _result("injected_text", rate <= config.max_injected_text_rate, round(rate, 6),
                   f"<= {config.max_injected_text_rate}", detail)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


CHECKS = {
    "accounting": check_accounting,
    "reject_rate": check_reject_rate,
    "truncation_rate": check_truncation_rate,
    "no_trained_tokens": check_no_trained_tokens,
    "trained_fraction": check_trained_fraction,
    "length": check_length,
    "duplicates": check_duplicates,
    "labels": check_labels,
    "end_of_turn": check_end_of_turn,
    "decode_round_trip": check_decode_round_trip,
    "checksums": check_checksums,
    "injected_text": check_injected_text,
}


def run_checks(directory: Path | str, config: CheckConfig = CheckConfig(),
               storage_options: dict[str, Any] | None = None) -> CheckReport:
    """Every check on one output directory (`storage_options`: how to reach one in object storage). Raises
    `InputError` when it is not a valid output."""
    output = open_output(directory, storage_options)
    scan = scan_shards(output, config)
    results = [
        CheckResult(name, "skip", None, "", "skipped by config") if name in config.skip else check(output, scan, config)
        for name, check in CHECKS.items()
    ]
    return CheckReport(str(directory), results, output, scan)
