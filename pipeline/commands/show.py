"""Print one written sample as text with its trained tokens marked, optionally with a per-token table.

Trained runs are passed through `highlight` when given (the CLI colours them with click.style when stdout is a
terminal) and wrapped in `[[...]]` otherwise, so piped output and logs still show the mask. No click here: library
code does not import it.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError, OptionError
from pipeline.shards.format import IGNORE_INDEX
from pipeline.shards.reader import RowSample, Shards, open_shards
from pipeline.tokenizer import load_saved_tokenizer

OPEN, CLOSE = "[[", "]]"


def find_row(shards: Shards, *, split: str | None = None, index: int | None = None, row_id: str | None = None
             ) -> RowSample:
    """The row at `index` of `split` (default train), or the row whose `id` is `row_id` (in `split`, or any split)."""
    splits = shards.split_names
    if split is not None and split not in splits:
        raise OptionError(f"--split: no split {split!r} in {shards.where} (it has: {', '.join(splits) or 'none'})")
    if row_id is not None:
        for name in [split] if split else splits:
            found = shards.split(name).index_of(row_id)
            if found is not None:
                return shards.split(name).row(found)
        raise OptionError(f"--id: no row with id {row_id!r} in {split or 'any split'} of {shards.where}")
    split = split or (splits[0] if splits else None)  # train comes first
    if split is None:
        raise InputError(f"{shards.where} holds no rows")
    rows = len(shards.split(split))
    index = 0 if index is None else index
    if not 0 <= index < rows:
        raise OptionError(f"--index: {index} is out of range: split {split!r} has {rows} rows (0..{rows - 1})")
    return shards.split(split).row(index)


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds, so that "".join(pieces) == decode(ids). A character split over several byte-level
    tokens goes to the last of them (the others get ""); each piece is decoded with the previous one as context,
    so SentencePiece word-start spaces come out right."""
    pieces, prefix, read = [], 0, 0
    for k in range(len(ids)):
        before = tokenizer.decode(ids[prefix:read], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        after = tokenizer.decode(ids[prefix : k + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            pieces.append(after[len(before) :])
            prefix, read = read, k + 1
        else:
            pieces.append("")
    return pieces


def runs(trained: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal (start, end, trained) runs of a boolean mask."""
    if len(trained) == 0:
        return []
    cuts = np.flatnonzero(np.diff(trained.astype(np.int8))) + 1
    bounds = [0, *cuts.tolist(), len(trained)]
    return [(a, b, bool(trained[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def format_sample(tokenizer, row: RowSample, *, highlight: Callable[[str], str] | None = None, ids: bool = False) -> str:
    """The header, the text with trained runs highlighted (or in [[...]]), and with `ids` a per-token table."""
    trained = row.labels != IGNORE_INDEX
    pieces = token_pieces(tokenizer, row.input_ids.tolist())
    header = (f"{row.split}[{row.index}] id={row.id} from {row.origin}  {len(row.input_ids)} tokens, {int(trained.sum())} trained "
              f"({highlight('highlighted') if highlight else OPEN + '...' + CLOSE} = trained)")
    parts = []
    for start, end, is_trained in runs(trained):
        text = "".join(pieces[start:end])
        if is_trained:
            text = highlight(text) if highlight else f"{OPEN}{text}{CLOSE}"
        parts.append(text)
    out = [header, "", "".join(parts)]
    if ids:
        out += ["", f"{'pos':>5}  {'id':>7}  {'label':>7}  token"]
        for k, (token, label) in enumerate(zip(row.input_ids.tolist(), row.labels.tolist())):
            line = f"{k:>5}  {token:>7}  {label:>7}  {json.dumps(pieces[k], ensure_ascii=False)}"
            out.append(highlight(line) if highlight and label != IGNORE_INDEX else line)
    return "\n".join(out)


def show(directory: Path | str, *, split: str | None = None, index: int | None = None, row_id: str | None = None,
         highlight: Callable[[str], str] | None = None, ids: bool = False,
         storage_options: dict[str, Any] | None = None) -> str:
    """`python -m pipeline show`: one sample of an output directory as text (`storage_options`: how to reach one in
    object storage)."""
    shards = open_shards(directory, storage_options)
    tokenizer = load_saved_tokenizer(shards.tokenizer_dir)
    return format_sample(tokenizer, find_row(shards, split=split, index=index, row_id=row_id), highlight=highlight,
                         ids=ids)
