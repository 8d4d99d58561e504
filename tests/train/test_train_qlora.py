"""QLoRA (4-bit NF4 base, bitsandbytes) and the bitsandbytes optimizers, on the CPU with a tiny random Llama saved
with save_pretrained: layers and dtypes, training, a plain merged `final/`, exact resume, each optimizer, and the
error when bitsandbytes is missing."""
from __future__ import annotations

import io
import json
import sys
from importlib.util import find_spec

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.train.loop import train
from pipeline.train.model import build_model, precision_for
from pipeline.train.optim import build_optimizer
from schemas.train_config import load_train_config
from tests.train.train_helpers import VOCAB, copy_run_until, save_tiny_llama, write_shards

needs_bnb = pytest.mark.skipif(find_spec("bitsandbytes") is None, reason="the qlora extra (bitsandbytes) is absent")
CPU = torch.device("cpu")
TARGETS = ["q_proj", "v_proj", "down_proj"]
FAST = {"batch_size": 4, "lr": 1e-2, "min_lr": 1e-3, "device": "cpu", "lora": True, "lora_r": 4,
        "lora_target_modules": TARGETS, "quantize": "4bit"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=16, n_eval=4, tokenizer=True)


@pytest.fixture(scope="module")
def four_samples(tmp_path_factory):
    """Every step trains the same batch of four, so its loss falls only if training works."""
    return write_shards(tmp_path_factory.mktemp("four") / "s", n_train=4, n_eval=0, tokenizer=True)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny random Llama stored in fp32; its matrices are multiples of bitsandbytes' 64-value blocks."""
    return save_tiny_llama(tmp_path_factory.mktemp("model") / "m", hidden=64, layers=2)


def run(shards, saved_model, out, **kw):
    torch.set_num_threads(1)
    return train(load_train_config(overrides={"data": str(shards), "out": str(out), "model": str(saved_model),
                                              **FAST, **kw}))


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def curve(out):
    return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in records(out)]


@needs_bnb
def test_qlora_layers_and_dtypes(saved_model):
    import bitsandbytes as bnb

    cfg = load_train_config(overrides={"data": "shards", "out": "run", "model": str(saved_model), **FAST})
    model = build_model(cfg, precision=precision_for(cfg, CPU), device=CPU, vocab_size=VOCAB, max_length=64,
                        pad_token_id=0, bos_token_id=None, eos_token_id=3)
    layers = dict(model.named_modules())
    quantized = {name for name, m in layers.items() if isinstance(m, bnb.nn.Linear4bit)}
    linear = {name for name, m in layers.items() if isinstance(m, torch.nn.Linear) and "lora_" not in name}
    assert quantized and linear - quantized == {"base_model.model.lm_head"}  # every block Linear is 4-bit
    assert {m.compute_dtype for name, m in layers.items() if name in quantized} == {torch.bfloat16}
    assert {m.weight.quant_type for name, m in layers.items() if name in quantized} == {"nf4"}
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name and p.dtype == torch.float32 for name, p in trained.items())
    frozen = {name: p.dtype for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen["base_model.model.model.embed_tokens.weight"] == torch.bfloat16
    assert frozen["base_model.model.lm_head.weight"] == torch.bfloat16
    assert {d for name, d in frozen.items() if "norm" in name} == {torch.float32}  # k-bit preparation keeps them


@needs_bnb
def test_qlora_trains_and_final_is_a_plain_merged_model(four_samples, saved_model, tmp_path):
    out = tmp_path / "run"
    run(four_samples, saved_model, out, max_steps=3, gradient_checkpointing=True, double_quant=True,
        optim="paged_adamw_32bit")
    losses = [r["loss"] for r in records(out) if "loss" in r]
    assert len(losses) == 3 and torch.isfinite(torch.tensor(losses)).all() and losses[2] < losses[1] < losses[0]
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert "quantization_config" not in json.loads((out / "final" / "config.json").read_text())
    ids = torch.tensor([[5, 6, 7, 8]])
    assert final(input_ids=ids).logits.shape == (1, 4, VOCAB)
    base = AutoModelForCausalLM.from_pretrained(saved_model).state_dict()
    tuned = final.state_dict()
    assert {t.dtype for t in tuned.values()} == {torch.float32}  # the base's own dtype, not 4-bit or bf16
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    for key in base:
        prefix = "base_model.model." + key.removesuffix(".weight")
        if any(t in key for t in TARGETS):  # the unquantized base weight plus the adapter's delta
            delta = adapter[prefix + ".lora_B.weight"] @ adapter[prefix + ".lora_A.weight"] * scale
            assert delta.abs().max() > 0 and torch.allclose(tuned[key], base[key] + delta, atol=1e-6), key
        else:
            assert torch.equal(tuned[key], base[key]), key


@needs_bnb
def test_qlora_resume_is_exact(shards, saved_model, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    opts = {"max_steps": 4, "save_interval": 2, "optim": "adamw_8bit", "lora_dropout": 0.1}
    run(shards, saved_model, full, **opts)
    copy_run_until(full, part, 2)
    run(shards, saved_model, part, resume=True, **opts)
    assert curve(part) == curve(full) and sum(loss is not None for _, loss, _ in curve(full)) == 4
    a = torch.load(full / "checkpoints" / "step_0000004.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoints" / "step_0000004.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all("lora_" in k for k in a)  # the adapters only: the base is --model
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="optim: checkpoint has 'adamw_8bit', this run has 'adamw'"):
        run(shards, saved_model, part, resume=True, **{**opts, "max_steps": 6, "optim": "adamw"})


@needs_bnb
@pytest.mark.parametrize("optim", ["adamw", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit"])
def test_each_optimizer_builds_steps_and_reloads(optim):
    def setup():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 4))
        cfg = load_train_config(overrides={"data": "d", "out": "o", "optim": optim, "weight_decay": 0.1,
                                           "beta1": 0.8})
        return model, build_optimizer(cfg, list(model.parameters()), fused=False)

    def step(model, optimizer):
        model(torch.randn(8, 128, generator=torch.Generator().manual_seed(len(optimizer.state)))).square().sum(
        ).backward()
        optimizer.step()
        optimizer.zero_grad()

    model, optimizer = setup()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 4]  # matrices; the norm and the biases
    assert all(g["betas"] == (0.8, 0.95) for g in optimizer.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    step(model, optimizer)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    twin, twin_optimizer = setup()
    twin.load_state_dict(model.state_dict())
    saved = io.BytesIO()
    torch.save(optimizer.state_dict(), saved)  # as a checkpoint does: AdamW would otherwise share its state tensors
    saved.seek(0)
    twin_optimizer.load_state_dict(torch.load(saved, weights_only=True))
    step(model, optimizer)
    step(twin, twin_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


@pytest.mark.parametrize("flags", [["--optim", "adamw_8bit"], ["--lora", "--quantize", "4bit"]])
def test_without_bitsandbytes_a_clear_error(flags, shards, saved_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # any import of it now fails, as if not installed
    result = CliRunner().invoke(main, ["train", "--data", str(shards), "--out", str(tmp_path / "o"),
                                       "--model", str(saved_model), *flags])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "needs bitsandbytes" in result.output and "pip install 'chatshard[qlora]'" in result.output
    assert not (tmp_path / "o").exists()
