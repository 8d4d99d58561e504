"""The run directory (`--out`): what the trainer writes there, claimed before anything is written."""
from __future__ import annotations

from pathlib import Path

from pipeline.outputs import OwnedDir, claim
from pipeline.storage import is_url
from schemas.train_config import TrainConfig

# Everything a run creates or replaces in its directory; `adapter/` and `ranks/` too when LoRA and per-rank logs are
# asked for, and `tensorboard/` (a folder only the run fills) with TensorBoard.
RUN_PATHS = ("config.json", "metrics.jsonl", "loss.png", "checkpoints", "final")


def claim_run_dir(cfg: TrainConfig, *, world: int, writer: bool) -> OwnedDir:
    """`cfg.out` as a run directory: new, empty, or a run of this tool, apart from the shards and the model it
    reads. Every rank checks; only the `writer` (rank 0) creates it and records what the ranks will write."""
    inputs = [*([Path(cfg.data)] if not is_url(cfg.data) else []), *([Path(cfg.model)] if cfg.model != "tiny" else [])]
    adapter = ["adapter"] if cfg.lora else []
    ranks = [f"ranks/rank{r}.jsonl" for r in range(world)] if cfg.rank_log else []
    run_dir = claim(cfg.out, "run", inputs=inputs, writes=[*RUN_PATHS, *adapter, *ranks], writer=writer)
    if writer and cfg.report_to == "tensorboard":
        run_dir.scratch("tensorboard")  # SummaryWriter names its event files itself: the folder is ours as a whole
    return run_dir
