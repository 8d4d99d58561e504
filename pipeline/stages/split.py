"""Assign each written row to the train or eval split, from a hash of its id: stable across runs, chunking and
workers."""
from __future__ import annotations

import hashlib

from pipeline.stages.row import Row
from pipeline.step import RowStep, Tally

SPLITS = ("train", "eval")


def assign_split(sample_id: str, eval_fraction: float, seed: int) -> str:
    """A split from a hash of the id."""
    if eval_fraction <= 0:
        return "train"
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


class Split(RowStep):
    """The last step: every row it sees is written, so the remarks the row gathered on the way (`Row.remarks`) are
    listed now, and a row rejected or filtered after its remark is listed for that instead."""

    name = "split"

    def __init__(self, *, eval_fraction: float, seed: int):
        self.eval_fraction, self.seed = eval_fraction, seed

    def row(self, row: Row, tally: Tally) -> Row:
        row.split = assign_split(row.split_key or row.conversation.id, self.eval_fraction, self.seed)
        for remark in row.remarks:
            tally.warn(remark)
        return row
