"""The model: a tiny random causal LM sized to the shards, or a local pretrained one; optionally LoRA via peft."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ConfigError, InputError
from pipeline.outputs import OwnedDir
from schemas.train_config import TrainConfig


def build_model(cfg: TrainConfig, *, vocab_size: int, max_length: int, pad_token_id: int | None,
                bos_token_id: int | None, eos_token_id: int | None) -> nn.Module:
    """Full-precision (fp32) weights; bf16 comes from autocast. Call after seeding: tiny init is random."""
    if cfg.model == "tiny":
        model = _tiny(cfg, vocab_size=vocab_size, max_length=max_length, pad_token_id=pad_token_id,
                      bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    else:
        model = _pretrained(Path(cfg.model), vocab_size=vocab_size)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        model = _lora(model, cfg)
    return model


def _tiny(cfg: TrainConfig, *, vocab_size: int, max_length: int, **special: int | None) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[
        cfg.tiny_arch]
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=cfg.tiny_hidden,
        intermediate_size=4 * cfg.tiny_hidden,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_heads,
        max_position_embeddings=max(256, 1 << (max_length - 1).bit_length()),  # next power of two
        tie_word_embeddings=True,
        use_cache=False,
        **special,
    )
    config._attn_implementation = "sdpa"
    return model_cls(config)


def _pretrained(path: Path, *, vocab_size: int) -> nn.Module:
    if not (path / "config.json").is_file():
        raise InputError(f"--model {path}: not a model directory (no config.json); use 'tiny' or a local "
                         "directory written by save_pretrained")
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        raise InputError(f"--model {path}: cannot load: {e}") from None
    rows = model.get_input_embeddings().num_embeddings
    if vocab_size > rows:
        raise InputError(f"the shards' vocabulary ({vocab_size} tokens, manifest tokenizer.vocab_size) is larger "
                         f"than the model's embedding table ({rows} rows): these shards were made with another "
                         "tokenizer, or the model needs resize_token_embeddings first")
    return model


def _lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad input
    config = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                        lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules))
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError([f"lora_target_modules {list(cfg.lora_target_modules)}: {e}"]) from None


def save_final(model: nn.Module, run_dir: OwnedDir, *, tokenizer_dir: Path, lora: bool) -> Path:
    """`RUN_DIR/final`: a plain transformers model (LoRA merged in; the adapter alone goes to `RUN_DIR/adapter`) with
    the shards' tokenizer files copied beside it. Written to a scratch dir, then moved into place."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is enough; theirs prints even when stderr is not a tty
    if lora:
        model.save_pretrained(run_dir.scratch(".adapter.tmp", fresh=True))
        run_dir.replace_dir(".adapter.tmp", "adapter")
        model = model.merge_and_unload()
    tmp = run_dir.scratch(".final.tmp", fresh=True)
    model.config.use_cache = True  # for generation
    model.save_pretrained(tmp)
    model.config.use_cache = False
    if tokenizer_dir.is_dir():
        for file in sorted(tokenizer_dir.iterdir()):
            if file.is_file() and not (tmp / file.name).exists():  # the model's own config files win
                shutil.copy2(file, tmp / file.name)
    return run_dir.replace_dir(".final.tmp", "final")
