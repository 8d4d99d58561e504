"""Hugging Face Hub datasets by name: `hf://datasets/ORG/NAME` (or `...NAME@REVISION`, and `?name=CONFIG&split=SPLIT`
to choose another config or split than the default config's `train`) -> the data files of that split, as `datasets`
resolves them from the repository (the README's `configs`, else its file-name conventions).

The files are then streamed by the same readers as local and object-storage files, file by file and batch by batch:
memory stays flat, every row keeps its file and row, and the same records give the same tokens as a local copy.
With `HF_HUB_OFFLINE=1` the repository comes from the local hub cache (a snapshot downloaded before); nothing is
fetched. A hub path inside a repository (`hf://datasets/ORG/NAME/data/*.parquet`) is an ordinary remote path.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import fsspec

from pipeline.errors import InputError
from pipeline.stages.remote import RemoteFile, etag_of, filesystem

_REPO = re.compile(r"^hf://datasets/(?P<repo>[^/@?]+/[^/@?]+)(?:@(?P<revision>[^/?]+))?/?(?:\?(?P<query>.*))?$")
_COMMIT = re.compile(r"@([0-9a-f]{40})/")
SPLIT = "train"
OPTIONS = ("name", "split")  # what a hub name's query may choose: the config (as `load_dataset`'s `name`) and split


def is_hub_dataset(spec: str) -> bool:
    """Whether `spec` names a whole hub dataset (not a path inside one)."""
    return bool(_REPO.match(spec))


def hub_files(spec: str, storage_options: Mapping[str, Any]) -> list[RemoteFile]:
    """The data files of the hub dataset `spec`'s chosen split (default: `train` of the default config), in the
    order `datasets` lists them."""
    import datasets
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    match = _REPO.match(spec)
    repo, revision = match["repo"], match["revision"]
    config, split = _choice(spec, match["query"] or "")
    root = None  # offline: the cached snapshot, which datasets reads as a local folder
    if constants.HF_HUB_OFFLINE:
        try:
            root = snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True)
        except LocalEntryNotFoundError:
            raise InputError(f"{spec}: not in the local hub cache, and HF_HUB_OFFLINE is set") from None
    try:
        builder = datasets.load_dataset_builder(root, config, revision=None) if root else \
            datasets.load_dataset_builder(repo, config, revision=revision)
    except Exception as e:  # datasets raises many kinds (missing repo, no data files, bad README yaml)
        raise InputError(f"{spec}: cannot resolve the dataset: {e}") from None
    splits = builder.config.data_files or {}
    if split not in splits:
        raise InputError(f"{spec}: no {split!r} split (it has {', '.join(sorted(map(str, splits))) or 'no data files'})")
    if root is None:
        return [_hub_file(str(url), storage_options) for url in splits[split]]
    commit = Path(root).name  # a snapshot folder is named by its commit
    return [_cached_file(Path(p), Path(root), repo, commit) for p in splits[split]]


def _choice(spec: str, query: str) -> tuple[str | None, str]:
    """The config and split a hub name's query chooses (`name=CONFIG&split=SPLIT`); `InputError` on anything else."""
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - set(OPTIONS))
    repeated = sorted(key for key, values in options.items() if len(values) > 1 or not values[0])
    if unknown or repeated:
        raise InputError(f"{spec}: {'unknown' if unknown else 'empty or repeated'} option "
                         f"{', '.join(unknown or repeated)} (a hub name takes ?name=CONFIG&split=SPLIT)")
    return options.get("name", [None])[0], options.get("split", [SPLIT])[0]


def _hub_file(url: str, storage_options: Mapping[str, Any]) -> RemoteFile:
    fs, path = filesystem(url, storage_options)
    info = fs.info(path)
    commit = _COMMIT.search(url)  # datasets pins the files it resolves to the repository's commit
    return RemoteFile(url=url, path=path, size=int(info["size"]), etag=etag_of(info),
                      version=commit[1] if commit else None, fs=fs)


def _cached_file(path: Path, root: Path, repo: str, commit: str) -> RemoteFile:
    """A file of a cached snapshot, named as on the hub. The cache stores it as a blob named by its hub etag."""
    relative = path.relative_to(root).as_posix()
    return RemoteFile(url=f"hf://datasets/{repo}@{commit}/{relative}", path=str(path), size=path.stat().st_size,
                      etag=Path(os.path.realpath(path)).name, version=commit, fs=fsspec.filesystem("file"))
