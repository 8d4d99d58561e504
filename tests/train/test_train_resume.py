"""`--resume` continues exactly or refuses: another world size, other data, changed schedule options; a run killed
before its first checkpoint can be started again; a torn last line in metrics.jsonl is tolerated."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import ConfigError, InputError
from pipeline.train.checkpoint import list_checkpoints, load_checkpoint
from pipeline.train.loop import train
from pipeline.train.lr import lr_at
from schemas.train_config import load_train_config
from tests.train.train_helpers import copy_run_until, run_cli, write_shards

FAST = {"tiny_hidden": 32, "tiny_heads": 2, "batch_size": 4, "lr": 3e-3, "min_lr": 3e-4}
FAST_FLAGS = ["--tiny-hidden", "32", "--tiny-heads", "2", "--batch-size", "4", "--lr", "3e-3", "--min-lr", "3e-4"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=24, n_eval=4, tokenizer=True)


def config(shards, out, **kw):
    return load_train_config(overrides={"data": str(shards), "out": str(out), **FAST, **kw})


def run(shards, out, **kw):
    torch.set_num_threads(1)
    return train(config(shards, out, **kw))


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return [r["loss"] for r in records(out) if "loss" in r]


def untimed_records(out):
    """The records without `tokens_per_s`, the one value that differs between identical runs."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records(out)]


def test_world_size_change_is_refused(shards, tmp_path):
    """One rank to two here (the check every rank runs before the model is built); two to one, from a real two-rank
    checkpoint, in test_train_loop.py::test_torchrun_two_ranks."""
    from pipeline.train.resume import check_resume, data_record

    out = tmp_path / "run"
    run(shards, out, max_steps=2)
    ckpt = load_checkpoint(list_checkpoints(out)[-1])
    assert ckpt["world_size"] == 1 and len(ckpt["rng"]) == 1
    cfg = config(shards, out, max_steps=2, resume=True)
    with pytest.raises(ConfigError, match=r"written by 1 rank\(s\), this run has 2"):
        check_resume(ckpt, cfg, world=2, data=data_record(shards), max_steps=2)
    assert check_resume(ckpt, cfg, world=1, data=data_record(shards), max_steps=2) == {}


def test_other_data_is_refused(shards, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    base = ["train", "--out", str(out), "--max-steps", "2", *FAST_FLAGS]
    assert runner.invoke(main, [*base, "--data", str(shards)]).exit_code == 0
    same_vocab = write_shards(tmp_path / "same_vocab", n_train=30, n_eval=4, seed=7, tokenizer=True)
    other_vocab = write_shards(tmp_path / "other_vocab", n_train=24, n_eval=4, seed=7, vocab_size=96)
    before = (out / "metrics.jsonl").read_bytes()
    for other in (same_vocab, other_vocab):
        result = runner.invoke(main, [*base, "--resume", "--data", str(other)])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        flat = " ".join(result.output.split())  # click wraps long lines
        assert str(shards.resolve()) in flat and str(other.resolve()) in flat, result.output
        assert (out / "metrics.jsonl").read_bytes() == before  # nothing written
    moved = shutil.copytree(shards, tmp_path / "moved")  # the same shards at another path: the same data
    result = runner.invoke(main, [*base, "--max-steps", "3", "--allow-schedule-change", "--resume", "--data",
                                  str(moved)])
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in records(out) if "loss" in r] == [1, 2, 3]


def test_schedule_change_needs_the_flag_and_is_noted(shards, tmp_path, capsys):
    out = tmp_path / "run"
    run(shards, out, max_steps=2)
    with pytest.raises(ConfigError) as refused:
        run(shards, out, max_steps=4, lr=1e-2, resume=True)
    message = str(refused.value)
    assert "max_steps: checkpoint has 2, this run has 4" in message
    assert "lr: checkpoint has 0.003, this run has 0.01" in message and "--allow-schedule-change" in message
    assert len(list_checkpoints(out)) == 1 and [r["step"] for r in records(out)] == [1, 2, 2]  # untouched
    capsys.readouterr()
    run(shards, out, max_steps=4, lr=1e-2, resume=True, allow_schedule_change=True)
    notes = [r for r in records(out) if "resume_changes" in r]
    assert notes == [{"step": 2, "resume_changes": {"lr": {"from": 3e-3, "to": 1e-2},
                                                    "max_steps": {"from": 2, "to": 4}}}]
    assert [r["step"] for r in records(out) if "loss" in r] == [1, 2, 3, 4]
    step3 = next(r for r in records(out) if r["step"] == 3 and "lr" in r)
    assert step3["lr"] == lr_at(2, lr=1e-2, min_lr=3e-4, warmup_steps=0, max_steps=4, schedule="cosine")
    printed = capsys.readouterr().out
    assert "lr 0.003 -> 0.01" in printed and "max_steps 2 -> 4" in printed
    (out / "checkpoints" / "step_0000004.pt").unlink()  # resumed from step 2 once more: still one note
    run(shards, out, max_steps=4, lr=1e-2, resume=True, allow_schedule_change=True)
    assert [r for r in records(out) if "resume_changes" in r] == notes
    assert [r["step"] for r in records(out) if "loss" in r] == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match="the run's length .2 steps. is below the checkpoint's step 4"):
        run(shards, out, max_steps=2, lr=1e-2, resume=True, allow_schedule_change=True)


def test_every_schedule_option_is_guarded(shards, tmp_path):
    from pipeline.train.resume import check_resume, data_record
    from schemas.train_config import RESUME_SCHEDULE

    out = tmp_path / "run"
    run(shards, out, max_steps=2)
    ckpt = load_checkpoint(list_checkpoints(out)[-1])
    cfg = config(shards, out, max_steps=2, resume=True)
    for key in RESUME_SCHEDULE:
        old = dict(ckpt["config"])
        old[key] = "another value"
        with pytest.raises(ConfigError, match=f"{key}: checkpoint has 'another value'"):
            check_resume({**ckpt, "config": old}, cfg, world=1, data=data_record(shards), max_steps=2)
        allowed = cfg.model_copy(update={"allow_schedule_change": True})
        changes = check_resume({**ckpt, "config": old}, allowed, world=1, data=data_record(shards), max_steps=2)
        assert changes == {key: {"from": "another value", "to": cfg.model_dump(mode="json")[key]}}
    assert {"lr", "min_lr", "schedule", "warmup_steps", "max_steps", "epochs"} <= set(RESUME_SCHEDULE)


KILL_AT_FIRST_CHECKPOINT = """
import os, signal
import pipeline.train.checkpoint as checkpoint
checkpoint.save_checkpoint = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
"""


def test_run_killed_before_its_first_checkpoint_starts_again(shards, tmp_path):
    out = tmp_path / "run"
    killed = run_cli("train", "--data", str(shards), "--out", str(out), "--max-steps", "3", *FAST_FLAGS,
                     prelude=KILL_AT_FIRST_CHECKPOINT)
    assert killed.returncode == -9 and not list_checkpoints(out)
    before = losses(out)
    assert len(before) == 3
    with pytest.raises(ConfigError, match="run the same command without --resume to start it from step 0"):
        run(shards, out, max_steps=3, resume=True)
    run(shards, out, max_steps=3)  # a fresh start over it is allowed and starts clean
    assert [r["step"] for r in records(out) if "loss" in r] == [1, 2, 3] and losses(out) == before
    with pytest.raises(ConfigError, match="already holds a run .checkpoint step_0000003.pt."):
        run(shards, out, max_steps=3)
    shutil.rmtree(out / "checkpoints")  # a trained model without checkpoints is still a run: never overwritten
    with pytest.raises(ConfigError, match="already holds a run .a final model in final/."):
        run(shards, out, max_steps=3)


def test_torn_last_metrics_line_is_dropped(shards, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run(shards, full, max_steps=4, save_interval=2)
    copy_run_until(full, part, 2)
    lines = (full / "metrics.jsonl").read_text().splitlines(keepends=True)
    (part / "metrics.jsonl").write_text("".join(lines[:3]) + lines[3][:25])  # killed while writing step 4
    run(shards, part, max_steps=4, save_interval=2, resume=True)
    assert untimed_records(part) == untimed_records(full) and len(losses(full)) == 4


def test_corrupt_metrics_line_names_file_and_line(shards, tmp_path):
    out = tmp_path / "run"
    run(shards, out, max_steps=3)
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][:10] + "\n"
    (out / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(InputError, match=re.escape(f"{out / 'metrics.jsonl'}:2: not a metrics record")):
        run(shards, out, max_steps=3, resume=True)
    assert (out / "metrics.jsonl").read_text() == "".join(lines)  # left as it was
