"""The learning rate as a pure function of the optimizer step: linear warmup, then cosine or linear decay down to a
floor, or constant."""
from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int, schedule: str = "cosine") -> float:
    """LR for optimizer step `step` (0-based). Warmup reaches `lr` at its last step; `cosine` and `linear` reach
    `min_lr` at `max_steps` (`linear` with `min_lr` 0 is the Hugging Face Trainer's default decay); `constant` keeps
    `lr` after warmup."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    if schedule == "linear":
        return min_lr + (1.0 - progress) * (lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
