"""The best eval loss so far, and early stopping on it.

Every evaluation is offered to one `EvalTracker`: it remembers the lowest eval loss and its step (the checkpoint to
keep, and what `final/` holds with `final: best`), and counts evaluations since the last improvement. An
improvement is a drop of more than `min_delta` below the best so far, as in transformers' EarlyStoppingCallback,
Keras and Lightning; the run stops once `patience` evaluations in a row brought none. A drop smaller than
`min_delta` still makes a new best checkpoint, but does not reset the count. The state goes into every checkpoint, so a resumed run stops
where the uninterrupted one would have.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EvalTracker:
    patience: int | None = None  # None: never stop early, only track the best
    min_delta: float = 0.0
    best_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    last_eval_step: int | None = None  # the step of the latest evaluation: a resumed run does not repeat it

    def update(self, step: int, loss: float) -> bool:
        """Record the evaluation at `step`; True when its loss is the lowest so far (its checkpoint is the best)."""
        self.last_eval_step = step
        improved = self.best_loss is None or loss < self.best_loss - self.min_delta
        self.evals_without_improvement = 0 if improved else self.evals_without_improvement + 1
        if self.best_loss is not None and loss >= self.best_loss:
            return False
        self.best_loss, self.best_step = loss, step
        return True

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evals_without_improvement >= self.patience

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (the options come from the run's config, which resume checks)."""
        return {k: v for k, v in asdict(self).items() if k not in ("patience", "min_delta")}

    @classmethod
    def restore(cls, state: dict[str, Any], *, patience: int | None, min_delta: float) -> "EvalTracker":
        return cls(patience=patience, min_delta=min_delta, **state)
