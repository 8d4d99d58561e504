"""Object storage (`s3://`, `gs://`): one prefix of a bucket seen as a flat set of keys, through fsspec.

Endpoint and credentials come from the backend's own configuration (for S3: `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `~/.aws`), or from `storage_options` (the
backend's keyword arguments, e.g. s3fs's `endpoint_url`, `key`, `secret`). Every object is written whole (one PUT, or
a multipart upload that appears only when complete): a reader sees an object entirely or not at all.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import OptionError

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}  # URL scheme -> the chatshard extra that installs it
_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://")


def is_url(location: str | os.PathLike) -> bool:
    """Whether `location` names object storage (`s3://...`, `gs://...`) rather than a local path."""
    return isinstance(location, str) and bool(_URL.match(location))


@dataclass(frozen=True)
class Store:
    """A prefix in object storage: keys are relative to it, in POSIX form (`train/data-00000-of-00001.arrow`)."""

    url: str  # the prefix as given, without a trailing slash: what messages name
    fs: Any  # an fsspec AbstractFileSystem
    root: str  # the prefix in the filesystem's own terms (`bucket/prefix`)

    def name(self, rel: str) -> str:
        """The full URL of key `rel`, for messages."""
        return f"{self.url}/{rel}"

    def _key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def keys(self, rel: str = "") -> list[str]:
        """Every object at or under `rel` (a key or a folder-like prefix), relative to the store's prefix; read
        afresh, not from a listing cache, since another process may have written since."""
        self.fs.invalidate_cache()
        found = self.fs.find(self._key(rel), withdirs=False)
        start = len(self.root) + 1
        return sorted(k[start:] for k in found if k.startswith(self.root + "/"))

    def read(self, rel: str) -> bytes:
        return self.fs.cat_file(self._key(rel))

    def write(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self._key(rel), data)

    def upload(self, files: Iterable[tuple[Path, str]]) -> None:
        """Put local files to their keys, concurrently where the backend can."""
        pairs = list(files)
        if pairs:
            self.fs.put([str(local) for local, _ in pairs], [self._key(rel) for _, rel in pairs])

    def copy(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Copy keys to other keys of the store on the server (S3 CopyObject, GCS rewrite): no bytes pass through
        this machine."""
        pairs = list(pairs)
        if pairs:
            self.fs.copy([self._key(source) for source, _ in pairs], [self._key(dest) for _, dest in pairs])

    def download(self, rel: str, local: Path) -> None:
        """Copy key `rel` to `local` through a temp file beside it, renamed into place: several processes may
        fetch the same file at once."""
        local.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".tmp")
        os.close(handle)
        try:
            self.fs.get_file(self._key(rel), tmp)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def delete(self, rels: Iterable[str]) -> None:
        keys = [self._key(rel) for rel in rels]
        if keys:
            self.fs.rm(keys)
            self.fs.invalidate_cache()


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> Store:
    """The store for `url`; `OptionError` naming the extra to install when its backend is missing."""
    import fsspec

    url = url.rstrip("/")
    scheme = _URL.match(url).group(1)
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError:
        extra = EXTRAS.get(scheme)
        hint = f"pip install 'chatshard[{extra}]'" if extra else "install the fsspec backend for it"
        raise OptionError(f"{url}: {scheme}:// storage is not installed: {hint}") from None
    except ValueError as e:  # an unknown scheme, or options the backend does not take
        raise OptionError(f"{url}: cannot use this storage: {e}") from None
    return Store(url=url, fs=fs, root=root.rstrip("/"))
