"""`TrainConfig`: every option of `python -m pipeline train`, with its default. Defaults live here only.

A YAML file lists what differs from these defaults; command-line flags override the file. Unknown keys, wrong types
and bad combinations are all collected and reported at once (`load_train_config`), before any model is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.loading import read_yaml_mapping, validate_model

# Options that decide the model (its weights' dtypes too), the optimizer's state, the data order or what one optimizer
# step contains. A resumed run must use the checkpoint's values for these (the loop refuses a mismatch, naming each).
RESUME_FIXED = (
    "model", "tiny_arch", "tiny_layers", "tiny_hidden", "tiny_heads", "lora", "lora_r", "lora_alpha",
    "lora_target_modules", "quantize", "double_quant", "precision", "optim", "packing", "pack_length", "batch_size",
    "batch_tokens", "grad_accum", "bucket_batches", "seed",
)
# Options that set the learning rate, the run's length or the optimizer's update. Changing one on resume changes the
# run's outcome (the LR jumps, the cosine restarts elsewhere), so it is refused unless `allow_schedule_change` is
# set; an allowed change is printed and noted in metrics.jsonl. Early stopping decides the run's length, so it is
# one of them. Every other option (eval, save, log, final, report_to, device, gradient checkpointing) may change
# freely.
RESUME_SCHEDULE = (
    "lr", "min_lr", "schedule", "warmup_steps", "max_steps", "epochs", "weight_decay", "beta1", "beta2", "grad_clip",
    "lora_dropout", "neftune_alpha", "early_stopping_patience", "early_stopping_min_delta",
)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # I/O
    data: str | Path = Field(description="shard directory written by `preprocess` (manifest.json, train/, "
                             "tokenizer/), or its object-storage URL (s3://BUCKET/PREFIX), copied down to a cache")
    # How to reach an object-storage `data` (the fsspec backend's keyword arguments, e.g. s3fs's endpoint_url, key,
    # secret); none: the environment. Never written to config.json or a checkpoint: it may hold credentials.
    data_storage_options: dict[str, Any] | None = Field(None, exclude=True)
    out: Path = Field(description="run directory: metrics.jsonl, loss.png, checkpoints/, final/")
    resume: bool = False  # continue from the newest checkpoint in `out`
    allow_schedule_change: bool = False  # let a resumed run change RESUME_SCHEDULE options (noted in metrics.jsonl)
    # model
    model: str = "tiny"  # "tiny" (random init, sized to the shards' vocabulary) or a local pretrained model dir
    tiny_arch: Literal["llama", "qwen2"] = "llama"
    tiny_layers: int = Field(2, ge=1)
    tiny_hidden: int = Field(128, ge=8)  # MLP width is 4x this
    tiny_heads: int = Field(4, ge=1)
    gradient_checkpointing: bool = False
    # LoRA (peft); only the adapters are trained
    lora: bool = False
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # QLoRA: the frozen base's Linear layers in 4-bit NF4 (bitsandbytes); needs lora and a pretrained model dir
    quantize: Literal["none", "4bit"] = "none"
    double_quant: bool = False  # also quantize the 4-bit layers' scales (about 0.4 bit per weight less)
    # data
    batch_size: int | None = Field(8, ge=1)  # sequences (packed rows when packing) per micro-batch, per rank
    batch_tokens: int | None = Field(None, ge=1)  # or: at most this many padded tokens per micro-batch
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step, per rank
    packing: bool = False  # concatenate samples into rows of `pack_length`, no attention across samples
    pack_length: int | None = Field(None, ge=2)  # default: the longest sample in the shards
    bucket_batches: int = Field(16, ge=1)  # padding: shuffle, then sort by length within buckets of this many batches
    # optimizer and schedule
    optim: Literal["adamw", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit"] = "adamw"  # all but adamw: bnb
    lr: float = Field(3e-4, gt=0)
    min_lr: float = Field(3e-5, ge=0)  # where cosine and linear decay end (at max_steps)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)  # applied to matrices only, not to norms and biases
    neftune_alpha: float | None = Field(None, gt=0)  # NEFTune: training noise alpha/sqrt(L*d) on the input embeddings
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)  # max global grad norm; 0 disables clipping
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; or:
    epochs: float | None = Field(None, gt=0)  # passes over the train split (default 1 when neither is set)
    # evaluation, checkpoints, logging
    eval_interval: int = Field(0, ge=0)  # steps between evaluations (0: only at the end); needs an eval split
    eval_batches: int | None = Field(None, ge=1)  # cap on eval micro-batches per evaluation (default: whole split)
    early_stopping_patience: int | None = Field(None, ge=1)  # stop after N evaluations without improvement
    early_stopping_min_delta: float = Field(0.0, ge=0)  # an improvement is an eval-loss drop of more than this
    final: Literal["best", "last"] = "best"  # final/: the lowest eval loss (when there is an eval split) or the last
    save_interval: int = Field(0, ge=0)  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = Field(2, ge=1)  # newest N kept, and the best by eval loss besides
    log_interval: int = Field(1, ge=1)  # steps between metrics.jsonl lines (and progress lines when not a terminal)
    report_to: Literal["none", "tensorboard"] = "none"  # tensorboard: event files in `out`/tensorboard as well
    rank_log: bool = False  # write ranks/rank<R>.jsonl: the sample ids each rank trained on, and a weights digest
    # system
    seed: int = 0
    # bf16: frozen weights (LoRA, QLoRA) stored in bf16 and bf16 autocast; trained weights and optimizer state
    # stay fp32. A full fine-tune on the CPU computes in fp32.
    precision: Literal["bf16", "fp32"] = "bf16"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _combinations(self) -> "TrainConfig":
        set_ = self.model_fields_set
        problems = []
        if self.batch_size is not None and self.batch_tokens is not None and {"batch_size", "batch_tokens"} <= set_:
            problems.append("batch_size and batch_tokens: give one of them (sequences or tokens per micro-batch)")
        if self.batch_size is None and self.batch_tokens is None:
            problems.append("batch_size and batch_tokens: one of them is needed")
        if self.max_steps is not None and self.epochs is not None:
            problems.append("max_steps and epochs: give one of them, not both")
        if self.pack_length is not None and not self.packing:
            problems.append("pack_length is set but packing is false")
        if self.packing and self.batch_tokens is not None and self.pack_length is not None:
            if self.batch_tokens < self.pack_length:
                problems.append(f"batch_tokens ({self.batch_tokens}) is below pack_length ({self.pack_length}): "
                                "not one packed row fits a micro-batch")
        lora_keys = sorted(k for k in set_ if k.startswith("lora_"))
        if lora_keys and not self.lora:
            problems.append(f"{', '.join(lora_keys)} set but lora is false")
        if self.quantize != "none" and not self.lora:
            problems.append(f"quantize {self.quantize!r} needs lora: 4-bit weights are frozen, only adapters train")
        if self.quantize != "none" and self.model == "tiny":
            problems.append(f"quantize {self.quantize!r} needs a pretrained model directory as model, not 'tiny'")
        if self.double_quant and self.quantize == "none":
            problems.append("double_quant is set but quantize is 'none'")
        tiny_keys = sorted(k for k in set_ if k.startswith("tiny_"))
        if tiny_keys and self.model != "tiny":
            problems.append(f"{', '.join(tiny_keys)} set but model is {self.model!r}, not 'tiny'")
        if self.tiny_hidden % self.tiny_heads:
            problems.append(f"tiny_hidden ({self.tiny_hidden}) must be a multiple of tiny_heads ({self.tiny_heads})")
        if self.early_stopping_patience is not None and self.eval_interval == 0:
            problems.append("early_stopping_patience needs eval_interval > 0 (evaluations to compare)")
        if "early_stopping_min_delta" in set_ and self.early_stopping_patience is None:
            problems.append("early_stopping_min_delta set but early_stopping_patience is not")
        if self.min_lr > self.lr:
            problems.append(f"min_lr ({self.min_lr}) is above lr ({self.lr})")
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            problems.append(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def effective(self) -> "TrainConfig":
        """With the batch unit settled: `batch_tokens` given alone means no `batch_size`."""
        if self.batch_tokens is not None and "batch_size" not in self.model_fields_set:
            return self.model_copy(update={"batch_size": None})
        return self


def load_train_config(path: Path | None = None, *, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config from a YAML file (optional) with `overrides` (CLI flags that were given) on top.

    Raises `ConfigError` listing every problem: unreadable file, unknown keys, wrong types, bad combinations.
    """
    raw = read_yaml_mapping(Path(path)) if path is not None else {}
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_model(TrainConfig, raw, source=path).effective
