"""`export`: each consumer's copy holds exactly the shards' tokens and labels, in the layout its loader requires; TRL's
SFTTrainer trains on the `trl` copy as it is; the output-directory rules hold."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.outputs import LEDGER
from pipeline.shards.reader import open_shards
from tests.train.train_helpers import tiny_model, write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("export") / "shards", n_train=24, n_eval=6, tokenizer=True)


def _export(directory, consumer, out):
    return CliRunner().invoke(main, ["export", str(directory), "--for", consumer, "--out", str(out)])


def _exported(shards, consumer, out) -> datasets.DatasetDict:
    result = _export(shards, consumer, out)
    assert result.exit_code == 0, result.output
    return datasets.load_from_disk(str(out))


def _assert_same_rows(copy: datasets.DatasetDict, shards, names: dict[str, str]) -> None:
    """Every split under its new name, row for row the shards' input_ids and labels."""
    source = open_shards(shards)
    assert sorted(copy) == sorted(names[s] for s in source.split_names)
    for split in source.split_names:
        rows = copy[names[split]]
        assert len(rows) == len(source.split(split))
        for k, row in enumerate(rows):
            ids, labels = source.split(split).sample(k)
            assert row["input_ids"] == ids.tolist() and row["labels"] == labels.tolist()
            if "attention_mask" in row:
                assert row["attention_mask"] == [1] * len(ids)


def test_trl_sft_trainer_trains_on_the_copy_with_exactly_the_shards_labels(shards, tmp_path):
    """SFTTrainer (TRL 1.16) with `max_length=None`, so that it keeps the rows as they are (its default, 1024,
    would cut longer rows again): 2 steps, and every row of every batch carries the labels the shards hold."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    copy = _exported(shards, "trl", tmp_path / "trl")
    _assert_same_rows(copy, shards, {"train": "train", "eval": "eval"})
    assert copy["train"].column_names == ["input_ids", "labels"]
    source = open_shards(shards).split("train")
    by_ids = {tuple(source.sample(k)[0].tolist()): source.sample(k)[1].tolist() for k in range(len(source))}

    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, max_length=None,
                     use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
                     disable_tqdm=True, dataloader_num_workers=0)
    trainer = SFTTrainer(model=tiny_model(), args=args, train_dataset=copy["train"], eval_dataset=copy["eval"],
                         processing_class=AutoTokenizer.from_pretrained(str(tmp_path / "trl" / "tokenizer")))
    batches = []
    collate = trainer.data_collator

    def recording(examples):
        batch = collate(examples)
        batches.append(batch)
        return batch

    trainer.data_collator = recording
    trainer.train()
    assert trainer.state.global_step == 2
    assert len(batches) >= 2
    for batch in batches:
        mask = batch["attention_mask"].bool()
        assert (batch["labels"][~mask] == -100).all()
        for r in range(len(mask)):
            ids = tuple(batch["input_ids"][r][mask[r]].tolist())
            assert ids in by_ids  # a whole shard row: nothing cut, nothing added
            assert batch["labels"][r][mask[r]].tolist() == by_ids[ids]


def test_llamafactory_layout(shards, tmp_path):
    """LLaMA-Factory 0.9.5, src/llamafactory/data/loader.py `get_dataset`: with `tokenized_path` it calls
    `load_from_disk` and takes `dataset_dict["train"]` and `dataset_dict["validation"]` (no other name); its
    hparams/parser.py `get_train_args` sets `remove_unused_columns = False`, so every column reaches its collator
    (data/collator.py, a `DataCollatorForSeq2Seq`), which pads them all: a string column fails there. So: splits
    train/validation, numeric columns input_ids, attention_mask, labels only, which transformers'
    `DataCollatorForSeq2Seq` pads with the labels intact."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    copy = _exported(shards, "llamafactory", tmp_path / "lf")
    _assert_same_rows(copy, shards, {"train": "train", "eval": "validation"})
    for split in copy.values():
        assert split.column_names == ["input_ids", "attention_mask", "labels"]
        assert all(isinstance(f, datasets.List) and f.feature.dtype.startswith("int") for f in split.features.values())
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "lf" / "tokenizer"))
    rows = [copy["validation"][k] for k in range(4)]
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(rows)
    for r, row in enumerate(rows):
        assert batch["labels"][r][: len(row["labels"])].tolist() == row["labels"]
        assert (batch["labels"][r][len(row["labels"]):] == -100).all()


def test_axolotl_layout(shards, tmp_path):
    """axolotl 0.19: src/axolotl/utils/data/shared.py `load_dataset_w_config` opens a local directory without
    `data_files` with `load_from_disk`; utils/data/sft.py `_load_and_process_single_dataset` takes split `train` of a
    DatasetDict for `datasets:` and `test` for `test_datasets:` (unless `split:` says otherwise); utils/data/wrappers.py
    `_is_dataset_already_tokenized` uses a Dataset as it is when its features hold input_ids, attention_mask and
    labels. So: splits train/test, those three columns."""
    copy = _exported(shards, "axolotl", tmp_path / "ax")
    _assert_same_rows(copy, shards, {"train": "train", "eval": "test"})
    for split in copy.values():
        assert isinstance(split, datasets.Dataset)
        assert {"input_ids", "attention_mask", "labels"} <= set(split.features)
        assert split.column_names == ["input_ids", "attention_mask", "labels"]


def test_hf_layout_and_provenance(shards, tmp_path):
    copy = _exported(shards, "hf", tmp_path / "hf")
    _assert_same_rows(copy, shards, {"train": "train", "eval": "validation"})
    info = json.loads((tmp_path / "hf" / "export.json").read_text())
    assert info["consumer"] == "hf" and info["splits"]["validation"]["from"] == "eval"
    assert info["splits"]["train"]["rows"] == 24 and info["source"]["path"] == str(shards)
    trained = sum(int(np.count_nonzero(np.array(r) != -100)) for r in copy["train"]["labels"])
    assert info["splits"]["train"]["trained_tokens"] == trained


def test_a_second_export_replaces_the_first_and_drops_its_other_split_names(shards, tmp_path):
    out = tmp_path / "out"
    _exported(shards, "axolotl", out)
    copy = _exported(shards, "llamafactory", out)
    assert sorted(copy) == ["train", "validation"]
    assert not (out / "test").exists()
    assert "test" not in json.loads((out / LEDGER).read_text())["paths"]


@pytest.mark.parametrize("where", ["inside", "same"])
def test_never_writes_into_the_shards(shards, where):
    out = shards / "copy" if where == "inside" else shards
    before = sorted(p.name for p in shards.iterdir())
    result = _export(shards, "hf", out)
    assert result.exit_code == 2 and "Error:" in result.output
    assert sorted(p.name for p in shards.iterdir()) == before


def test_refuses_a_folder_that_is_not_its_own(shards, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = _export(shards, "hf", out)
    assert result.exit_code == 2 and "not an output of chatshard" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_refuses_shards_that_changed_since_preprocess(tmp_path):
    damaged = write_shards(tmp_path / "shards", n_train=4, n_eval=0, tokenizer=True)
    shard = damaged / "train" / "data-00000-of-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[-9] ^= 1
    shard.write_bytes(bytes(data))
    result = _export(damaged, "trl", tmp_path / "out")
    assert result.exit_code == 2
    assert f"{shard}: sha256 differs" in result.output
    assert not (tmp_path / "out").exists()
