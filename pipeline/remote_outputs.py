"""Output prefixes in object storage, under the rules of output directories (`pipeline/outputs.py`).

A prefix is new (no objects), or this tool's output of the same kind, marked by its ledger object `.chatshard.json`
(the same format as a directory's), which lists every key the tool created there. A key is recorded before it is
written, only recorded keys (and those under a recorded scratch prefix such as `.work/`) are replaced or removed,
and anything else found where the run would write stops it before any work. Object stores have no folders: a path
here is a key, or a prefix standing for every key under it.
"""
from __future__ import annotations

from collections.abc import Iterable

from pipeline.errors import OutputError
from pipeline.outputs import LEDGER, Ledger, ledger_bytes, listing, other_kind, parse_ledger, refusal
from pipeline.storage import Store


class OwnedPrefix(Ledger):
    """A prefix claimed by `claim_prefix`, with the ledger of the keys the tool created under it."""

    def __init__(self, store: Store, kind: str, paths: Iterable[str] = (), scratch: Iterable[str] = ()):
        super().__init__(kind, paths, scratch)
        self.store = store

    def record(self, *rels: str) -> None:
        """Record keys before writing them; a key already there that is not ours is refused."""
        new = set(rels) - self._paths
        if new:
            self._refuse([k for k in self.store.keys() if _at_or_under(k, new)], "overwrite")
            self._paths |= new
            self._save()

    def refuse_foreign(self, *rels: str) -> None:
        """Refuse now if a key at or under any of `rels` is there but not ours."""
        self._refuse([key for rel in rels for key in self.store.keys(rel)], "replace")

    def _refuse(self, keys: list[str], action: str) -> None:
        foreign = sorted({key for key in keys if not self.owns(key)})
        if foreign:
            raise refusal([self.store.name(k) for k in foreign], self.store.name(LEDGER), action)

    def scratch(self, rel: str) -> None:
        """A prefix that only the tool fills (a working folder): every key under it is ours."""
        self.refuse_foreign(rel)
        if rel not in self._scratch:
            self._scratch.add(rel)
            self._save()

    def remove(self, *rels: str) -> None:
        """Delete keys of ours (a prefix with every key under it, all of which must be ours) and forget them."""
        self.refuse_foreign(*rels)
        self.store.delete(key for rel in rels for key in self.store.keys(rel))
        self._paths = {p for p in self._paths if not _at_or_under(p, rels)}
        self._scratch = {s for s in self._scratch if not _at_or_under(s, rels)}
        self._save()

    def _save(self) -> None:
        self.store.write(LEDGER, ledger_bytes(self.kind, self._paths, self._scratch))


def claim_prefix(store: Store, kind: str, *, writes: Iterable[str] = ()) -> OwnedPrefix:
    """Take `store`'s prefix as an output of `kind`: new, or this tool's own output of that kind. `writes`: the keys
    (or prefixes) the run will create or replace, each checked now and recorded. `OutputError` when refused or
    when the store cannot be written."""
    try:
        keys = store.keys()
        if LEDGER in keys:
            ledger = store.name(LEDGER)
            prefix = OwnedPrefix(store, *parse_ledger(store.read(LEDGER).decode("utf-8", "replace"), ledger))
            if prefix.kind != kind:
                raise other_kind(store.url, prefix.kind, kind)
        elif keys:
            raise OutputError(f"{store.url}: not empty and not an output of chatshard (it holds "
                              f"{listing(_top_level(keys))}); choose a new or empty --out, or remove what is there "
                              "yourself")
        else:
            prefix = OwnedPrefix(store, kind)
        writes = list(writes)
        prefix.refuse_foreign(*writes)
        prefix._save()
        prefix.record(*writes)
        return prefix
    except OSError as e:
        raise OutputError(f"{store.url}: cannot use the output prefix: {e.strerror or e}") from None


def _top_level(keys: list[str]) -> list[str]:
    """The entries directly under the prefix, folder-like ones with a trailing `/` (as a directory's are named)."""
    return sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in keys})


def _at_or_under(key: str, rels: Iterable[str]) -> bool:
    return any(key == rel or key.startswith(rel + "/") for rel in rels)
