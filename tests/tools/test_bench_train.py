"""`tools/bench_train.py`, the benchmark against TRL: `--smoke` end to end on a minuscule model (preprocess, the model
built once, this trainer and TRL's SFTTrainer padded and packed, each in its own process, and the tables), and its
check that TRL trains the same labels."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

CELL = r"\|\s+([\d,.]+)x? "  # a number in a table cell
RUN_ROW = re.compile(rf"^\| (chatshard train|TRL SFTTrainer)[^|]* {CELL * 6}\|", re.M)
RATIO_ROW = re.compile(rf"^\| (padded|packing / padding_free)\s+{CELL}\|[^|]*{CELL}\|[^|]*{CELL}\|", re.M)


@pytest.mark.slow  # six processes that each import torch: about 30 s on 2 idle cores
def test_smoke_run_prints_both_comparisons_with_numeric_ratios(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tools.bench_train", "--smoke", "--work", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = RUN_ROW.findall(done.stdout)
    assert [name for name, *_ in runs] == ["chatshard train", "TRL SFTTrainer"] * 2, done.stdout
    for _, *cells in runs:
        steps, tokens, seconds, rate, cpu_seconds, peak = (float(c.replace(",", "")) for c in cells)
        assert steps == 2 and tokens > 0 and seconds > 0 and rate > 0 and cpu_seconds > 0
        assert peak > 100  # MiB: a process that imported torch
    ratios = {mode: [float(r) for r in values] for mode, *values in RATIO_ROW.findall(done.stdout)}
    assert set(ratios) == {"padded", "packing / padding_free"}, done.stdout
    assert all(r > 0 for values in ratios.values() for r in values)
    assert "Labels checked equal (TRL's collator vs this trainer's) on 8 padded samples and " in done.stdout
    # the model is kept for the next run; the shards and runs are gone
    assert [p.name for p in tmp_path.iterdir()] == ["models"]
    assert [(p / "config.json").is_file() for p in (tmp_path / "models").iterdir()] == [True]


@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_trl_labels_are_checked_against_this_trainers(tmp_path, mode):
    """The equal-work check: TRL's collated labels equal this trainer's on the same samples, and a single changed
    label is caught."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.train.train_helpers import VOCAB, write_shards

    from tools import bench_train as bench
    shards = write_shards(tmp_path / "shards", n_eval=0, tokenizer=True)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "model")
    trainer = bench.trl_trainer({"data": str(shards), "model": str(tmp_path / "model"), "out": str(tmp_path / "out"),
                                 "mode": mode, "device": "cpu", "steps": 1, "max_length": 64, "precision": "fp32",
                                 "gradient_checkpointing": False, "qlora": False})
    samples, equal = bench.compare_labels(trainer, shards, packed=mode == "packed")
    assert equal and samples >= 8

    collate = trainer.data_collator

    def one_label_changed(examples):
        batch = collate(examples)
        labels = batch["labels"][0]
        k = int((labels != -100).nonzero()[-1])  # a trained position
        labels[k] = -100
        return batch

    trainer.data_collator = one_label_changed
    assert bench.compare_labels(trainer, shards, packed=mode == "packed") == (samples, False)
