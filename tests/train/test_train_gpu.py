"""The trainer's CUDA paths: bf16 autocast, fused AdamW, exact resume, NCCL, QLoRA with a paged optimizer. They need
a CUDA device.

On a machine without one every test here is skipped (CI has none); the CPU paths are covered by the other tests.
"""
from __future__ import annotations

import json
import sys
from importlib.util import find_spec

import pytest
import torch

from pipeline.train.loop import train
from schemas.train_config import load_train_config
from tests.train.train_helpers import VOCAB, copy_run_until, run_cli, write_shards

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FAST = {"tiny_hidden": 64, "tiny_heads": 2, "batch_size": 4, "lr": 3e-3, "min_lr": 3e-4}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=32, n_eval=8, tokenizer=True)


def run(shards, out, **kw):
    return train(load_train_config(overrides={"data": str(shards), "out": str(out), **FAST, **kw}))


def losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_bf16_matches_fp32_and_learns(shards, tmp_path):
    bf16 = run(shards, tmp_path / "bf16", max_steps=20, device="cuda", precision="bf16", eval_interval=10)
    run(shards, tmp_path / "fp32", max_steps=20, device="cpu")
    a, b = losses(tmp_path / "bf16"), losses(tmp_path / "fp32")
    assert len(a) == len(b) == 20
    assert a[0] == pytest.approx(b[0], rel=2e-2)  # same init and data; bf16 rounding only
    assert bf16.last_loss < bf16.first_loss and bf16.eval_loss is not None  # random tokens: little to learn
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.1  # the two runs follow one curve
    state = torch.load(tmp_path / "bf16" / "checkpoints" / "step_0000020.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["fused"] is True  # fused AdamW on CUDA
    assert all(t.dtype == torch.float32 for t in state["model"].values())  # fp32 master weights


def test_resume_on_cuda(shards, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    opts = {"max_steps": 6, "save_interval": 3, "packing": True, "batch_size": 2, "device": "cuda"}
    run(shards, full, **opts)
    copy_run_until(full, part, 3)
    run(shards, part, resume=True, **opts)
    assert losses(part) == pytest.approx(losses(full), rel=1e-5, abs=1e-6)


def test_lora_and_gradient_checkpointing_on_cuda(shards, tmp_path):
    out = tmp_path / "run"
    result = run(shards, out, max_steps=4, device="cuda", lora=True, lora_r=4, gradient_checkpointing=True)
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "final" / "config.json").exists()
    assert result.steps == 4


def test_torchrun_nccl_one_rank_equals_plain_run(shards, tmp_path):
    args = ["--data", str(shards), "--max-steps", "4", "--batch-size", "2", "--grad-accum", "2",
            "--tiny-hidden", "64", "--tiny-heads", "2", "--lr", "3e-3", "--min-lr", "3e-4", "--device", "cuda",
            "--precision", "fp32"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    ddp = run_cli("train", *args, "--out", str(tmp_path / "ddp"), "--rank-log", launcher=launcher, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "1 rank(s)" in ddp.stdout
    plain = run_cli("train", *args, "--out", str(tmp_path / "plain"), timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "plain"), rel=1e-4)
    log = [json.loads(line) for line in (tmp_path / "ddp" / "ranks" / "rank0.jsonl").read_text().splitlines()]
    assert len([r for r in log if "ids" in r]) == 4 and "weights_sha256" in log[-1]


@pytest.mark.skipif(find_spec("bitsandbytes") is None, reason="the qlora extra (bitsandbytes) is absent")
def test_qlora_paged_adamw_resumes_on_cuda(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "m")
    shards = write_shards(tmp_path / "s", n_train=16, n_eval=4, tokenizer=True)
    opts = {"data": str(shards), "model": str(tmp_path / "m"), "device": "cuda", "batch_size": 4, "lr": 1e-2,
            "min_lr": 1e-3, "lora": True, "lora_r": 4, "quantize": "4bit", "optim": "paged_adamw_32bit",
            "gradient_checkpointing": True, "max_steps": 4, "save_interval": 2}
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_train_config(overrides={**opts, "out": str(full)}))
    copy_run_until(full, part, 2)
    train(load_train_config(overrides={**opts, "out": str(part), "resume": True}))
    assert len(losses(full)) == 4 and torch.isfinite(torch.tensor(losses(full))).all()
    assert losses(part) == pytest.approx(losses(full), rel=1e-5, abs=1e-6)
    final = AutoModelForCausalLM.from_pretrained(full / "final")
    assert final(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, VOCAB)
