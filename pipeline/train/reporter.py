"""Where a run's numbers go, on rank 0: `metrics.jsonl` always, TensorBoard event files when asked for, and stderr:
a tqdm bar on a terminal, else one progress line per logged step (CI logs, `nohup`, a pipe, a cluster's log file).

The loop hands every record to `Reporter.log` once; what each sink does with it is decided here.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from pipeline.errors import ConfigError
from pipeline.train.metrics import MetricsLog

TENSORBOARD_DIR = "tensorboard"
_NOT_SCALARS = ("step",)
# What a progress line shows of a record, in this order, where the record has it.
_LINE_FIELDS = (("epoch", "epoch {:.2f}"), ("loss", "loss {:.4f}"), ("eval_loss", "eval loss {:.4f}"),
                ("eval_accuracy", "eval accuracy {:.1%}"), ("lr", "lr {:.2e}"), ("tokens_per_s", "{:,.0f} tokens/s"))


def check_report_to(report_to: str) -> None:
    """Refuse, before any work, a report target whose package is not installed (every rank calls this, so none
    of them starts training alone)."""
    if report_to != "tensorboard":
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports the tensorboard package)
    except ImportError:
        raise ConfigError(["report_to: 'tensorboard' needs the tensorboard package: "
                           "pip install 'chatshard[tensorboard]' (or pip install tensorboard)"]) from None


class Reporter:
    """Rank 0's outputs for one run. `step` is where the run starts (a checkpoint's step on resume): the bar starts
    there, and TensorBoard hides the events an earlier attempt logged after it, as `metrics.jsonl` drops them."""

    def __init__(self, out: Path, *, keep: Sequence[dict[str, Any]], report_to: str, step: int, max_steps: int,
                 stream: TextIO | None = None):
        self.metrics = MetricsLog(out / "metrics.jsonl", keep=keep)
        self.stream = stream if stream is not None else sys.stderr
        self.max_steps = max_steps
        self.start_step, self.start_time = step, time.perf_counter()
        self.lines = not self.stream.isatty()
        self.bar = tqdm(total=max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                        file=self.stream, disable=self.lines)
        self.tensorboard = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # events after `step` logged by an earlier attempt are hidden (purge_step: from that step on)
            self.tensorboard = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR), purge_step=step + 1 if step else None)

    def log(self, record: dict[str, Any]) -> None:
        """One logged step (or evaluation): a metrics.jsonl line, TensorBoard scalars, the bar or a progress line."""
        self.metrics.write(record)
        step = record["step"]
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in _NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(_tag(key), value, step)
        if self.lines:
            print(self._line(record), file=self.stream, flush=True)
        else:
            self.bar.set_postfix(_postfix(record))

    def note(self, record: dict[str, Any]) -> None:
        """A record for metrics.jsonl alone (a resume's schedule changes)."""
        self.metrics.write(record)

    def advance(self) -> None:
        """One optimizer step done."""
        self.bar.update(1)

    def read(self) -> list[dict[str, Any]]:
        return self.metrics.read()

    def close(self) -> None:
        self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _line(self, record: dict[str, Any]) -> str:
        step = record["step"]
        parts = [f"step {step}/{self.max_steps}"]
        parts += [form.format(record[key]) for key, form in _LINE_FIELDS if key in record]
        elapsed = time.perf_counter() - self.start_time
        done = step - self.start_step
        parts.append(f"elapsed {_clock(elapsed)}")
        if 0 < done and step < self.max_steps:
            parts.append(f"eta {_clock(elapsed / done * (self.max_steps - step))}")
        return "train: " + " | ".join(parts)


def _tag(key: str) -> str:
    """TensorBoard groups by the part before '/': eval_loss -> eval/loss, grad_norm -> train/grad_norm."""
    return f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    shown = {"loss": "{:.4f}", "lr": "{:.2e}", "eval_loss": "{:.4f}", "eval_accuracy": "{:.1%}"}
    return {key: fmt.format(record[key]) for key, fmt in shown.items() if key in record}


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
