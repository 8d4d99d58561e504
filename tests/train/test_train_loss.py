"""The loss: token-weighted over the whole optimizer step, shifted inside, and identical packed or padded."""
from __future__ import annotations

import math

import pytest
import torch
from train_helpers import write_shards

from pipeline.train.data import collate, open_shards
from pipeline.train.loop import micro_steps
from pipeline.train.loss import token_loss_sum
from pipeline.train.lr import lr_at


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return open_shards(write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=16, n_eval=0)).splits["train"]


def tiny_model(attn: str = "sdpa", seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, use_cache=False)
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def grads_of(model, batches):
    model.zero_grad(set_to_none=True)
    total = torch.tensor(float(sum(b.trained for b in batches)), dtype=torch.float64)
    loss_sum = micro_steps(model, batches, trained_total=total, world=1, device=torch.device("cpu"))
    return (loss_sum / total).item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_accumulation_of_4_equals_one_batch(split):
    model = tiny_model()
    samples = [[0, 1], [2], [3, 4, 5], [6]]  # 4 micro-batches of unequal sizes
    micro = [collate(split, [[i] for i in group], pad_id=0, packing=False) for group in samples]
    trained = [b.trained for b in micro]
    assert len(set(trained)) > 1  # the micro-batches train different numbers of tokens
    whole = collate(split, [[i] for group in samples for i in group], pad_id=0, packing=False)
    loss_a, grads_a = grads_of(model, micro)
    loss_b, grads_b = grads_of(model, [whole])
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    # and it is not the mean of per-micro-batch means
    means = [token_loss_sum(model(**b.model_inputs(torch.device("cpu"))).logits, b.labels).item() / b.trained
             for b in micro]
    assert abs(sum(means) / len(means) - loss_b) > 1e-4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked(split, attn):
    model = tiny_model(attn).eval()
    rows = [[0, 1, 2], [3, 4]]
    packed = collate(split, rows, pad_id=0, packing=True)
    padded = collate(split, [[i] for row in rows for i in row], pad_id=0, packing=False)
    assert packed.trained == padded.trained
    with torch.no_grad():
        cpu = torch.device("cpu")
        a = token_loss_sum(model(**packed.model_inputs(cpu)).logits, packed.labels) / packed.trained
        b = token_loss_sum(model(**padded.model_inputs(cpu)).logits, padded.labels) / padded.trained
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_shift_inside_the_loss():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 0, 2] = 10.0  # position 0 predicts token 2 ...
    labels = torch.tensor([[-100, 2, -100]])  # ... which is the (unshifted) label at position 1
    assert token_loss_sum(logits, labels).item() < 1e-6


def test_lr_schedule():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=20)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(12, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(20, **kw) == 0.1 and lr_at(10, **kw, schedule="constant") == 1.0
    assert all(lr_at(s, **kw) >= lr_at(s + 1, **kw) for s in range(4, 25))
