"""Token-weighted causal LM loss on unshifted labels.

A micro-batch contributes the SUM of its per-token losses; the optimizer step divides by the number of trained
tokens in the whole step (all micro-batches, all ranks). A mean of per-micro-batch means would weight a token in a
micro-batch with few trained tokens more than one in a busy micro-batch, which SFT masks make the usual case.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.train.data import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropy over trained positions. Labels are unshifted: position t's logits predict label t+1."""
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def trained_count(labels: torch.Tensor) -> int:
    """Positions whose shifted label is trained: the loss denominator's share of this batch."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
