"""NEFTune: noise on the input embeddings, scaled per sample by alpha / sqrt(L * d), in training forwards only."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.train.data import collate, open_training_shards
from pipeline.train.neftune import NEFTune
from tests.train.train_helpers import copy_run_until, tiny_model, write_shards

ALPHA = 5.0


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=16, n_eval=4, tokenizer=True)


@pytest.fixture(scope="module")
def split(shards):
    return open_training_shards(shards).splits["train"]


def noise_of(embeddings, batch, neftune: NEFTune) -> torch.Tensor:
    """What the hook added to the embeddings of `batch` (float32)."""
    with torch.no_grad(), neftune.sample_lengths(batch.sample_lengths):
        noisy = embeddings(batch.input_ids)
    return noisy.float() - embeddings.weight[batch.input_ids].float()


def assert_scaled(noise: torch.Tensor, length: int, d: int, *, rtol: float = 1e-5) -> None:
    """Uniform in [-b, b] with b = alpha / sqrt(L d): the largest of L*d draws is within 10% of b."""
    bound = ALPHA / math.sqrt(length * d)
    top = noise.abs().max().item()
    assert 0.9 * bound <= top <= bound * (1 + rtol), (length, top, bound)


def test_each_padded_row_gets_the_scale_of_its_own_length(split):
    model = tiny_model().train()
    embeddings, d = model.get_input_embeddings(), model.config.hidden_size
    order = np.argsort(split.lengths)
    rows = [int(order[-1]), int(order[0]), int(order[len(order) // 2])]  # longest, shortest, middle
    batch = collate(split, [[i] for i in rows], pad_id=0, packing=False)
    width = batch.input_ids.size(1)
    noise = noise_of(embeddings, batch, NEFTune(embeddings, ALPHA))
    for r, i in enumerate(rows):
        length = int(split.lengths[i])
        assert_scaled(noise[r, :length], length, d)
        assert not noise[r, length:].any()  # padding: no noise
    assert noise[1].abs().max() > 2 * ALPHA / math.sqrt(width * d)  # not the padded row's length


def test_each_packed_sample_gets_the_scale_of_its_own_length(split):
    model = tiny_model().train()
    embeddings, d = model.get_input_embeddings(), model.config.hidden_size
    rows = [[0, 1, 2], [3]]
    batch = collate(split, rows, pad_id=0, packing=True)
    noise = noise_of(embeddings, batch, NEFTune(embeddings, ALPHA))
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            length = int(split.lengths[i])
            assert_scaled(noise[r, at:at + length], length, d)
            at += length
        assert not noise[r, at:].any()  # the padding tail of the shorter row


def test_no_noise_at_eval_and_lengths_required_in_training(split):
    model = tiny_model()
    embeddings = model.get_input_embeddings()
    neftune = NEFTune(embeddings, ALPHA)
    batch = collate(split, [[0], [1]], pad_id=0, packing=False)
    model.eval()
    assert not noise_of(embeddings, batch, neftune).any()
    with torch.no_grad():
        assert torch.equal(model(**batch.model_inputs(torch.device("cpu"))).logits,
                           model(**batch.model_inputs(torch.device("cpu"))).logits)  # eval needs no lengths
    model.train()
    with pytest.raises(RuntimeError, match="sample lengths"):
        embeddings(batch.input_ids)


def test_bf16_embeddings(split):
    model = tiny_model().train()
    embeddings, d = model.get_input_embeddings().to(torch.bfloat16), model.config.hidden_size
    batch = collate(split, [[0]], pad_id=0, packing=False)
    with torch.no_grad(), NEFTune(embeddings, ALPHA).sample_lengths(batch.sample_lengths):
        out = embeddings(batch.input_ids)
    assert out.dtype == torch.bfloat16
    noise = out.float() - embeddings.weight[batch.input_ids].float()
    assert_scaled(noise, int(split.lengths[0]), d, rtol=2e-2)  # bf16 rounding of embedding + noise


def test_lora_with_frozen_embeddings(split):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(), LoraConfig(r=4, target_modules=["q_proj"])).train()
    embeddings, d = model.get_input_embeddings(), model.config.hidden_size
    assert not embeddings.weight.requires_grad
    seen = []
    neftune = NEFTune(embeddings, ALPHA)
    embeddings.register_forward_hook(lambda module, args, out: seen.append(out.detach()))  # after NEFTune's hook
    batch = collate(split, [[0], [1]], pad_id=0, packing=False)
    with neftune.sample_lengths(batch.sample_lengths):
        model(**batch.model_inputs(torch.device("cpu"))).logits.sum().backward()
    noise = seen[0] - embeddings.weight[batch.input_ids]
    for r in range(2):
        length = int(split.lengths[r])
        assert_scaled(noise[r, :length], length, d)
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_train_with_neftune_alpha(shards, tmp_path):
    """The flag reaches the training forwards: the first loss differs from a run without noise; eval still runs."""
    first = {}
    for alpha in (None, "5"):
        out = tmp_path / f"run-{alpha}"
        args = ["train", "--data", str(shards), "--out", str(out), "--max-steps", "2", "--batch-size", "4",
                "--tiny-hidden", "32", "--tiny-heads", "2", "--packing", "--eval-interval", "1", "--device", "cpu"]
        result = CliRunner().invoke(main, args + (["--neftune-alpha", alpha] if alpha else []))
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert "eval_loss" in records[0]
        first[alpha] = records[0]["loss"]
    assert json.loads((tmp_path / "run-5" / "config.json").read_text())["neftune_alpha"] == 5.0
    assert first["5"] != first[None]


def test_resume_with_neftune_is_exact(shards, tmp_path):
    """The noise comes from the torch RNG, which checkpoints save: stop after 2 steps, resume, same losses."""
    def run(out, **kw):
        from pipeline.train.loop import train
        from schemas.train_config import load_train_config

        torch.set_num_threads(1)
        train(load_train_config(overrides={"data": str(shards), "out": str(out), "tiny_hidden": 32, "tiny_heads": 2,
                                           "batch_size": 4, "max_steps": 4, "save_interval": 2, "neftune_alpha": 5.0,
                                           "device": "cpu", **kw}))
        records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        return [r["loss"] for r in records if "loss" in r]

    full = run(tmp_path / "full")
    part = tmp_path / "part"
    copy_run_until(tmp_path / "full", part, 2)
    assert run(part, resume=True) == full
