"""Token-weighted causal LM loss on unshifted labels, computed at the trained positions only, and the eval counts
beside it.

A micro-batch contributes the SUM of its per-token losses; the optimizer step divides by the number of trained
tokens in the whole step (all micro-batches, all ranks). A mean of per-micro-batch means would weight a token in a
micro-batch with few trained tokens more than one in a busy micro-batch, which SFT masks make the usual case.

The LM head's logits are the largest tensors of a step: positions x vocabulary, and their gradient as large again
(4 rows of 1,024 tokens and a 151,665-token vocabulary: 2.5 GB each in fp32). `TrainedTokenLoss` runs the model body
to its final hidden states, keeps the positions whose shifted label is trained, and applies the head and the
cross-entropy `CHUNK` positions at a time, computing each chunk's gradient at once (as Liger's fused linear
cross-entropy does), so only one chunk's logits ever exist. A model whose logits are more than a linear head on the
final hidden states (a soft-cap, a scale) keeps the full logits.

Evaluation reduces sums and counts the same way (loss sum, correct predictions, trained positions), so eval loss and
token accuracy are means over every trained eval token, however the tokens fall into batches and ranks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from pipeline.shards.format import IGNORE_INDEX

CHUNK = 1024  # positions per head + cross-entropy chunk: 620 MB of fp32 logits at a 151,665-token vocabulary
# Model types whose causal-LM forward is exactly `lm_head(decoder(...).last_hidden_state)` (checked in their
# transformers sources). Others, e.g. gemma2/3 (logit soft-cap), cohere (logit scale), granite (logit scaling),
# fall back to the full logits.
PLAIN_HEAD_MODEL_TYPES = frozenset({
    "deepseek_v3", "gemma", "glm", "glm4", "llama", "mistral", "mixtral", "olmo", "olmo2", "phi", "phi3", "qwen2",
    "qwen2_moe", "qwen3", "qwen3_moe", "smollm3", "starcoder2",
})


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


class TrainedTokenLoss(nn.Module):
    """The model and its loss as one module, returning the summed cross-entropy over a batch's trained positions.

    One module so that DDP wraps the whole computation: the body, the gather and the chunked head all run inside
    DDP's forward, which its gradient all-reduce needs. `model` may be a peft model (LoRA)."""

    def __init__(self, model: nn.Module, *, chunk: int = CHUNK):
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.full_logits_reason = full_logits_reason(model)  # None: the chunked loss applies

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if self.full_logits_reason is not None:
            return token_loss_sum(self.model(**inputs).logits, labels)
        hidden, targets, head = self._trained_hidden(inputs, labels)
        return linear_cross_entropy(hidden, head.weight, head.bias, targets, chunk=self.chunk)

    @torch.no_grad()
    def eval_sums(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss sum, correct, trained) over the batch's trained positions, as `token_eval_sums` computes them from
        full logits, but with the head applied in chunks at the trained positions only."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if self.full_logits_reason is not None:
            return token_eval_sums(self.model(**inputs).logits, labels)
        hidden, targets, head = self._trained_hidden(inputs, labels)
        loss, correct = _eval_chunks(hidden, head.weight, head.bias, targets, self.chunk)
        return loss, correct, torch.tensor(targets.numel(), device=hidden.device)

    def _trained_hidden(self, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
        """The final hidden states at the positions whose shifted label is trained, those labels, and the LM head."""
        causal_lm = _causal_lm(self.model)
        hidden = causal_lm.get_decoder()(**inputs).last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(hidden.device)
        trained = targets != IGNORE_INDEX
        return hidden[trained], targets[trained], causal_lm.get_output_embeddings()


def full_logits_reason(model: nn.Module) -> str | None:
    """Why `model`'s loss needs its full logits, or None when the chunked loss computes the same."""
    causal_lm = _causal_lm(model)
    model_type = getattr(getattr(causal_lm, "config", None), "model_type", None)
    if model_type not in PLAIN_HEAD_MODEL_TYPES:
        return (f"model type {model_type!r} is not one whose logits are known to be a plain linear head on the "
                "final hidden states")
    head = causal_lm.get_output_embeddings()
    if type(head) is not nn.Linear:
        return f"its LM head is a {type(head).__name__}, not a plain linear layer"
    return None


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (the LoRA layers are inside it), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, *, chunk: int = CHUNK) -> torch.Tensor:
    """sum_i cross_entropy(hidden[i] @ weight.T + bias, targets[i]), with the logits `chunk` rows at a time, in fp32.

    With gradients wanted, each chunk's gradient is computed right after its logits and the logits freed; backward
    only scales the stored gradients. Without (evaluation), only the loss is computed."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk)
    return _chunked(hidden, weight, bias, targets, chunk, need=(False, False, False))[0]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        loss, *grads = _chunked(hidden, weight, bias, targets, chunk, need=tuple(ctx.needs_input_grad[:3]))
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grads = [None if g is None else g.mul_(grad_loss) for g in ctx.saved_tensors]  # the loss is a plain sum
        return *grads, None, None


def _eval_chunks(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                 chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss sum and the number of positions whose argmax is the target, one chunk of logits at a time."""
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
    for start in range(0, hidden.size(0), chunk):
        logits = F.linear(hidden[start:start + chunk], weight, bias).float()
        t = targets[start:start + chunk]
        loss += F.cross_entropy(logits, t, reduction="sum")
        correct += (logits.argmax(dim=-1) == t).sum()
    return loss, correct


def _chunked(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
             chunk: int, *, need: tuple[bool, bool, bool]):
    """The loss sum and, where `need` says (hidden, weight, bias), its gradients; logits live one chunk at a time.
    Matmuls run in the ambient autocast dtype, as the model's own head would; softmax and sums in fp32."""
    need_hidden, need_weight, need_bias = need
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
    grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
    targets = targets.to(hidden.device)
    for start in range(0, hidden.size(0), chunk):
        h, t = hidden[start:start + chunk], targets[start:start + chunk]
        out = F.linear(h, weight, bias)
        logits = out.float()
        del out
        # log-sum-exp and softmax in place in the one logits buffer: no second chunk-sized tensor
        target_logit = logits.gather(1, t[:, None])
        top = logits.amax(dim=-1, keepdim=True)
        exp = logits.sub_(top).exp_()
        total = exp.sum(dim=-1, keepdim=True)
        loss += (total.log() + top - target_logit).sum()
        if not any(need):
            continue
        grad = exp.div_(total)  # d loss / d logits = softmax - one_hot
        grad[torch.arange(t.size(0), device=t.device), t] -= 1
        if need_hidden:
            grad_hidden[start:start + chunk] = grad.to(weight.dtype) @ weight
        if need_weight:
            grad_weight += grad.t().to(h.dtype) @ h
        if need_bias:
            grad_bias += grad.sum(0)
    return (loss,
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype))
