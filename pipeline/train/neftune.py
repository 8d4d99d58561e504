"""NEFTune (Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"): uniform noise on the
input embeddings in training forwards.

transformers' and TRL's `neftune_post_forward_hook` scale the noise by alpha / sqrt(L * d) with L the width of the
whole (padded or packed) row, so a short sample padded beside a long one, or packed into a long row, gets the noise
of the long one. Here L is each sample's own length: every position gets alpha / sqrt(L * d) of its sample, which is
the paper's scale for one unpadded sample. Padding gets no noise.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class NEFTune:
    """A forward hook on the input embeddings. Training forwards run inside `sample_lengths(...)`, which tells the
    hook each position's sample length; a forward in eval mode adds nothing and needs no lengths."""

    def __init__(self, embeddings: nn.Module, alpha: float):
        self.alpha = alpha
        self._lengths: torch.Tensor | None = None
        embeddings.register_forward_hook(self._add_noise)

    @contextmanager
    def sample_lengths(self, lengths: torch.Tensor) -> Iterator[None]:
        """Forwards inside this block belong to a batch whose positions have these sample lengths (0: padding)."""
        self._lengths = lengths
        try:
            yield
        finally:
            self._lengths = None

    def _add_noise(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None  # output unchanged
        if self._lengths is None:
            raise RuntimeError("NEFTune: a training forward without the batch's sample lengths "
                               "(run it inside NEFTune.sample_lengths)")
        if self._lengths.shape != output.shape[:-1]:
            raise RuntimeError(f"NEFTune: sample lengths of shape {tuple(self._lengths.shape)} for embeddings of "
                               f"shape {tuple(output.shape)}")
        lengths = self._lengths.to(output.device, torch.float32)
        scale = torch.where(lengths > 0, self.alpha / (lengths * output.size(-1)).sqrt(), 0.0)
        noise = torch.empty(output.shape, dtype=torch.float32, device=output.device).uniform_(-1, 1)
        return output + (noise * scale[..., None]).to(output.dtype)  # the embeddings' dtype: fp32 or bf16
