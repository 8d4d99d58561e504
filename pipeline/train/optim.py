"""The optimizer: torch's AdamW (fused on CUDA), or bitsandbytes' 8-bit or paged AdamW, with the same parameter
groups (weight decay on matrices and embeddings only, not on norms and biases), betas and learning rate.

8-bit AdamW keeps both moments in 8 bits (blockwise quantized; tensors under 4,096 values stay 32-bit): about a
quarter of AdamW's state memory. Paged variants keep the state in CUDA unified memory, which spills to the host
instead of running out of GPU memory on a spike; on the CPU bitsandbytes runs them unpaged.
"""
from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from schemas.train_config import TrainConfig

BNB_OPTIMIZERS = {"paged_adamw_32bit": "PagedAdamW32bit", "paged_adamw_8bit": "PagedAdamW8bit",
                  "adamw_8bit": "AdamW8bit"}  # `optim` value -> class in bitsandbytes.optim


def require_bitsandbytes(cfg: TrainConfig) -> None:
    """bitsandbytes (the optional `qlora` extra) backs `quantize` and every optimizer but `adamw`: say so before any
    data or model is loaded, rather than fail on an import halfway through."""
    wanted = ([f"quantize {cfg.quantize!r}"] if cfg.quantize != "none" else []) + (
        [f"optim {cfg.optim!r}"] if cfg.optim in BNB_OPTIMIZERS else [])
    if not wanted:
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError([f"{' and '.join(wanted)}: needs bitsandbytes, which is not installed; install it with "
                           "pip install 'chatshard[qlora]'"]) from None


def build_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], *, fused: bool) -> torch.optim.Optimizer:
    """`cfg.optim` over the trained `params`; `fused` (torch's AdamW only) on CUDA."""
    decay = [p for p in params if p.dim() >= 2]  # matrices and embeddings; not norms or biases
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optim == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=fused or None)
    import bitsandbytes

    return getattr(bitsandbytes.optim, BNB_OPTIMIZERS[cfg.optim])(groups, lr=cfg.lr, betas=betas)
