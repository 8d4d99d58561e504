"""The model: a tiny random causal LM sized to the shards, or a local pretrained one; optionally LoRA via peft, on a
base kept in bf16 or quantized to 4-bit NF4 (QLoRA, bitsandbytes). Also what a checkpoint holds of it, and `final/`."""
from __future__ import annotations

import copy
import shutil
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ConfigError, InputError
from pipeline.outputs import OwnedDir
from schemas.train_config import TrainConfig


@dataclass(frozen=True)
class Precision:
    """What `precision` means for this run on this device.

    `base`: the dtype the base model's weights are loaded in. Trained weights are fp32 master weights (a full
    fine-tune loads fp32); frozen ones under LoRA and QLoRA are bf16 with `precision: bf16`, half the memory.
    `compute`: the autocast dtype, None for plain fp32 compute. Adapters and optimizer state are fp32 in every case.
    """
    base: torch.dtype
    compute: torch.dtype | None

    def autocast(self, device: torch.device) -> AbstractContextManager:
        return torch.autocast(device.type, dtype=self.compute) if self.compute is not None else nullcontext()

    def describe(self) -> str:
        return f"weights {_NAMES[self.base]}, compute {_NAMES[self.compute or torch.float32]}"


_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def precision_for(cfg: TrainConfig, device: torch.device) -> Precision:
    """bf16 stores frozen weights in bf16 and computes under bf16 autocast, on the CPU as on CUDA (one behaviour that
    CPU tests cover). A full fine-tune has no frozen weights; on the CPU it computes in fp32, as autocast there would
    only slow it down. A CUDA device without bf16 falls back to fp32."""
    if cfg.precision != "bf16" or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return Precision(base=torch.float32, compute=None)
    if cfg.lora:
        return Precision(base=torch.bfloat16, compute=torch.bfloat16)
    return Precision(base=torch.float32, compute=torch.bfloat16 if device.type == "cuda" else None)


def build_model(cfg: TrainConfig, *, precision: Precision, device: torch.device, vocab_size: int, max_length: int,
                pad_token_id: int | None, bos_token_id: int | None, eos_token_id: int | None) -> nn.Module:
    """The model on `device`, in the dtypes `precision` says. Call after seeding: tiny init is random."""
    if cfg.model == "tiny":
        model = _tiny(cfg, vocab_size=vocab_size, max_length=max_length, pad_token_id=pad_token_id,
                      bos_token_id=bos_token_id, eos_token_id=eos_token_id).to(device)
        for param in model.parameters():  # weights only: buffers (rotary frequencies) stay fp32, as from_pretrained
            param.data = param.data.to(precision.base)  # keeps them
    else:
        model = _pretrained(Path(cfg.model), vocab_size=vocab_size, dtype=precision.base, device=device,
                            quantization=_nf4(cfg, precision) if cfg.quantize == "4bit" else None)
    model.config.use_cache = False
    if cfg.quantize == "4bit":
        model = _prepare_4bit(model, precision)
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


def _pretrained(path: Path, *, vocab_size: int, dtype: torch.dtype, device: torch.device,
                quantization=None) -> nn.Module:
    if not (path / "config.json").is_file():
        raise InputError(f"--model {path}: not a model directory (no config.json); use 'tiny' or a local "
                         "directory written by save_pretrained")
    from transformers import AutoModelForCausalLM

    # a quantized model is placed by from_pretrained (bitsandbytes quantizes as it loads) and cannot be moved later
    placement = {"quantization_config": quantization, "device_map": {"": device}} if quantization else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", **placement)
    except (OSError, ValueError) as e:
        raise InputError(f"--model {path}: cannot load: {e}") from None
    rows = model.get_input_embeddings().num_embeddings
    if vocab_size > rows:
        raise InputError(f"the shards' vocabulary ({vocab_size} tokens, manifest tokenizer.vocab_size) is larger "
                         f"than the model's embedding table ({rows} rows): these shards were made with another "
                         "tokenizer, or the model needs resize_token_embeddings first")
    return model if quantization else model.to(device)


def _nf4(cfg: TrainConfig, precision: Precision):
    """QLoRA's quantization: NF4 weights, computing in the run's compute dtype (fp32 without autocast)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=cfg.double_quant,
                              bnb_4bit_compute_dtype=precision.compute or torch.float32)


def _prepare_4bit(model: nn.Module, precision: Precision) -> nn.Module:
    """peft's k-bit preparation: freeze the base and upcast its non-quantized weights (embeddings, norms, LM head) to
    fp32. Gradient checkpointing is left to `build_model` (non-reentrant, as for every run). Under bf16 the embeddings
    and LM head, large and frozen, go back to bf16 while the norms stay fp32, as in the QLoRA reference recipe."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if precision.base != torch.float32:
        tables = {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
        for module in tables.values():
            module.to(precision.base)
    return model


def _lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad input
    config = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                        lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules))
    try:
        return get_peft_model(model, config)  # adapters in fp32 whatever the base's dtype (autocast_adapter_dtype)
    except ValueError as e:
        raise ConfigError([f"lora_target_modules {list(cfg.lora_target_modules)}: {e}"]) from None


def parameter_count(model: nn.Module) -> int:
    """Weights in the model; a 4-bit layer packs two in a byte, and is counted by the weights it holds."""
    return sum(p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None else p.numel()
               for p in model.parameters())


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of the model: every weight in a full fine-tune; only the trained ones (the adapters)
    when the base is frozen. The base is rebuilt as it was (from `model` and the seed), and a 4-bit base's state_dict
    (packed weights and quantization state) would not load back with `load_state_dict`."""
    if all(p.requires_grad for p in model.parameters()):
        return model.state_dict()
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The inverse of `trained_state`, on a model built with the checkpoint's options."""
    if all(p.requires_grad for p in model.parameters()):
        model.load_state_dict(state)
        return
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    missing = [name for name in trained if name not in state]
    if missing:
        raise InputError(f"checkpoint: no value for {len(missing)} trained weight(s) of this model, e.g. "
                         f"{missing[0]}: it was written for another model")
    model.load_state_dict({name: state[name] for name in trained}, strict=False)


def save_final(model: nn.Module, run_dir: OwnedDir, *, tokenizer_dir: Path, lora: bool) -> Path:
    """`RUN_DIR/final`: a plain transformers model (LoRA merged in; the adapter alone goes to `RUN_DIR/adapter`) with
    the shards' tokenizer files copied beside it. Written to a scratch dir, then moved into place."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is enough; theirs prints even when stderr is not a tty
    if lora:
        model.save_pretrained(run_dir.scratch(".adapter.tmp", fresh=True))
        run_dir.replace_dir(".adapter.tmp", "adapter")
        model = _merged(model)
    tmp = run_dir.scratch(".final.tmp", fresh=True)
    model.config.use_cache = True  # for generation
    model.save_pretrained(tmp)
    model.config.use_cache = False
    if tokenizer_dir.is_dir():
        for file in sorted(tokenizer_dir.iterdir()):
            if file.is_file() and not (tmp / file.name).exists():  # the model's own config files win
                shutil.copy2(file, tmp / file.name)
    return run_dir.replace_dir(".final.tmp", "final")


def _merged(model: nn.Module) -> nn.Module:
    """The adapters merged into the base as it is stored, not as it was trained against (bf16 copies, or 4-bit
    weights under QLoRA): a pretrained base is reloaded on the CPU from its directory (peft records it), unquantized,
    in its own dtype, and the trained adapters are merged into that. The tiny model's base exists only in memory: it
    is merged there, in fp32."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    config = model.peft_config["default"]
    base_dir = config.base_model_name_or_path
    if not (base_dir and (Path(base_dir) / "config.json").is_file()):
        return model.float().merge_and_unload()
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    fresh = get_peft_model(base, copy.deepcopy(config))
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(model))
    return fresh.merge_and_unload()
