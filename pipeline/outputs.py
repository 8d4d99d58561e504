"""Output directories: the one place that decides what this tool may create, replace or remove.

An output directory is new, empty, or marked as this tool's own output of the same kind by its ledger,
`.chatshard.json`, which lists every path the tool created there. A path is recorded before it is created, so a kill
never leaves an unrecorded file of ours; only recorded paths are ever replaced or removed, and a path someone else
put where the tool would write is refused, never overwritten. Three kinds of entry count as ours: recorded paths,
their atomic-write temp files (`.NAME.tmp` beside a recorded `NAME`), and everything inside a recorded scratch
directory (a hidden working directory such as `.work/`, filled only by the tool).

An output directory that is, holds or sits inside one of the run's inputs is refused too: writing it would destroy
or re-read the inputs.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from pipeline.errors import OutputError

LEDGER = ".chatshard.json"
_LEDGER_TMP = f".{LEDGER}.tmp"
_SHOWN = 5  # foreign entries named in a refusal


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Ledger:
    """What the tool created in one output, a directory or an object-storage prefix: the output's kind, the paths
    it recorded and its scratch folders."""

    def __init__(self, kind: str, paths: Iterable[str] = (), scratch: Iterable[str] = ()):
        self.kind = kind
        self._paths = set(paths)
        self._scratch = set(scratch)

    def owns(self, rel: str) -> bool:
        """Whether `rel` is the tool's: recorded, the temp file of a recorded file, or inside a scratch directory."""
        return owned(rel, self._paths, self._scratch)


class OwnedDir(Ledger):
    """An output directory claimed by `claim`, with the ledger of what the tool created in it. Paths are relative
    to `root`, in POSIX form (`train/data-00000-of-00001.arrow`). Only the writing process (rank 0) changes it."""

    def __init__(self, root: Path, kind: str, paths: Iterable[str] = (), scratch: Iterable[str] = ()):
        super().__init__(kind, paths, scratch)
        self.root = root

    def record(self, *rels: str) -> None:
        """Record paths (and the folders above them) before creating them; a path already there that is not ours
        is refused."""
        new = {p for rel in rels for p in _with_parents(rel)} - self._paths
        foreign = sorted(p for p in new if os.path.lexists(self.root / p) and not self.owns(p))
        if foreign:
            raise self._refusal(foreign, "overwrite")
        if new:
            self._paths |= new
            self._save()

    def refuse_foreign(self, *rels: str) -> None:
        """Refuse now, before any work, if a path the run will replace or remove holds anything that is not ours."""
        foreign = [f for rel in rels for f in self._foreign(rel)]
        if foreign:
            raise self._refusal(foreign, "replace")

    def remove(self, rel: str) -> None:
        """Remove a path of ours (a folder with everything in it, all of which must be ours) and forget it; a path
        that is not there is only forgotten."""
        path = self.root / rel
        self.refuse_foreign(rel)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
        self._forget(lambda p: _under(p, rel))

    def scratch(self, rel: str, *, fresh: bool = False) -> Path:
        """A directory that only the tool fills (a hidden working directory, TensorBoard's event folder), so all of it
        is ours: recorded as a whole, created, and emptied first when `fresh`."""
        self.refuse_foreign(rel)
        if rel not in self._scratch:
            self._scratch.add(rel)
            self._save()
        path = self.root / rel
        if fresh and os.path.lexists(path):
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def replace_dir(self, staged: str, dest: str) -> Path:
        """Move the finished scratch directory `staged` to `dest`, replacing an earlier `dest` of ours. Its files are
        recorded under `dest` before the move; the earlier one is set aside under a scratch name, then removed."""
        source, target = self.root / staged, self.root / dest
        self.refuse_foreign(dest)
        self.record(dest, *(f"{dest}/{p.relative_to(source).as_posix()}" for p in sorted(source.rglob("*"))))
        old = PurePosixPath(dest).with_name(f".{target.name}.old").as_posix()
        self.remove(old)  # left by a run killed mid-swap
        if os.path.lexists(target):
            self._scratch.add(old)
            self._save()
            os.replace(target, self.root / old)
            os.replace(source, target)
            self.remove(old)
        else:
            os.replace(source, target)
        self._forget(lambda p: p == staged or (_under(p, dest) and not os.path.lexists(self.root / p)))
        return target

    def _foreign(self, rel: str) -> list[str]:
        """What, at or below `rel`, is there but not ours (nothing when `rel` does not exist)."""
        path = self.root / rel
        if not os.path.lexists(path):
            return []
        if not self.owns(rel):
            return [rel]
        if path.is_symlink() or not path.is_dir():
            return []
        found = []
        for folder, dirs, files in os.walk(path):
            base = PurePosixPath(rel) / Path(folder).relative_to(path).as_posix()
            found += [(base / name).as_posix() for name in sorted(files + dirs) if not self.owns((base / name).as_posix())]
            dirs[:] = [d for d in dirs if self.owns((base / d).as_posix())]  # a foreign folder is named, not listed
        return found

    def _refusal(self, foreign: list[str], action: str) -> OutputError:
        return refusal([str(self.root / f) for f in foreign], str(self.root / LEDGER), action)

    def _forget(self, gone: Callable[[str], bool]) -> None:
        kept_paths = {p for p in self._paths if not gone(p)}
        kept_scratch = {s for s in self._scratch if not gone(s)}
        if (kept_paths, kept_scratch) != (self._paths, self._scratch):
            self._paths, self._scratch = kept_paths, kept_scratch
            self._save()

    def _save(self) -> None:
        write_atomic(self.root / LEDGER, ledger_bytes(self.kind, self._paths, self._scratch))


def owned(rel: str, paths: set[str], scratch: set[str]) -> bool:
    """Whether `rel` belongs to the tool, by a ledger's `paths` and `scratch` (see the module's docstring)."""
    if rel in (LEDGER, _LEDGER_TMP) or rel in paths:
        return True
    if any(_under(rel, s) for s in scratch):
        return True
    path = PurePosixPath(rel)
    temp_of = path.name[1:-len(".tmp")] if path.name.startswith(".") and path.name.endswith(".tmp") else ""
    return bool(temp_of) and path.with_name(temp_of).as_posix() in paths


def ledger_bytes(kind: str, paths: Iterable[str], scratch: Iterable[str]) -> bytes:
    """The ledger's contents: the same format wherever the output lives (a directory or an object-store prefix)."""
    ledger = {"tool": "chatshard", "version": 1, "kind": kind, "paths": sorted(paths), "scratch": sorted(scratch)}
    return (json.dumps(ledger, indent=1) + "\n").encode()


def parse_ledger(text: str, where: str) -> tuple[str, list[str], list[str]]:
    """(kind, paths, scratch) of a ledger read from `where`; `OutputError` naming it when it is not one."""
    try:
        data = json.loads(text)
        return data["kind"], list(data["paths"]), list(data["scratch"])
    except (ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{where}: unreadable ledger of chatshard ({e}); fix it or choose another --out") from None


def refusal(foreign: list[str], ledger: str, action: str) -> OutputError:
    """The error for paths (named in full) found where the run would `action` them, not listed in `ledger`."""
    names = ", ".join(foreign[:_SHOWN])
    more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
    them = "them" if len(foreign) > 1 else "it"
    return OutputError(f"{names}{more}: not written by chatshard (not listed in {ledger}); refusing to {action} "
                       f"{them}: move {them} away or choose another --out")


def other_kind(where: str, found: str, kind: str) -> OutputError:
    return OutputError(f"{where}: holds a chatshard {found} output, not a {kind} output; choose another --out")


def listing(entries: list[str]) -> str:
    """The first entries of a folder or prefix, for a message."""
    return ", ".join(entries[:_SHOWN]) + (f" and {len(entries) - _SHOWN} more" if len(entries) > _SHOWN else "")


def claim(directory: Path, kind: str, *, inputs: Iterable[Path] = (), writes: Iterable[str] = (),
          writer: bool = True) -> OwnedDir:
    """Take `directory` as an output of `kind` ("shards", "run"): new, empty, or this tool's own output of that kind,
    and apart from every path in `inputs`. `writes`: the paths the run will create or replace; each is checked now
    (anything not ours there is refused before any work) and recorded. Only the `writer` (rank 0) creates the
    directory and its ledger; other ranks only check. `OutputError` when the directory cannot be used."""
    directory = Path(directory)
    _refuse_overlap(directory, inputs)
    if os.path.lexists(directory) and not directory.is_dir():
        raise OutputError(f"{directory}: a file, not a directory; choose another --out")
    owned = _open(directory, kind)
    writes = list(writes)
    owned.refuse_foreign(*writes)
    if writer:
        _create(directory)
        try:
            owned._save()
            owned.record(*writes)
        except OSError as e:
            raise OutputError(f"{directory}: cannot write to the output directory: {e.strerror}") from None
    return owned


def is_tool_output(directory: Path) -> bool:
    """Whether `directory` is an output of this tool (a ledger, or the manifest of an earlier version): its rejects,
    tokenizer and metrics files are never input data. An earlier run directory is only guessed from its file names,
    too weak a sign to leave a folder of someone's data unread."""
    return (directory / LEDGER).is_file() or _earlier_output(directory) == "shards"


def _open(directory: Path, kind: str) -> OwnedDir:
    ledger = directory / LEDGER
    if ledger.is_file():
        try:
            text = ledger.read_text(encoding="utf-8")
        except (OSError, ValueError) as e:
            raise OutputError(f"{ledger}: unreadable ledger of chatshard ({e}); fix it or choose another --out") from None
        owned = OwnedDir(directory, *parse_ledger(text, str(ledger)))
        if owned.kind != kind:
            raise other_kind(str(directory), owned.kind, kind)
        return owned
    entries = sorted(e.name + "/" * e.is_dir() for e in os.scandir(directory)
                     if e.name not in (LEDGER, _LEDGER_TMP)) if directory.is_dir() else []
    if entries:
        held = listing(entries)
        earlier = _earlier_output(directory)
        what = (f"a {earlier} output of an earlier chatshard version, which did not record its files in {LEDGER}"
                if earlier else "not an output of chatshard")
        raise OutputError(f"{directory}: not empty and {what} (it holds {held}); choose a new or empty --out, or "
                          "remove what is there yourself")
    return OwnedDir(directory, kind)


def _earlier_output(directory: Path) -> str | None:
    """The kind of output an earlier version (before the ledger) left in `directory`, if any."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        if isinstance(manifest, dict) and isinstance(manifest.get("tool"), dict) and \
                manifest["tool"].get("name") == "chatshard":
            return "shards"
    except (OSError, ValueError):
        pass
    if (directory / "metrics.jsonl").is_file() and (directory / "config.json").is_file():
        return "run"
    return None


def _refuse_overlap(directory: Path, inputs: Iterable[Path]) -> None:
    out = Path(os.path.realpath(directory))
    for given in inputs:
        real = Path(os.path.realpath(given))
        relation = "is" if real == out else "holds" if out in real.parents else "sits inside" if real in out.parents else None
        if relation:
            raise OutputError(f"{directory}: the output directory {relation} the input {given}; choose an --out apart "
                              "from the inputs")


def _create(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in reversed(directory.parents) if p.exists() and not p.is_dir()), None)
        cause = f"{blocker} is a file" if blocker is not None else e.strerror
        raise OutputError(f"{directory}: cannot create the output directory: {cause}") from None


def _with_parents(rel: str) -> list[str]:
    path = PurePosixPath(rel)
    return [path.as_posix(), *(p.as_posix() for p in path.parents if p.as_posix() != ".")]


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")
