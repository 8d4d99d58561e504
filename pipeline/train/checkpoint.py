"""Checkpoints: one file per save, `checkpoints/step_NNNNNNN.pt`, written to a temp file and renamed into place,
so a crash mid-save leaves the previous checkpoints intact. The newest `keep` are kept.

A checkpoint is one dict: model and optimizer state, the step (the LR schedule is a pure function of it), the data
position (global micro-batch index), every rank's RNG state, and the config.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import InputError
from pipeline.outputs import OwnedDir

_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temp files are not listed)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: OwnedDir, state: dict[str, Any], *, step: int, keep: int) -> Path:
    """Write the checkpoint of `step` (recorded in the run directory's ledger first) and prune the older ones."""
    folder = checkpoint_dir(run_dir.root)
    path = folder / f"step_{step:07d}.pt"
    run_dir.record(path.relative_to(run_dir.root).as_posix())
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir.root)[:-keep]:
        run_dir.remove(old.relative_to(run_dir.root).as_posix())
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise InputError(f"{path}: unreadable checkpoint: {e}") from None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
