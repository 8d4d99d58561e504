"""The learning rate as a pure function of the optimizer step: linear warmup, then cosine down to a floor."""
from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int, schedule: str = "cosine") -> float:
    """LR for optimizer step `step` (0-based). Warmup reaches `lr` at its last step; cosine reaches `min_lr` at
    `max_steps`; `constant` keeps `lr` after warmup."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
