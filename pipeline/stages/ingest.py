"""Input discovery and streaming readers: files -> raw records with provenance (`source`, `row`).

Inputs are local paths, remote URLs (`s3://`, `gs://`: `pipeline.stages.remote`) and hub datasets by name
(`hf://datasets/ORG/NAME`: `pipeline.stages.hub`); a `datasets.save_to_disk` folder is read as the data files its
`state.json` lists. Rows, counted the same way everywhere (`row` is 1-based):
- JSONL: the physical line of the record (blank lines are skipped, not records).
- CSV: the physical line where the record starts; the header is line 1, so the first data row is line 2.
- JSON array: the element's index; the line where it starts is kept as `line`. A file that is one JSON object is row 1.
- Parquet and Arrow IPC: the table row within the file (`pipeline.stages.columnar`).

Memory stays flat: JSONL and CSV are read line by line from a binary stream (each line decoded alone, so a decoding
failure names its byte offset), and a JSON array is parsed element by element with `json.JSONDecoder.raw_decode` over
a sliding buffer. `.gz` files are decompressed on the fly (byte offsets are then offsets into the decompressed data).
Every record's JSON is read with `pipeline.stages.json_text`'s rules (exact numbers, bounded nesting), whatever its container.
A bad line or element is a `RowError`; a file that cannot be read at all raises `InputError`.
"""
from __future__ import annotations

import codecs
import csv
import fnmatch
import glob
import gzip
import json
import os
import re
import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import pyarrow as pa

from pipeline.errors import ConfigError, InputError, Reason, RowError
from pipeline.outputs import is_tool_output
from pipeline.stages import adapt, columnar, json_text
from pipeline.stages.hub import hub_files, is_hub_dataset
from pipeline.stages.remote import RemoteFile, find_remote, is_remote
from schemas.records import Conversation
from schemas.sources import SourceConfig

SUFFIXES = (".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz", *columnar.COLUMNAR_SUFFIXES)
InputPath = Path | RemoteFile
"""A local input file, or a remote one (whose `str` is its URL)."""
_CHUNK = 1 << 18  # characters decoded per read of a JSON array; grows while one element is larger
_MAX_ELEMENT = 1 << 28  # a JSON array element larger than this (256 Mi characters) is refused, not buffered forever
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
csv.field_size_limit(1 << 30)  # the default 128 KiB limit refuses long answers; this is process-wide, as csv is


@dataclass(frozen=True)
class RawRecord:
    """One parsed record before adaptation. `line` is the starting line when `row` is not a line (JSON arrays)."""

    source: str
    row: int
    data: Any
    line: int | None = None


# --- discovery ------------------------------------------------------------------------------------------------------
def _has_input_suffix(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


@dataclass(frozen=True)
class Inputs:
    """What the input arguments name. `files`: the files to read, each real file once, under the first name it was
    given by. `named`: the local files and directories the arguments named, which an output directory must stay apart
    from (remote inputs are never local paths)."""

    files: list[InputPath]
    named: list[Path]

    @property
    def local(self) -> list[Path]:
        """Every local path the inputs name or hold: what an output directory must not be, hold or sit inside."""
        return [*self.named, *(f for f in self.files if isinstance(f, Path))]


def find_inputs(inputs: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> Inputs:
    """Files, globs and directories (searched recursively for input suffixes) -> files, each group sorted.

    Order: the arguments in the order given; within a glob or a directory, sorted by path. A file reached under
    several names (a relative and an absolute path, a symlink) is read once and reported on stderr. Symlinked
    folders are followed, but a folder already walked is not walked again (so a symlink loop ends), and an output
    directory of this tool found while searching is not input. URLs are found on their store (`storage_options`
    configure it), a hub dataset by name is its `train` split's files.
    """
    if not inputs:
        raise InputError("no input given")
    found: list[InputPath] = []
    named: list[Path] = []
    for spec in inputs:
        path = Path(spec)
        if is_hub_dataset(spec):
            found.extend(hub_files(spec, storage_options or {}))
        elif is_remote(spec):
            found.extend(find_remote(spec, storage_options or {}, SUFFIXES))
        elif glob.has_magic(spec):
            matches = sorted(_glob(spec))
            named.extend(matches)
            files = [p for p in matches if p.is_file()]
            for d in (p for p in matches if p.is_dir()):
                files.extend(_files_under(d))
            if not files:
                raise InputError(f"{spec}: no file matches")
            found.extend(sorted(files))
        elif path.is_dir():
            if is_tool_output(path):
                raise InputError(f"{spec}: an output directory of chatshard, not input data")
            named.append(path)
            files = sorted(_files_under(path))
            if not files:
                raise InputError(f"{spec}: directory holds no {', '.join(SUFFIXES)} file")
            found.extend(files)
        elif path.is_file():
            named.append(path)
            found.append(path)
        else:
            raise InputError(f"{spec}: no such file or directory")
    unique = _read_once(found)
    for path in unique:
        container_kind(path)  # refuses unknown extensions up front
    return Inputs(unique, named)


def resolve_inputs(inputs: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> list[InputPath]:
    """The files to read for these arguments (`find_inputs`)."""
    return find_inputs(inputs, storage_options).files


def file_identity(path: InputPath) -> str:
    """What makes two input names the same file: a local file's real path (links and `..` resolved), a remote
    file's URL."""
    return str(path) if isinstance(path, RemoteFile) else os.path.realpath(path)


def _read_once(paths: list[InputPath]) -> list[InputPath]:
    """Each real file once, under the first name given. The same name given twice is dropped quietly (overlapping
    globs); the same file under another name is named on stderr, since the arguments probably say less than meant."""
    first: dict[str, InputPath] = {}
    others: dict[InputPath, list[InputPath]] = {}
    for path in paths:
        kept = first.setdefault(file_identity(path), path)
        if kept != path and path not in others.setdefault(kept, []):
            others[kept].append(path)
    repeats = [f"{kept} (also given as {', '.join(map(str, also))})" for kept, also in others.items() if also]
    if repeats:
        more = f"; and {len(repeats) - 3} more" if len(repeats) > 3 else ""
        print(f"warning: input files named more than once are read once: {'; '.join(repeats[:3])}{more}",
              file=sys.stderr)
    return list(first.values())


def _files_under(directory: Path) -> list[Path]:
    """Input files below `directory`, symlinked folders followed, each real folder walked once, outputs skipped.
    The walk order is fixed (real folders before links, then by name), so a folder reached twice always gives its
    files the same names."""
    found: list[Path] = []
    walked: set[str] = set()
    for folder, dirs, names in os.walk(directory, followlinks=True):
        real = os.path.realpath(folder)
        if real in walked or (folder != str(directory) and is_tool_output(Path(folder))):
            dirs[:] = []
            continue
        walked.add(real)
        saved = saved_dataset_files(Path(folder))
        if saved is not None:
            found.extend(saved)
            dirs[:] = []
            continue
        dirs[:] = [p.name for p in _walk_order(Path(folder) / d for d in dirs)]
        found.extend(p for p in (Path(folder) / n for n in names) if _has_input_suffix(p) and p.is_file())
    return found


def saved_dataset_files(folder: Path) -> list[Path] | None:
    """The data files of a `datasets.save_to_disk` folder (every split of a `DatasetDict`), or None when `folder` is
    not one. What else `datasets` leaves there (`cache-*.arrow` from `map`) is not data."""
    listing = folder / "dataset_dict.json"
    state = folder / "state.json"
    try:
        if listing.is_file():
            splits = json.loads(listing.read_text(encoding="utf-8"))["splits"]
            return [f for split in splits for f in saved_dataset_files(folder / split) or []]
        if state.is_file() and (folder / "dataset_info.json").is_file():
            return [folder / entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{folder}: unreadable datasets.save_to_disk folder: {e!r}") from None
    return None


def _glob(spec: str) -> Iterator[Path]:
    """The paths `spec` matches, as `glob.glob(spec, recursive=True)` finds them (`**`: any depth of folders, names
    starting with a dot only matched explicitly), but a `**` walks each real folder once and skips outputs of this
    tool: a symlink loop cannot multiply the matches."""
    parts = Path(spec).parts
    literal = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return _match(Path(*parts[:literal]), parts[literal:], set())


def _match(base: Path, parts: tuple[str, ...], walked: set) -> Iterator[Path]:
    if not parts:
        yield base
        return
    head, rest = parts[0], parts[1:]
    if head == "**" and not rest:
        yield base  # a folder: every input file below it is read
    elif head == "**":
        key = (os.path.realpath(base), rest)
        if key in walked:
            return
        walked.add(key)
        yield from _match(base, rest, walked)
        for child in _entries(base):
            if child.is_dir() and not child.name.startswith(".") and not is_tool_output(child):
                yield from _match(child, parts, walked)
    elif glob.has_magic(head):
        for child in _entries(base):
            if fnmatch.fnmatchcase(child.name, head) and (head.startswith(".") or not child.name.startswith(".")) \
                    and not (child.is_dir() and is_tool_output(child)):
                yield from _match(child, rest, walked)
    elif os.path.lexists(base / head):
        yield from _match(base / head, rest, walked)


def _entries(folder: Path) -> list[Path]:
    try:
        return _walk_order(folder.iterdir())
    except OSError:  # not a folder, or not readable: nothing matches below it
        return []


def _walk_order(paths: Iterable[Path]) -> list[Path]:
    """Real entries before symlinks, then by name: a file reachable both ways keeps its real name."""
    return sorted(paths, key=lambda p: (p.is_symlink(), p.name))


def container_kind(path: InputPath) -> str:
    """`jsonl`, `json`, `csv` (`.gz` allowed), `parquet` or `arrow`, from the extension; `InputError` for anything
    else."""
    name = path.name.lower()
    for kind in ("parquet", "arrow"):
        if name.endswith("." + kind):
            return kind
    name = name.removesuffix(".gz")
    for kind in ("jsonl", "json", "csv"):
        if name.endswith("." + kind):
            return kind
    raise InputError(f"{path}: unsupported file type (expected {', '.join(SUFFIXES)})")


# --- bytes -> text --------------------------------------------------------------------------------------------------
def _open(path: InputPath) -> IO[bytes]:
    try:
        if isinstance(path, RemoteFile):
            return path.open()
        return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot open: {e.strerror or e}") from None


def _read_error(path: InputPath, e: Exception) -> InputError:
    return InputError(f"{path}: cannot read: {e} (corrupt or truncated compressed file?)")


def _decode_error(path: InputPath, e: UnicodeDecodeError, offset: int, line: int | None, encoding: str) -> InputError:
    where = f"line {line}, byte offset {offset}" if line else f"byte offset {offset}"
    bad = e.object[e.start : e.start + 4]
    return InputError(f"{path}: {where}: cannot decode bytes {bad!r} as {encoding} ({e.reason}); pass --encoding")


class Position(NamedTuple):
    """Where a record starts in a line-based file (JSONL, CSV): the byte offset of its first line (into the
    decompressed data for `.gz`) and that line's number. A reader started there reads the rest of the file as a
    reader from the start would, so a chunk of the input can be read without reading what comes before it."""

    offset: int
    line: int


FILE_START = Position(0, 1)


def iter_lines(path: InputPath, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) for each physical line; a BOM at the start of the file is dropped."""
    for _, lineno, text in _lines(path, encoding, FILE_START):
        yield lineno, text


def _lines(path: InputPath, encoding: str, start: Position) -> Iterator[tuple[int, int, str]]:
    """(byte offset, line number, text) for each physical line from `start` on."""
    with _open(path) as f:
        offset, lineno = start
        while True:
            try:
                if offset and f.tell() != offset:
                    f.seek(offset)
                raw = f.readline()
            except (OSError, EOFError, zlib.error) as e:
                raise _read_error(path, e) from None
            if not raw:
                return
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise _decode_error(path, e, offset + e.start, lineno, encoding) from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield offset, lineno, text
            offset += len(raw)
            lineno += 1


class _TextStream:
    """Decoded text of a file, read in chunks on demand, keeping only what has not been consumed yet."""

    def __init__(self, f: IO[bytes], path: InputPath, encoding: str):
        self.f, self.path, self.encoding = f, path, encoding
        self.decoder = codecs.getincrementaldecoder(encoding)("strict")
        self.offset = 0  # bytes read so far
        self.buf = ""
        self.pos = 0  # next unconsumed character in buf
        self.line = 1  # line number at buf[line_pos]
        self.line_pos = 0
        self.eof = False
        self.first = True
        self.value_start = 0  # where in buf the last value read by `value` starts (buf is re-based as it refills)

    def more(self, size: int = _CHUNK) -> None:
        """Drop the consumed prefix, then append about `size` more characters (sets `eof` at the end)."""
        self.line_at(self.pos)
        self.buf = self.buf[self.pos :]
        self.line_pos -= self.pos
        self.pos = 0
        try:
            raw = self.f.read(size)
        except (OSError, EOFError, zlib.error) as e:
            raise _read_error(self.path, e) from None
        pending = len(self.decoder.getstate()[0])
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise _decode_error(self.path, e, self.offset - pending + e.start, None, self.encoding) from None
        self.offset += len(raw)
        if self.first and text:
            text = text.removeprefix("\ufeff")
            self.first = False
        self.buf += text
        self.eof = not raw

    def line_at(self, pos: int) -> int:
        """The line number of buf[pos] (pos never moves backwards)."""
        self.line += self.buf.count("\n", self.line_pos, pos)
        self.line_pos = pos
        return self.line

    def skip_ws(self) -> str:
        """Skip whitespace; the next character, or '' at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self.more()

    def value(self) -> Any:
        """Decode the JSON value at pos, reading more until it is complete. A value that is complete but cannot be
        decoded (nested too deep for the parser, an integer past Python's digit limit) is stepped over, and its
        problem raised as `JsonProblem`."""
        size = _CHUNK
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                incomplete = e.msg.startswith("Unterminated string") or e.pos >= len(self.buf) - 6
                if self.eof or not incomplete:
                    line = self.line_at(self.pos) + self.buf.count("\n", self.pos, e.pos)
                    raise InputError(f"{self.path}: line {line}: invalid JSON: {e.msg}") from None
            except (RecursionError, ValueError) as e:
                end = json_text.value_end(self.buf, self.pos)
                if end is not None and (end < len(self.buf) or self.eof):
                    self.value_start, self.pos = self.pos, end
                    raise json_text.problem_of(e) from None
                if self.eof:
                    where = f"line {self.line_at(self.pos)}"
                    raise InputError(f"{self.path}: {where}: invalid JSON: the file ends inside a value") from None
            else:
                if end < len(self.buf) or self.eof:  # a number at the end of the buffer may go on
                    self.value_start, self.pos = self.pos, end
                    return obj
            if len(self.buf) - self.pos > _MAX_ELEMENT:
                raise InputError(f"{self.path}: line {self.line_at(self.pos)}: a JSON value over {_MAX_ELEMENT} characters")
            size = min(size * 2, _MAX_ELEMENT)
            self.more(size)


def _iter_json(path: InputPath, encoding: str) -> Iterator[RawRecord | RowError]:
    """A JSON array (streamed element by element), a single JSON object (one record), or JSON Lines named `.json`."""
    source = str(path)
    with _open(path) as f:
        s = _TextStream(f, path, encoding)
        first = s.skip_ws()
        if first == "":
            return
        if first == "{":
            item = _json_record(s, source, 1, None)
            if s.skip_ws() == "":
                yield item
                return
            jsonl = True  # more after the first object: JSON Lines in a `.json` file
        elif first == "[":
            jsonl = False
        else:
            raise InputError(f"{path}: line {s.line_at(s.pos)}: expected a JSON array or object, found {first!r}")
        if not jsonl:
            s.pos += 1
            index = 0
            if s.skip_ws() == "]":
                s.pos += 1
            else:
                while True:
                    index += 1
                    s.skip_ws()
                    yield _json_record(s, source, index, s.line_at(s.pos))
                    c = s.skip_ws()
                    s.pos += 1
                    if c == "]":
                        break
                    if c != ",":
                        where = f"line {s.line_at(s.pos - 1)}"
                        raise InputError(f"{path}: {where}: expected ',' or ']' after element {index}, found {c or 'end of file'!r}")
            if s.skip_ws() != "":
                raise InputError(f"{path}: line {s.line_at(s.pos)}: extra data after the JSON array")
            return
    yield from _iter_jsonl(path, encoding)


def _json_record(s: _TextStream, source: str, row: int, line: int | None) -> RawRecord | RowError:
    """The JSON value at the stream's position as record `row`, or an `invalid_json` row when it cannot be used."""
    try:
        value = s.value()
        json_text.check(value, s.buf, s.value_start, s.pos)
    except json_text.JsonProblem as problem:
        raw = s.buf[s.value_start : s.pos]
        rid = adapt.record_id(raw, source=source, row=row)
        return RowError(source, row, Reason.INVALID_JSON, str(problem), raw=raw, id=rid, extra={"line": line} if line else {})
    return RawRecord(source, row, value, line)


def _iter_jsonl(path: InputPath, encoding: str, start: Position = FILE_START) -> Iterator[RawRecord | RowError]:
    source = str(path)
    for _, lineno, text in _lines(path, encoding, start):
        if not text.strip():
            continue
        try:
            data = json_text.loads(text)
        except json_text.JsonProblem as problem:
            yield _bad_line(source, lineno, text, str(problem))
            continue
        yield RawRecord(source, lineno, data)


def _bad_line(source: str, lineno: int, text: str, message: str) -> RowError:
    raw = text.rstrip("\r\n")
    return RowError(source, lineno, Reason.INVALID_JSON, message, raw=raw, id=adapt.record_id(raw, source=source, row=lineno))


def _csv_reader(path: InputPath, texts: Iterable[str]) -> tuple[list[str], Any]:
    reader = csv.reader(texts, strict=True)
    try:
        header = next(reader, [])
    except csv.Error as e:
        raise InputError(f"{path}: line {reader.line_num}: unreadable CSV header: {e}") from None
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{path}: line 1: duplicate column names {dupes}")
    return header, reader


def csv_header(path: InputPath, encoding: str) -> list[str]:
    header, reader = _csv_reader(path, (text for _, text in iter_lines(path, encoding)))
    del reader
    return header


def _csv_items(path: InputPath, encoding: str, start: Position | None) -> Iterator[tuple[Position, RawRecord | RowError]]:
    """Data rows as `{column: cell}` with every cell a string (no dtype guessing), each with where it starts: from
    the first data row, or from `start` (the header is then read from the top of the file on its own)."""
    source = str(path)
    offsets: dict[int, int] = {}  # line number -> byte offset, for the lines of the record being read

    def texts(lines: Iterator[tuple[int, int, str]]) -> Iterator[str]:
        for offset, lineno, text in lines:
            offsets[lineno] = offset
            yield text

    if start is None:
        header, reader = _csv_reader(path, texts(_lines(path, encoding, FILE_START)))
        before = 0
    else:
        header = csv_header(path, encoding)
        reader = csv.reader(texts(_lines(path, encoding, start)), strict=True)
        before = start.line - 1
    done = before + reader.line_num  # lines consumed so far; a record starts on the next one
    while True:
        offsets.clear()  # the csv reader reads no line past the end of a record
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Position(offsets[done + 1], done + 1), RowError(source, done + 1, Reason.INVALID_CSV,
                                                                  f"bad CSV quoting: {e}")
            done = before + reader.line_num
            continue
        first, done = done + 1, before + reader.line_num
        if not cells:
            continue
        position = Position(offsets[first], first)
        if len(cells) != len(header):
            yield position, RowError(source, first, Reason.INVALID_CSV,
                                     f"{len(cells)} fields, but the header has {len(header)}",
                                     raw=cells, id=adapt.record_id(cells, source=source, row=first))
            continue
        yield position, RawRecord(source, first, dict(zip(header, cells)))


def _iter_columnar(path: InputPath, kind: str) -> Iterator[RawRecord]:
    source = str(path)
    with _open(path) as f:
        try:
            for row, data in columnar.iter_rows(f, kind):
                yield RawRecord(source, row, data)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: cannot read as {kind}: {e}") from None


def iter_records(path: InputPath, source: SourceConfig, start: Position | None = None) -> Iterator[RawRecord | RowError]:
    """Every record of one file in file order, or a `RowError` for a line that is not a record (invalid JSON/CSV);
    from `start` on when given (JSON Lines and CSV only: a position from `record_starts`)."""
    kind = container_kind(path)
    if kind in ("parquet", "arrow"):
        return _iter_columnar(path, kind)
    if kind == "csv":
        return (item for _, item in _csv_items(path, source.encoding, start))
    if kind == "jsonl":
        return _iter_jsonl(path, source.encoding, start or FILE_START)
    if start is not None:
        raise ValueError(f"{path}: a JSON file is read from its start")
    return _iter_json(path, source.encoding)


def record_starts(path: InputPath, source: SourceConfig) -> Iterator[Position | None]:
    """Where each record of `iter_records(path)` starts, found without parsing JSON: a `Position` to read on from in
    a JSON Lines or CSV file; None in a JSON, Parquet or Arrow file, which is read from its start."""
    kind = container_kind(path)
    if kind == "csv":
        return (position for position, _ in _csv_items(path, source.encoding, None))
    if kind == "jsonl":
        return (Position(offset, lineno) for offset, lineno, text in _lines(path, source.encoding, FILE_START)
                if text.strip())
    if kind in ("parquet", "arrow"):
        return (None for _ in _iter_columnar(path, kind))
    return (None for _ in _iter_json(path, source.encoding))


# --- formats --------------------------------------------------------------------------------------------------------
def parse_csv_map(spec: str) -> dict[str, str]:
    """`system=col,user=col,assistant=col` -> {role: column}; `ConfigError` lists every bad item."""
    mapping: dict[str, str] = {}
    problems = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        role, sep, column = item.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not column:
            problems.append(f"--csv-map: {item!r} is not role=column")
        elif role not in ("system", "user", "assistant"):
            problems.append(f"--csv-map: unknown role {role!r} (system, user or assistant)")
        elif role in mapping:
            problems.append(f"--csv-map: role {role!r} given twice")
        else:
            mapping[role] = column
    if problems:
        raise ConfigError(problems)
    return mapping


def _detect_csv(path: InputPath, source: SourceConfig) -> str:
    header = csv_header(path, source.encoding)
    if source.format not in ("auto", "csv", "alpaca"):
        raise InputError(f"{path}: format {source.format} cannot be read from CSV (use csv or alpaca)")
    if source.csv_messages_column is not None:
        if source.csv_messages_column not in header:
            raise InputError(f"{path}: messages column {source.csv_messages_column!r} not in the header {header}")
        return "csv"
    mapped = {role: col for role, col in source.csv_map.items() if role != "system"}
    if source.format == "alpaca" or (
        source.format == "auto" and not source.csv_map_given
        and not set(mapped.values()) <= set(header) and set(header) & adapt.ALPACA_KEYS
    ):
        if not set(header) & {"output", "response"}:
            raise InputError(f"{path}: alpaca CSV needs an `output` or `response` column; the header is {header}")
        return "alpaca"
    missing = [f"{col} ({role})" for role, col in mapped.items() if col not in header]
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(missing)} not in the header {header}; pass --csv-map")
    return "csv"


def detect_format(path: InputPath, source: SourceConfig) -> str:
    """The format used for `path`: `source.format` unless `auto`, else from the extension and the first record.

    Returns one of glm, openai, sharegpt, alpaca, csv, or `empty` for a file with no record. `InputError` when the
    file cannot be read or its first record matches no format.
    """
    if container_kind(path) == "csv":
        return _detect_csv(path, source)
    if source.format == "csv":
        raise InputError(f"{path}: format csv reads .csv files only")
    if source.format != "auto":
        return source.format
    records = iter_records(path, source)
    try:
        first = next((r for r in records if isinstance(r, RawRecord)), None)
    finally:
        records.close()
    if first is None:
        return "empty"
    fmt = adapt.detect_record_format(first.data)
    if fmt is None:
        keys = sorted(first.data)[:8] if isinstance(first.data, dict) else type(first.data).__name__
        raise InputError(f"{path}: row {first.row}: cannot tell the format from the first record (keys: {keys}); "
                         "pass --format")
    return fmt


def detect_formats(paths: Sequence[InputPath], source: SourceConfig) -> dict[InputPath, str]:
    """Each file's format (`detect_format`), detected once per run: readers take them from here."""
    return {path: detect_format(path, source) for path in paths}


def read_records(files: Mapping[InputPath, str], source: SourceConfig) -> Iterator[tuple[RawRecord | RowError, str]]:
    """One item per input record, files in the given order and records in file order, each with its file's format
    (`files`: from `detect_formats`): the parsed record, or the `RowError` of a line that is not one. Adapting them
    is left to the caller (a worker). `InputError` when a file cannot be read (the items before it have been
    yielded)."""
    for path, fmt in files.items():
        for item in iter_records(path, source):
            yield item, fmt


def read_conversations(files: Mapping[InputPath, str], source: SourceConfig) -> Iterator[Conversation | RowError]:
    """One item per input record of `files` (as `read_records` takes them): a validated `Conversation`, or the
    `RowError` that rejects the record (bad line, adapter error, or a rule of `pipeline.stages.validate`).

    Callers count `read` as the number of items, so `read == accepted + rejected` holds by construction.
    `InputError` when a file cannot be read (the items before it have been yielded).
    """
    for item, fmt in read_records(files, source):
        yield to_conversation(item, fmt, source)


def to_conversation(item: RawRecord | RowError, fmt: str, source: SourceConfig) -> Conversation | RowError:
    """A record of `read_records` adapted and validated; a bad line stays the RowError it already is."""
    return item if isinstance(item, RowError) else adapt.to_conversation(item, fmt, source=source)
