"""Remote inputs (`s3://`, `gs://`, any fsspec URL): finding the files a URL, glob or prefix names, opening them, and
fingerprinting them by what the store already knows (etag or version, and size), so a file is never read twice.

The filesystem comes from fsspec with the standard environment (for S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`) plus the config's `source.storage_options`. A remote path is never a
local path: it takes no part in the checks that keep an output directory apart from the inputs.
"""
from __future__ import annotations

import glob
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any

import fsspec
from fsspec.core import OpenFile

from pipeline.errors import InputError
from pipeline.outputs import LEDGER

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}  # protocol -> the optional extra that installs it


def is_remote(spec: str) -> bool:
    """Whether an input argument is a URL (`s3://...`) rather than a local path."""
    return bool(_URL.match(str(spec)))


@dataclass(frozen=True)
class RemoteFile:
    """One remote input file. `url` is what rows name as their source; `path` is the filesystem's own path for it.
    `etag` and `version` (S3 version id, GCS generation, hub commit) identify the content without reading it."""

    url: str
    path: str
    size: int
    etag: str | None
    version: str | None
    fs: Any = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    def __str__(self) -> str:
        return self.url

    def open(self) -> IO[bytes]:
        """The file's bytes, decompressed on the fly for `.gz`; closing it closes everything it opened."""
        compression = "gzip" if self.name.lower().endswith(".gz") else None
        return OpenFile(self.fs, self.path, mode="rb", compression=compression).open()

    def describe(self) -> dict[str, Any]:
        """The manifest's fingerprint: size and whatever identifier the store gives (no second read of the data)."""
        return {"path": self.url, "bytes": self.size, "etag": self.etag, "version_id": self.version}


def filesystem(url: str, storage_options: Mapping[str, Any]) -> tuple[Any, str]:
    """(fsspec filesystem, its path) for `url`; `InputError` naming the extra to install when its protocol's package is
    missing."""
    protocol = url.split("://", 1)[0].lower()
    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options))
    except ImportError:
        extra = _EXTRAS.get(protocol)
        hint = f"pip install 'chatshard[{extra}]'" if extra else "install the fsspec implementation for it"
        raise InputError(f"{url}: reading {protocol}:// inputs needs an optional package: {hint}") from None
    except ValueError as e:
        raise InputError(f"{url}: {e}") from None


def find_remote(spec: str, storage_options: Mapping[str, Any], suffixes: tuple[str, ...]) -> list[RemoteFile]:
    """The files one remote argument names: a file, a glob, or a prefix (a folder, searched recursively for input
    `suffixes`; folders holding this tool's outputs are skipped). Each group sorted by path. The listing's own
    details (size, etag) describe each file: no request per file."""
    fs, path = filesystem(spec, storage_options)
    try:
        if glob.has_magic(path):
            matches = fs.glob(path, detail=True)
            files = {p: info for p, info in matches.items() if info.get("type") == "file"}
            for folder in (p for p, info in matches.items() if info.get("type") == "directory"):
                files.update(_under(fs, folder, suffixes))
            if not files:
                raise InputError(f"{spec}: no file matches")
        elif fs.isdir(path):
            files = _under(fs, path, suffixes)
            if not files:
                raise InputError(f"{spec}: holds no {', '.join(suffixes)} file")
        elif fs.isfile(path):
            files = {path: fs.info(path)}
        else:
            raise InputError(f"{spec}: no such file or prefix")
    except OSError as e:
        raise InputError(f"{spec}: cannot list: {e}") from None
    return [RemoteFile(url=fs.unstrip_protocol(p), path=p, size=int(info.get("size") or 0), etag=etag_of(info),
                       version=version_of(info), fs=fs) for p, info in sorted(files.items())]


def _under(fs: Any, folder: str, suffixes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Input files below `folder` with their details, except those inside an output directory of this tool (it
    holds a ledger)."""
    found = fs.find(folder, detail=True)
    outputs = {str(PurePosixPath(p).parent) for p in found if PurePosixPath(p).name == LEDGER}
    return {p: info for p, info in found.items() if p.lower().endswith(suffixes)
            and not any(p.startswith(out + "/") for out in outputs)}


def etag_of(info: Mapping[str, Any]) -> str | None:
    """The content identifier a store reports: S3's `ETag`, GCS's `etag`, or the hub's LFS sha256 / git blob id."""
    lfs = info.get("lfs")
    value = info.get("ETag") or info.get("etag") or (lfs.get("sha256") if isinstance(lfs, Mapping) else None) \
        or info.get("blob_id")
    return str(value).strip('"') if value else None


def version_of(info: Mapping[str, Any]) -> str | None:
    """The object's version where the store keeps versions: S3's `VersionId`, GCS's `generation`."""
    value = info.get("VersionId") or info.get("generation")
    return str(value) if value else None
