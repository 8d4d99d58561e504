"""The recipes in data/recipes run as they are: each train config, loaded from its file, trains 2 steps on the CPU on a
tiny random model of its architecture family (Mistral for OpenHermes-2.5 with QLoRA, the transformers-native GLM for
GLM-4), overriding only the steps, the device and the model path (and the run's data and output directories). Each
companion preprocess config loads, and makes shards with the real tokenizer where ../shared has it."""
from __future__ import annotations

import json
from importlib.util import find_spec

import datasets
import pytest
import torch

from pipeline.run import preprocess
from pipeline.train.loop import train
from schemas.config import load_config
from schemas.train_config import load_train_config
from tests.conftest import shared_path
from tests.train.train_helpers import REPO, VOCAB, write_shards

RECIPES = REPO / "data" / "recipes"
needs_bnb = pytest.mark.skipif(find_spec("bitsandbytes") is None, reason="the qlora extra (bitsandbytes) is absent")

# What each recipe is, from the recipes it reproduces: OpenHermes-2.5's QLoRA run, GLM-4's configs/lora.yaml.
OPENHERMES = {
    "batch_size": 1, "grad_accum": 4, "gradient_checkpointing": True, "lr": 5e-5, "schedule": "cosine", "min_lr": 0.0,
    "warmup_steps": 100, "max_steps": 6000, "eval_interval": 100, "save_interval": 100, "optim": "paged_adamw_32bit",
    "precision": "bf16", "lora": True, "quantize": "4bit", "double_quant": False, "lora_r": 16, "lora_alpha": 16.0,
    "lora_dropout": 0.05, "neftune_alpha": 5.0, "beta2": 0.999,
    "lora_target_modules": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
GLM4 = {
    "batch_size": 1, "grad_accum": 1, "max_steps": 3000, "lr": 5e-4, "schedule": "linear", "min_lr": 0.0,
    "warmup_steps": 0, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "grad_clip": 1.0, "save_interval": 500,
    "eval_interval": 500, "eval_batches": 50, "log_interval": 10, "precision": "bf16", "gradient_checkpointing": True,
    "lora": True, "quantize": "none", "lora_r": 8, "lora_alpha": 32.0, "lora_dropout": 0.1,
    "lora_target_modules": ("q_proj", "k_proj", "v_proj"),
}


def tiny_mistral(path):
    from transformers import MistralConfig, MistralForCausalLM

    # matrices in multiples of bitsandbytes' 64-value blocks; grouped KV heads and a sliding window, as Mistral-7B
    MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, sliding_window=32,
                                     max_position_embeddings=256)).save_pretrained(path)
    return "MistralForCausalLM"


def tiny_glm(path):
    from transformers import GlmConfig, GlmForCausalLM

    # GLM-4's layout: q/k/v with biases, 2 KV heads, partial rotary, fused gate_up_proj, untied head
    GlmForCausalLM(GlmConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                             pad_token_id=0, eos_token_id=3)).save_pretrained(path)
    return "GlmForCausalLM"


RECIPE_RUNS = [
    pytest.param("qlora-openhermes-mistral", OPENHERMES, tiny_mistral, marks=needs_bnb, id="qlora-openhermes-mistral"),
    pytest.param("glm4-lora", GLM4, tiny_glm, id="glm4-lora"),
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=10, n_eval=3, tokenizer=True)


@pytest.mark.parametrize("name, expected, make_model", RECIPE_RUNS)
def test_recipe_trains_as_it_is(name, expected, make_model, shards, tmp_path):
    recipe = RECIPES / f"{name}.yaml"
    io = {"data": str(shards), "out": str(tmp_path / "run")}
    as_is = load_train_config(recipe, overrides=io)
    assert {key: getattr(as_is, key) for key in expected} == expected
    assert not (tmp_path / as_is.model).exists()  # a placeholder: the run below names the model

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    architecture = make_model(model_dir)
    overrides = {"max_steps": 2, "warmup_steps": min(as_is.warmup_steps, 1), "device": "cpu", "model": str(model_dir)}
    torch.set_num_threads(1)
    result = train(load_train_config(recipe, overrides={**io, **overrides}))

    ran = json.loads((tmp_path / "run" / "config.json").read_text())
    recipe_values = json.loads(as_is.model_dump_json())
    assert {k: v for k, v in ran.items() if k not in overrides} == {
        k: v for k, v in recipe_values.items() if k not in overrides}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert result.steps == 2 and len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    assert result.eval_loss is not None and 0 < result.eval_loss < 10  # the eval split is evaluated at the end
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(expected["lora_target_modules"]) and adapter["r"] == expected["lora_r"]
    final = json.loads((result.final_dir / "config.json").read_text())
    assert final["architectures"] == [architecture] and "quantization_config" not in final


@pytest.mark.parametrize("name", ["qlora-openhermes-mistral", "glm4-lora"])
def test_recipe_preprocess_config_loads(name):
    config = load_config(RECIPES / f"{name}.preprocess.yaml", {})
    assert config.render.tokenizer.startswith("./")  # a placeholder for the model's folder, as in the train recipe
    assert config.render.tokenizer == load_train_config(RECIPES / f"{name}.yaml",
                                                        overrides={"data": "s", "out": "r"}).model


LONG_REPLY = " ".join(f"word{i % 97}" for i in range(6000))  # well over 4,096 tokens in either tokenizer
CHATS = [
    {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."}]},
    {"messages": [{"role": "user", "content": "Write a long text."}, {"role": "assistant", "content": LONG_REPLY}]},
    {"messages": [{"role": "user", "content": "写一句诗。"}, {"role": "assistant", "content": "床前明月光。"}]},
]


def _preprocess(tmp_path, name, tokenizer):
    inputs = tmp_path / "chats.jsonl"
    inputs.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in CHATS), encoding="utf-8")
    config = load_config(RECIPES / f"{name}.preprocess.yaml",
                         {"inputs": [str(inputs)], "render.tokenizer": str(shared_path("tokenizers", tokenizer))})
    manifest = preprocess(config, tmp_path / "shards")
    rows = [row for split in datasets.load_from_disk(str(tmp_path / "shards")).values() for row in split]
    return manifest["accounting"], rows


def test_openhermes_preprocess_config_makes_chatml_shards(tmp_path):
    accounting, rows = _preprocess(tmp_path, "qlora-openhermes-mistral", "openhermes-mistral")
    im_start, im_end = 32001, 32000
    assert accounting["read"] == 3 and accounting["written"] == 2  # the long chat is over 4,096 tokens: dropped
    assert accounting["filtered_reasons"] == {"too_long": 1}
    for row in rows:
        assert row["input_ids"][0] == im_start and row["length"] <= 4096
        trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
        assert trained[-1] == im_end  # the assistant turn is trained through its end-of-turn token


def test_glm4_preprocess_config_cuts_as_glm4_does(tmp_path):
    accounting, rows = _preprocess(tmp_path, "glm4-lora", "glm4")
    assert accounting["read"] == accounting["written"] == 3  # GLM-4 cuts long samples, it does not drop them
    assert all(row["input_ids"][:2] == [151331, 151333] for row in rows)  # [gMASK]<sop>
    assert sorted(row["length"] for row in rows)[-1] == 512 + 512 + 1  # max_input + max_output + 1, as finetune.py
