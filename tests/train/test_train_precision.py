"""`precision`: which weights are held in which dtype (full fine-tune, LoRA; QLoRA in test_train_qlora.py), and a bf16
LoRA run on the CPU that trains with fp32 adapters and fp32 optimizer state."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.train.loop import train
from pipeline.train.model import build_model, precision_for
from schemas.train_config import load_train_config
from tests.train.train_helpers import VOCAB, save_tiny_llama, write_shards

CPU = torch.device("cpu")
FAST = {"tiny_hidden": 32, "tiny_heads": 2, "batch_size": 4, "lr": 1e-2, "min_lr": 1e-3}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Four samples: every step trains the same batch, so its loss can only fall if training works."""
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=4, n_eval=0, tokenizer=True)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny pretrained model dir, stored in fp32 (save_pretrained)."""
    return save_tiny_llama(tmp_path_factory.mktemp("model") / "m")


def build(**options) -> torch.nn.Module:
    cfg = load_train_config(overrides={"data": "shards", "out": "run", **options})
    return build_model(cfg, precision=precision_for(cfg, CPU), device=CPU, vocab_size=VOCAB, max_length=64,
                       pad_token_id=0, bos_token_id=None, eos_token_id=3)


def dtypes(model: torch.nn.Module, *, trained: bool) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad == trained}


@pytest.mark.parametrize("model", ["tiny", "saved"])
def test_full_fine_tune_keeps_fp32_master_weights(model, saved_model):
    built = build(model="tiny" if model == "tiny" else str(saved_model), precision="bf16")
    assert dtypes(built, trained=True) == {torch.float32} and not dtypes(built, trained=False)
    cfg = load_train_config(overrides={"data": "shards", "out": "run"})
    assert precision_for(cfg, CPU).compute is None  # a full fine-tune on the CPU computes in fp32


@pytest.mark.parametrize("model", ["tiny", "saved"])
def test_lora_bf16_holds_the_frozen_base_in_bf16(model, saved_model):
    options = {"model": "tiny" if model == "tiny" else str(saved_model), "lora": True}
    built = build(**options, precision="bf16")
    assert dtypes(built, trained=False) == {torch.bfloat16}
    assert dtypes(built, trained=True) == {torch.float32}
    assert {b.dtype for b in built.buffers()} == {torch.float32}  # rotary frequencies stay fp32, as transformers has
    assert all("lora_" in name for name, p in built.named_parameters() if p.requires_grad)
    assert dtypes(build(**options, precision="fp32"), trained=False) == {torch.float32}


def test_lora_bf16_trains_on_the_cpu(shards, tmp_path):
    out = tmp_path / "run"
    torch.set_num_threads(1)
    train(load_train_config(overrides={"data": str(shards), "out": str(out), **FAST, "max_steps": 8, "lora": True,
                                       "precision": "bf16", "device": "cpu"}))
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.05  # the same 4 samples every step: it learns them
    state = torch.load(out / "checkpoints" / "step_0000008.pt", weights_only=True)
    assert state["model"] and all("lora_" in k and t.dtype == torch.float32 for k, t in state["model"].items())
    moments = [t for s in state["optimizer"]["state"].values() for k, t in s.items() if k.startswith("exp_avg")]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(out / "final")  # the tiny base merged in fp32
    assert {p.dtype for p in final.parameters()} == {torch.float32}
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 8
