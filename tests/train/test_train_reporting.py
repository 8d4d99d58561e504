"""Logs where people look: progress lines on stderr when it is not a terminal, TensorBoard event files (an optional
dependency, refused clearly when missing), metrics.jsonl beside them."""
from __future__ import annotations

import io
import json
import re

import pytest
import torch

from pipeline.train.loop import train
from pipeline.train.reporter import Reporter
from schemas.train_config import load_train_config
from tests.train.train_helpers import run_cli, write_shards

FAST = {"tiny_hidden": 32, "tiny_heads": 2, "batch_size": 4, "lr": 3e-3, "min_lr": 3e-4}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=24, n_eval=4, tokenizer=True)


def run(shards, out, **kw):
    torch.set_num_threads(1)
    return train(load_train_config(overrides={"data": str(shards), "out": str(out), **FAST, **kw}))


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_progress_lines_on_stderr_when_not_a_terminal(shards, tmp_path, capsys):
    out = tmp_path / "run"
    run(shards, out, max_steps=7, log_interval=3, eval_interval=4)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: ")]
    logged = [r["step"] for r in records(out)]
    assert logged == [1, 3, 4, 6, 7, 7]  # every log_interval, the first and last steps, evaluations, the end
    assert [int(re.match(r"train: step (\d+)/7", line).group(1)) for line in lines] == logged
    step4 = next(line for line in lines if line.startswith("train: step 4/7"))
    eval4 = next(r for r in records(out) if r["step"] == 4)
    assert f"loss {eval4['loss']:.4f}" in step4 and f"eval loss {eval4['eval_loss']:.4f}" in step4
    assert f"eval accuracy {eval4['eval_accuracy']:.1%}" in step4 and "eta " in step4


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_bar_not_lines(tmp_path):
    stream = Terminal()
    reporter = Reporter(tmp_path, keep=[], report_to="none", step=0, max_steps=4, stream=stream)
    reporter.log({"step": 1, "loss": 2.5, "lr": 1e-3})
    reporter.advance()
    reporter.close()
    assert "train: step" not in stream.getvalue() and "1/4" in stream.getvalue()
    assert records(tmp_path) == [{"step": 1, "loss": 2.5, "lr": 1e-3}]


def scalars(out, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_event_files_match_metrics(shards, tmp_path):
    pytest.importorskip("tensorboard")  # the optional extra; `make test` installs it
    out = tmp_path / "run"
    run(shards, out, max_steps=4, eval_interval=2, save_interval=2, report_to="tensorboard")
    trained = [(r["step"], r["loss"]) for r in records(out) if "loss" in r]
    evals = [(r["step"], r["eval_loss"], r["eval_accuracy"]) for r in records(out) if "eval_loss" in r]
    assert [s for s, _ in scalars(out, "train/loss")] == [s for s, _ in trained] == [1, 2, 3, 4]
    assert [v for _, v in scalars(out, "train/loss")] == pytest.approx([v for _, v in trained])
    for tag, column in (("eval/loss", 1), ("eval/accuracy", 2)):
        logged = scalars(out, tag)
        assert [s for s, _ in logged] == [e[0] for e in evals] == [2, 4]
        assert [v for _, v in logged] == pytest.approx([e[column] for e in evals])
    assert [s for s, _ in scalars(out, "train/lr")] == [1, 2, 3, 4]
    # resumed from step 2: what the first attempt logged after step 2 is hidden, as metrics.jsonl drops it
    (out / "checkpoints" / "step_0000004.pt").unlink()
    run(shards, out, max_steps=4, eval_interval=2, save_interval=2, report_to="tensorboard", resume=True)
    assert [s for s, _ in scalars(out, "train/loss")] == [1, 2, 3, 4]
    assert [v for _, v in scalars(out, "train/loss")] == pytest.approx([v for _, v in trained])


def test_tensorboard_missing_is_a_clear_usage_error(shards, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(shards), "--out", str(out), "--max-steps", "2", "--report-to",
                   "tensorboard", prelude="import sys\nsys.modules['tensorboard'] = None\n")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "report_to: 'tensorboard' needs the tensorboard package" in proc.stderr
    assert "pip install 'chatshard[tensorboard]'" in proc.stderr and not out.exists()
