"""Checkpoints: one file per save, `checkpoints/step_NNNNNNN.pt`, written to a temp file and renamed into place,
so a crash mid-save leaves the previous checkpoints intact. The newest `keep` are kept, and the best by eval loss
whatever its age: `checkpoints/best.json` says which step that is.

A checkpoint is one dict: model and optimizer state, the step (the LR schedule is a pure function of it), the data
position (global micro-batch index), every rank's RNG state, the number of ranks, the config, which data it was
trained on (`resume.data_record`), and the eval history early stopping needs (`early_stop.EvalTracker.state`): everything `--resume` needs to continue exactly or to say why it cannot.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import InputError
from pipeline.outputs import OwnedDir

_NAME = re.compile(r"^step_(\d+)\.pt$")
_KEYS = ("model", "optimizer", "step", "micro_batch", "rng", "config", "world_size", "data", "evals")
BEST = "best.json"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temp files are not listed)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: OwnedDir, state: dict[str, Any], *, step: int, keep: int, best: int | None = None) -> Path:
    """Write the checkpoint of `step` (recorded in the run directory's ledger first), then delete all but the newest
    `keep` and the one of step `best`."""
    folder = checkpoint_dir(run_dir.root)
    path = folder / checkpoint_name(step)
    run_dir.record(path.relative_to(run_dir.root).as_posix())
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir.root)[:-keep]:
        if old.name != checkpoint_name(best):
            run_dir.remove(old.relative_to(run_dir.root).as_posix())
    return path


def checkpoint_name(step: int | None) -> str | None:
    return None if step is None else f"step_{step:07d}.pt"


def write_best(run_dir: OwnedDir, *, step: int, eval_loss: float) -> None:
    """`checkpoints/best.json`: the step with the lowest eval loss so far, for people and scripts (the run itself
    reads it from the checkpoint)."""
    folder = checkpoint_dir(run_dir.root)
    run_dir.record((folder / BEST).relative_to(run_dir.root).as_posix())
    tmp = folder / f".{BEST}.tmp"
    tmp.write_text(json.dumps({"step": step, "eval_loss": eval_loss, "checkpoint": checkpoint_name(step)}) + "\n",
                   encoding="utf-8")
    os.replace(tmp, folder / BEST)


def load_model_state(run_dir: Path, step: int) -> dict[str, Any]:
    """The model weights of the checkpoint of `step`, memory-mapped: the optimizer state is not read."""
    path = checkpoint_dir(run_dir) / checkpoint_name(step)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise InputError(f"{path}: unreadable checkpoint: {e}") from None
    missing = [k for k in _KEYS if k not in state] if isinstance(state, dict) else list(_KEYS)
    if missing:
        raise InputError(f"{path}: not a checkpoint this trainer can resume exactly (no {', '.join(missing)}; "
                         "written by an older version?); start a new run in another --out")
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
