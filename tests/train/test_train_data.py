"""Shards to batches: memory-mapped reading, refusals, length-grouped padding, packing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.shards.format import IGNORE_INDEX
from pipeline.train.data import MicroBatches, collate, open_training_shards, plan_epoch
from tests.train.train_helpers import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=200, n_eval=4, max_len=60)
    return open_training_shards(path)


def test_reads_the_layout(shards):
    train = shards.splits["train"]
    assert len(train) == 200 and set(shards.splits) == {"train", "eval"}
    ids, labels = train.sample(3)
    assert len(ids) == train.lengths[3] and ((labels == IGNORE_INDEX) | (labels == ids)).all()
    assert train.ids([0, 3]) == ["s0-0", "s0-3"]


def test_every_sample_once_per_epoch_and_grouping_saves_padding(shards):
    lengths = shards.splits["train"].lengths
    kw = dict(seed=1, batch_size=8, batch_tokens=None, packing=False, pack_length=0)
    plan = plan_epoch(lengths, epoch=0, bucket_batches=8, **kw)
    assert sorted(i for b in plan for row in b for i in row) == list(range(200))
    assert plan == plan_epoch(lengths, epoch=0, bucket_batches=8, **kw)  # deterministic
    assert plan != plan_epoch(lengths, epoch=1, bucket_batches=8, **kw)  # reshuffled per epoch

    def waste(p):
        return sum(len(b) * max(lengths[r[0]] for r in b) - sum(lengths[r[0]] for r in b) for b in p)
    order = np.random.default_rng(1).permutation(200).tolist()
    unsorted = [[[i] for i in order[k:k + 8]] for k in range(0, 200, 8)]
    assert waste(plan) < 0.5 * waste(unsorted)


def test_token_budget(shards):
    lengths = shards.splits["train"].lengths
    plan = plan_epoch(lengths, epoch=0, seed=0, batch_size=None, batch_tokens=128, bucket_batches=8,
                      packing=False, pack_length=0)
    assert all(len(b) * max(lengths[r[0]] for r in b) <= 128 for b in plan)


def test_packed_rows_are_full_and_hold_every_sample_once():
    """Best-fit decreasing packs chat-like lengths nearly full; closing a row at the first sample that does not fit
    (the shuffled first fit this replaced) leaves about a third of each row empty."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(300, 900, size=2000)
    kw = dict(seed=3, batch_size=4, batch_tokens=None, bucket_batches=16, packing=True, pack_length=1024)
    plan = plan_epoch(lengths, epoch=0, **kw)
    rows = [row for batch in plan for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 1024 for row in rows)
    fill = lengths.sum() / (len(rows) * 1024)
    naive = []
    for i in rng.permutation(len(lengths)):  # the reference: shuffled order, a new row at the first misfit
        if not naive or sum(lengths[j] for j in naive[-1]) + lengths[i] > 1024:
            naive.append([])
        naive[-1].append(i)
    assert fill > 0.8 and fill > lengths.sum() / (len(naive) * 1024) + 0.1
    assert plan == plan_epoch(lengths, epoch=0, **kw) and plan != plan_epoch(lengths, epoch=1, **kw)


def test_padded_batch(shards):
    split = shards.splits["train"]
    batch = collate(split, [[0], [1]], pad_id=0, packing=False)
    n0, n1 = split.lengths[:2]
    assert batch.input_ids.shape == (2, max(n0, n1))
    short = int(np.argmin([n0, n1]))
    assert (batch.labels[short, min(n0, n1):] == IGNORE_INDEX).all()
    assert batch.attention_mask.sum().item() == n0 + n1 == batch.tokens
    assert batch.position_ids is None


def test_packed_batch(shards):
    split = shards.splits["train"]
    rows = plan_epoch(split.lengths, epoch=0, seed=0, batch_size=2, batch_tokens=None, bucket_batches=1,
                      packing=True, pack_length=100)[0]
    batch = collate(split, rows, pad_id=0, packing=True)
    assert batch.attention_mask is None and batch.input_ids.shape[1] <= 100
    at = 0
    for i in rows[0]:  # positions restart and the first label of every sample is not trained
        n = int(split.lengths[i])
        assert batch.position_ids[0, at:at + n].tolist() == list(range(n))
        assert batch.labels[0, at] == IGNORE_INDEX
        at += n


def test_stream_crosses_epochs(shards):
    stream = MicroBatches(shards.splits["train"], seed=0, batch_size=50, batch_tokens=None, bucket_batches=1,
                          packing=False, pack_length=0, pad_id=0)
    assert stream.locate(3) == (0, 3) and stream.locate(4) == (1, 0) and stream.locate(9) == (2, 1)
    assert sorted(stream[4].samples + stream[5].samples + stream[6].samples + stream[7].samples) == list(range(200))


def test_refusals(tmp_path):
    with pytest.raises(InputError, match="no such shard directory"):
        open_training_shards(tmp_path / "missing")
    bad_version = write_shards(tmp_path / "v", n_train=4, n_eval=0, version=99)
    with pytest.raises(InputError, match="version 99"):
        open_training_shards(bad_version)
    small_vocab = write_shards(tmp_path / "vocab", n_train=4, n_eval=0, vocab_size=10)
    with pytest.raises(InputError, match="outside the vocabulary"):
        open_training_shards(small_vocab)
    manifest = json.loads((small_vocab / "manifest.json").read_text())
    (small_vocab / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest.json is not a valid manifest: unreadable"):
        open_training_shards(small_vocab)
    del manifest["tokenizer"]["vocab_size"]
    (small_vocab / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="tokenizer.vocab_size: Field required"):
        open_training_shards(small_vocab)
