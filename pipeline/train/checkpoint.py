"""Checkpoints: one file per save, `checkpoints/step_NNNNNNN.pt`, written to a temp file and renamed into place,
so a crash mid-save leaves the previous checkpoints intact. The newest `keep` are kept.

A checkpoint is one dict: model and optimizer state, the step (the LR schedule is a pure function of it), the data
position (global micro-batch index), every rank's RNG state, the number of ranks, the config, and which data it was
trained on (`resume.data_record`): everything `--resume` needs to continue exactly or to say why it cannot.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import InputError

_NAME = re.compile(r"^step_(\d+)\.pt$")
_KEYS = ("model", "optimizer", "step", "micro_batch", "rng", "config", "world_size", "data")


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temp files are not listed)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: Path, state: dict[str, Any], *, step: int, keep: int) -> Path:
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.pt"
    tmp = folder / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


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
