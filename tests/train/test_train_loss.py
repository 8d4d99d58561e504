"""The loss: token-weighted over the whole optimizer step, shifted inside, identical packed or padded, and computed
at the trained positions only (chunked head and cross-entropy) with the same value and gradients as the full logits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.data import collate, open_training_shards
from pipeline.train.loop import micro_steps
from pipeline.train.loss import TrainedTokenLoss, linear_cross_entropy, token_eval_sums, token_loss_sum
from pipeline.train.lr import lr_at
from tests.train.train_helpers import tiny_model, write_shards

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    path = write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=16, n_eval=0)
    return open_training_shards(path).splits["train"]


def grads_of(model, batches):
    model.zero_grad(set_to_none=True)
    total = torch.tensor(float(sum(b.trained for b in batches)), dtype=torch.float64)
    loss_sum = micro_steps(TrainedTokenLoss(model), batches, trained_total=total, world=1, device=CPU)
    return (loss_sum / total).item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def loss_and_grads(model, compute):
    """`compute()`'s loss and the gradients it leaves on the model's trainable parameters."""
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def full_logits_loss(model, batch):
    """The reference: the model's own forward, logits at every position, cross-entropy where trained."""
    return token_loss_sum(model(**batch.model_inputs(CPU)).logits, batch.labels)


def assert_same_loss_and_grads(model, batch, chunked: TrainedTokenLoss):
    loss_a, grads_a = loss_and_grads(model, lambda: full_logits_loss(model, batch))
    loss_b, grads_b = loss_and_grads(model, lambda: chunked(**batch.model_inputs(CPU), labels=batch.labels))
    assert abs(loss_a - loss_b) / batch.trained < 1e-5  # per trained token, in fp32
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


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
    means = [full_logits_loss(model, b).item() / b.trained for b in micro]
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


@pytest.mark.parametrize("arch, tied", [("llama", False), ("qwen2", True)])
@pytest.mark.parametrize("packing", [False, True])
def test_chunked_loss_equals_full_logits(split, arch, tied, packing):
    model = tiny_model(arch=arch, tied=tied)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    rows = [[0, 1, 2], [3, 4]] if packing else [[i] for i in range(5)]
    batch = collate(split, rows, pad_id=0, packing=packing)
    assert batch.trained > 16  # several chunks of 16 positions, the last one partial
    chunked = TrainedTokenLoss(model, chunk=16)
    assert chunked.full_logits_reason is None
    head_calls = []
    model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
    assert_same_loss_and_grads(model, batch, chunked)
    assert len(head_calls) == 1  # the reference's call: the chunked loss never runs the head on every position


@pytest.mark.parametrize("packing", [False, True])
def test_chunked_eval_sums_equal_the_full_logits_ones(split, packing):
    """Evaluation's loss sum, correct count and trained count from the chunked head equal those from full logits."""
    model = tiny_model()
    rows = [[0, 1, 2], [3, 4]] if packing else [[i] for i in range(5)]
    batch = collate(split, rows, pad_id=0, packing=packing)
    with torch.no_grad():
        reference = token_eval_sums(model(**batch.model_inputs(CPU)).logits, batch.labels)
    chunked = TrainedTokenLoss(model, chunk=16).eval_sums(**batch.model_inputs(CPU), labels=batch.labels)
    assert abs(chunked[0].item() - reference[0].item()) / batch.trained < 1e-5
    assert (chunked[1].item(), chunked[2].item()) == (reference[1].item(), reference[2].item())
    assert chunked[2].item() == batch.trained


def test_chunked_loss_with_lora_and_gradient_checkpointing(split):
    from peft import LoraConfig, get_peft_model

    model = tiny_model(arch="qwen2", tied=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False))  # random B: every LoRA weight has a gradient
    model.train()
    batch = collate(split, [[i] for i in range(4)], pad_id=0, packing=False)
    chunked = TrainedTokenLoss(model, chunk=16)
    assert chunked.full_logits_reason is None
    assert_same_loss_and_grads(model, batch, chunked)


def test_chunked_loss_under_bf16_autocast(split):
    """As the trainer runs on CUDA with bf16 (CPU autocast stands in): head matmuls in bf16, softmax and sums fp32."""
    model = tiny_model(arch="qwen2", tied=True)
    batch = collate(split, [[i] for i in range(5)], pad_id=0, packing=False)
    chunked = TrainedTokenLoss(model, chunk=16)

    def under_autocast(compute):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compute()
        assert loss.dtype == torch.float32
        return loss

    loss_a, grads_a = loss_and_grads(model, lambda: under_autocast(lambda: full_logits_loss(model, batch)))
    loss_b, grads_b = loss_and_grads(model, lambda: under_autocast(
        lambda: chunked(**batch.model_inputs(CPU), labels=batch.labels)))
    assert loss_b == pytest.approx(loss_a, rel=1e-4)
    for name in grads_a:  # the reference rounds the head's gradient to bf16; the chunks accumulate it in fp32
        assert (grads_b[name] - grads_a[name]).norm() <= 1e-2 * grads_a[name].norm(), name


def test_soft_capped_logits_fall_back_to_full_logits(split):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                           final_logit_softcapping=1.0, use_cache=False))
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # logits well beyond the cap, so that it changes the loss
    chunked = TrainedTokenLoss(model)
    assert "gemma2" in chunked.full_logits_reason
    batch = collate(split, [[0], [1]], pad_id=0, packing=False)
    assert_same_loss_and_grads(model, batch, chunked)
    # the soft-cap matters here: a plain linear head on the final hidden states gives another loss
    with torch.no_grad():
        hidden = model.get_decoder()(**batch.model_inputs(CPU)).last_hidden_state[:, :-1]
        trained = batch.labels[:, 1:] != -100
        plain = linear_cross_entropy(hidden[trained], model.lm_head.weight, None, batch.labels[:, 1:][trained])
        assert abs(plain.item() - full_logits_loss(model, batch).item()) > 1.0


@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("frozen_head", [False, True])
def test_linear_cross_entropy_matches_the_reference(chunk, frozen_head):
    torch.manual_seed(0)
    hidden = torch.randn(13, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=not frozen_head)
    bias = torch.randn(20, requires_grad=not frozen_head)
    targets = torch.randint(0, 20, (13,))
    ref = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 2.5, [t for t in (hidden, weight, bias) if t.requires_grad])
    got = linear_cross_entropy(hidden, weight, bias, targets, chunk=chunk)
    got_grads = torch.autograd.grad(got * 2.5, [t for t in (hidden, weight, bias) if t.requires_grad])
    torch.testing.assert_close(got, ref)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # evaluation: the same value, no gradient work
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, bias, targets, chunk=chunk), ref)
    empty = linear_cross_entropy(hidden[:0], weight, bias, targets[:0], chunk=chunk)  # no trained position
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(hidden.grad, torch.zeros_like(hidden))


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


@pytest.mark.parametrize("warmup", [0, 5])
def test_linear_schedule_is_transformers_linear_decay(warmup):
    """`schedule: linear` with `min_lr: 0` is the HF Trainer's default schedule after warmup (the warmup itself
    reaches the peak one step sooner here); `min_lr` is its floor otherwise."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    hf = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=30)
    expected = []
    for _ in range(32):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        hf.step()
    ours = [lr_at(s, lr=5e-4, min_lr=0.0, warmup_steps=warmup, max_steps=30, schedule="linear") for s in range(32)]
    assert ours[warmup:] == pytest.approx(expected[warmup:], rel=1e-12, abs=1e-15)
    floor = dict(lr=1.0, min_lr=0.1, warmup_steps=0, max_steps=30, schedule="linear")
    assert lr_at(15, **floor) == pytest.approx(0.55) and lr_at(30, **floor) == lr_at(40, **floor) == 0.1
