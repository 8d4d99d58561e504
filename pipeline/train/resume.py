"""Whether this run may continue a checkpoint exactly: the same number of ranks, the same data, the options that fix
the model and data order, and the schedule unless the user allowed a change. Every rank runs the check before the
model is built, so a refusal stops them all with one message listing every mismatch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.storage import is_url
from schemas.train_config import RESUME_FIXED, RESUME_SCHEDULE, TrainConfig


def data_record(path: Path | str, local: Path | None = None) -> dict[str, str]:
    """Which shards a run reads (`path` as given; `local` where they were opened, for a URL its cached copy). The
    manifest lists every shard's checksum, so its own sha256 tells the data apart (the same shards moved elsewhere
    keep it); the path (resolved, when local) is only for messages."""
    shown = str(path) if is_url(path) else str(Path(path).resolve())
    manifest = Path(local or path) / "manifest.json"
    return {"path": shown, "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()}


def check_resume(ckpt: dict[str, Any], cfg: TrainConfig, *, world: int, data: dict[str, str],
                 max_steps: int) -> dict[str, dict[str, Any]]:
    """The schedule options this run changes, `{key: {"from": old, "to": new}}` (allowed by
    `allow_schedule_change`); raises `ConfigError` naming each reason the checkpoint cannot be continued exactly."""
    old, new = ckpt["config"], cfg.model_dump(mode="json")
    problems = []
    if ckpt["world_size"] != world:
        problems.append(f"world size: the checkpoint was written by {ckpt['world_size']} rank(s), this run has "
                        f"{world}; resume with {ckpt['world_size']} (each step's batch, the ranks' shares of it and "
                        "their RNG states depend on it)")
    if ckpt["data"]["manifest_sha256"] != data["manifest_sha256"]:
        problems.append(f"data: the checkpoint was trained on {ckpt['data']['path']} (manifest.json sha256 "
                        f"{ckpt['data']['manifest_sha256'][:12]}), this run reads {data['path']} (sha256 "
                        f"{data['manifest_sha256'][:12]}); resume with the checkpoint's --data, or start a new run "
                        "in another --out")
    fixed = _changes(old, new, RESUME_FIXED)
    if fixed:
        problems += ["resume needs the checkpoint's values for these options:", *_describe(fixed)]
    changed = _changes(old, new, RESUME_SCHEDULE)
    if changed and not cfg.allow_schedule_change:
        problems += ["resume keeps the checkpoint's schedule; pass --allow-schedule-change to change these (the "
                     "change is noted in metrics.jsonl):", *_describe(changed)]
    if max_steps < ckpt["step"]:
        problems.append(f"max_steps: the run's length ({max_steps} steps) is below the checkpoint's step "
                        f"{ckpt['step']}")
    if problems:
        raise ConfigError(problems)
    return changed


def _changes(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {k: {"from": old.get(k), "to": new[k]} for k in keys if new[k] != old.get(k)}


def _describe(changes: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{k}: checkpoint has {c['from']!r}, this run has {c['to']!r}" for k, c in changes.items()]
