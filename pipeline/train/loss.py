"""Token-weighted causal LM loss on unshifted labels, and the eval counts beside it.

A micro-batch contributes the SUM of its per-token losses; the optimizer step divides by the number of trained
tokens in the whole step (all micro-batches, all ranks). A mean of per-micro-batch means would weight a token in a
micro-batch with few trained tokens more than one in a busy micro-batch, which SFT masks make the usual case.
Evaluation reduces sums and counts the same way (loss sum, correct predictions, trained positions), so eval loss and
token accuracy are means over every trained eval token, however the tokens fall into batches and ranks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.train.data import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropy over trained positions. Labels are unshifted: position t's logits predict label t+1."""
    logits, targets = _shifted(logits, labels)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def token_eval_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss sum, correct, trained) over trained positions, shifted as the loss is: `correct` counts the positions
    whose argmax is the next label. Sums, not means, so they add up over batches and ranks."""
    logits, targets = _shifted(logits, labels)
    trained = targets != IGNORE_INDEX
    loss_sum = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = (logits.argmax(dim=-1) == targets) & trained
    return loss_sum, correct.sum(), trained.sum()


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat fp32 logits of positions 0..T-2 and the labels they predict (positions 1..T-1)."""
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    return logits.reshape(-1, logits.size(-1)), targets.reshape(-1)


def trained_count(labels: torch.Tensor) -> int:
    """Positions whose shifted label is trained: the loss denominator's share of this batch."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
