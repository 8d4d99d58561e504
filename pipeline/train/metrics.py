"""Run outputs for people: `metrics.jsonl` (one line per logged step) and `loss.png`."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import InputError


class MetricsLog:
    """Appends one JSON line per record. Opening it rewrites the file with `keep`: nothing for a fresh run, the
    records up to the checkpoint's step on resume (`records_to_keep`), so a resumed run's file reads as if the run
    had never stopped."""

    def __init__(self, path: Path, *, keep: Sequence[dict[str, Any]] = ()):
        self.path = path
        tmp = path.with_name(f".{path.name}.tmp")  # a kill mid-rewrite leaves the old file whole
        tmp.write_text("".join(_line(r) for r in keep), encoding="utf-8")
        os.replace(tmp, path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(_line(record))

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records in `path` ([] when there is none). A last line that does not parse was torn by a kill mid-write
    and is dropped; a bad line anywhere else raises `InputError` naming the file and line."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not (isinstance(record, dict) and type(record.get("step")) is int):
                raise ValueError("no integer 'step'")
        except ValueError as e:  # also JSONDecodeError and UnicodeDecodeError
            if n == last:
                break
            raise InputError(f"{path}:{n}: not a metrics record ({e}); repair or delete that line to resume") from None
        records.append(record)
    return records


def records_to_keep(records: list[dict[str, Any]], *, step: int) -> list[dict[str, Any]]:
    """The records a run resumed at `step` keeps: those up to it, less the note of an earlier resume from that same
    step (that continuation is being replaced, and the new one writes its own note)."""
    return [r for r in records if r["step"] < step or (r["step"] == step and "resume_changes" not in r)]


def plot_losses(records: list[dict[str, Any]], path: Path, *, final_step: int | None = None) -> None:
    """Train and eval loss on the left axis, eval token accuracy on the right, and a line at the step `final/`
    holds when it is not the last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    accuracy = [(r["step"], r["eval_accuracy"]) for r in records if r.get("eval_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", markersize=4)
    if final_step is not None:
        ax.axvline(final_step, color="grey", linestyle=":", label=f"final/ (step {final_step})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over trained tokens)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if accuracy:
        right = ax.twinx()
        right.plot(*zip(*accuracy), "s--", color="tab:green", label="eval token accuracy", markersize=3)
        right.set_ylabel("eval token accuracy")
        right.set_ylim(0, 1)
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
