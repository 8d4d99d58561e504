"""`make bench-train`: this trainer against TRL's `SFTTrainer`, in one run, on the same shards, the same model and
the same hyperparameters.

Generates multi-turn conversations (the generator of `make bench`), writes shards with `python -m pipeline
preprocess`, builds a randomly initialised model once (cached under out/bench-train/models/ and reused), then trains
it with each trainer, every run in a fresh process so that its peak memory is its own:

    padded:  this trainer (length-grouped padded batches)   vs  TRL, padded batches (its own collator and sampler)
    packed:  this trainer with --packing                    vs  TRL with padding_free=True, over its bfd packing, so
                                                                that a step holds the same rows of up to max_length

TRL is given the shards' own rows (`input_ids` and `labels`) as a pre-tokenized dataset, whose `labels` column it
uses as it is; before any step is timed, the labels its collator builds are checked to equal this trainer's on a few
rows. Tokens/s: the non-pad tokens of the timed steps over their time; the time of each optimizer step is taken by
one global optimizer hook, the same for both trainers, and the first steps (warm-up) are left out. Peak memory: the
run's peak RSS (VmHWM) on CPU, `torch.cuda.max_memory_allocated` on GPU.

    python tools/bench_train.py                    # CPU: 151,665-token Qwen2 vocabulary, small body, fp32
    python tools/bench_train.py --device cuda      # GPU: Qwen2.5-0.5B shape in bf16 at 2,048 tokens; QLoRA 7B
    python tools/bench_train.py --smoke            # a minute-sized end-to-end check of the harness itself
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from tools.bench import REPO, SHARED, generate_corpus, peak_rss_mib, write_jsonl

DEMO_TOKENIZER = REPO / "data" / "tokenizer"
# The hyperparameters both trainers get (the lr schedule: cosine from LR to MIN_LR, no warmup, which both define the
# same way; the steps left out of the timing are not a warmup of the learning rate).
BATCH, LR, MIN_LR, BETAS, GRAD_CLIP, SEED = 4, 3e-4, 3e-5, (0.9, 0.95), 1.0, 0
QLORA = {"r": 16, "alpha": 16, "dropout": 0.05, "optim": "paged_adamw_32bit",
         "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
AIMS = {"tokens_per_s": 2.0, "peak": 0.5}  # on CPU: at least 2.0x TRL's tokens/s, at most 0.5x its peak memory


@dataclass(frozen=True)
class Scenario:
    """One table: a model, its shards and its settings, trained by both trainers in each mode."""

    title: str
    arch: dict[str, Any]  # AutoConfig.for_model keyword arguments
    saved_dtype: str  # the dtype the random weights are saved in
    tokenizer: Path
    max_length: int
    conversations: int
    join: int  # generated conversations joined into one sample (longer samples)
    device: str
    precision: str
    warmup: int  # optimizer steps left out of the timing
    steps: int  # timed optimizer steps
    modes: tuple[str, ...] = ("padded", "packed")
    gradient_checkpointing: bool = False
    qlora: bool = False
    aims: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def _tokenizer(preferred: str) -> tuple[Path, str | None]:
    path = SHARED / "tokenizers" / preferred
    if path.is_dir():
        return path, None
    return DEMO_TOKENIZER, (f"{path} is not present: the shards use the demo tokenizer (data/tokenizer, 4,000 ids); "
                            "the model keeps its full vocabulary, so the LM head costs the same")


def _qwen2(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict[str, Any]:
    return {"model_type": "qwen2", "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": intermediate,
            "max_position_embeddings": 32768, "tie_word_embeddings": True, "rms_norm_eps": 1e-6}


def scenarios(device: str, *, smoke: bool, steps: int | None, warmup: int | None) -> list[Scenario]:
    """What `--device` measures; `steps`/`warmup` override each scenario's own."""
    qwen, qwen_note = _tokenizer("qwen2.5")
    notes = (qwen_note,) if qwen_note else ()
    if smoke:
        found = [Scenario("smoke: Qwen2 shape, 8,192-token vocabulary, hidden 32, 1 layer; fp32, CPU, up to 512 tokens",
                          _qwen2(8192, 32, 1, 2, 1, 64), "fp32", DEMO_TOKENIZER, 512, 32, 1, "cpu", "fp32",
                          warmup=1, steps=2)]
    elif device == "cpu":
        found = [Scenario("Qwen2 architecture, Qwen2.5's 151,665-token vocabulary, hidden 256, 2 layers (tied "
                          "embeddings, as Qwen2.5-0.5B), random init; fp32, CPU, batch 4, up to 1,024 tokens",
                          _qwen2(151_665, 256, 2, 4, 2, 1024), "fp32", qwen, 1024, 512, 1, "cpu", "fp32",
                          warmup=1, steps=4, aims=True, notes=notes)]
    else:
        mistral, mistral_note = _tokenizer("openhermes-mistral")
        found = [
            Scenario("Qwen2.5-0.5B shape (151,936-row vocabulary, hidden 896, 24 layers), random init; bf16 "
                     "autocast with fp32 weights, CUDA, batch 4, up to 2,048 tokens",
                     _qwen2(151_936, 896, 24, 14, 2, 4864), "fp32", qwen, 2048, 512, 3, "cuda", "bf16",
                     warmup=5, steps=20, notes=notes),
            Scenario("QLoRA on a Mistral-7B shape (32,002-token vocabulary, hidden 4096, 32 layers), random init: "
                     "nf4 with bf16 compute, LoRA r 16 / alpha 16 / dropout 0.05 on the seven projections, "
                     "paged_adamw_32bit, gradient checkpointing; CUDA, batch 4, up to 2,048 tokens",
                     {"model_type": "mistral", "vocab_size": 32_002, "hidden_size": 4096, "num_hidden_layers": 32,
                      "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                      "max_position_embeddings": 32768, "tie_word_embeddings": False},
                     "bf16", mistral, 2048, 256, 3, "cuda", "bf16", warmup=3, steps=10, modes=("padded",),
                     gradient_checkpointing=True, qlora=True, notes=(mistral_note,) if mistral_note else ()),
        ]
    override = {k: v for k, v in (("steps", steps), ("warmup", warmup)) if v is not None}
    return [replace(s, **override) for s in found]


# --- the parent: data, model, runs, table ------------------------------------------------------------------------


def _conversations(count: int, join: int) -> list[dict[str, Any]]:
    """`count` samples, each `join` generated conversations in a row (one system message, then all their turns)."""
    rows = generate_corpus(count * join)
    return [{"messages": rows[k]["messages"] + [m for r in rows[k + 1:k + join] for m in r["messages"][1:]]}
            for k in range(0, count * join, join)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true"}


def _run_logged(command: list[str], log: Path, what: str) -> None:
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run(command, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-25:])
        raise click.ClickException(f"{what} failed (exit code {done.returncode}); the end of {log}:\n{tail}")


def _child(spec: dict[str, Any], work: Path, what: str) -> dict[str, Any]:
    """Run one job of this file in a fresh process; returns what it wrote (its measurements)."""
    spec_file = work / f"{spec['name']}.spec.json"
    spec = {**spec, "result": str(work / f"{spec['name']}.result.json")}
    spec_file.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    _run_logged([sys.executable, "-m", "tools.bench_train", "--child", str(spec_file)],
                work / f"{spec['name']}.log", what)
    return json.loads(Path(spec["result"]).read_text(encoding="utf-8"))


def _model(scenario: Scenario, cache: Path, work: Path) -> Path:
    """The scenario's random-init model, saved once with save_pretrained and reused."""
    key = hashlib.sha256(json.dumps([scenario.arch, scenario.saved_dtype], sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"{scenario.arch['model_type']}-{key}"
    if not (path / "config.json").is_file():
        click.echo(f"building the random-init model once: {path}")
        cache.mkdir(parents=True, exist_ok=True)
        _child({"name": "build-model", "kind": "model", "arch": scenario.arch, "dtype": scenario.saved_dtype,
                "device": scenario.device, "out": str(path)}, work, "building the model")
    return path


def _shards(scenario: Scenario, work: Path) -> Path:
    corpus = write_jsonl(work / "conversations.jsonl", _conversations(scenario.conversations, scenario.join))
    shards = work / "shards"
    _run_logged([sys.executable, "-m", "pipeline", "preprocess", str(corpus), "--tokenizer", str(scenario.tokenizer),
                 "--max-length", str(scenario.max_length), "--workers", str(os.cpu_count() or 1), "--out", str(shards)],
                work / "preprocess.log", "preprocess")
    return shards


def _ours_options(scenario: Scenario, mode: str, shards: Path, model: Path, out: Path) -> dict[str, Any]:
    """This trainer's options, as `python -m pipeline train` flags would give them."""
    options = {"data": str(shards), "out": str(out), "model": str(model), "batch_size": BATCH, "grad_accum": 1,
               "lr": LR, "min_lr": MIN_LR, "schedule": "cosine", "warmup_steps": 0, "beta1": BETAS[0],
               "beta2": BETAS[1], "weight_decay": 0.0, "grad_clip": GRAD_CLIP, "seed": SEED,
               "max_steps": scenario.warmup + scenario.steps, "precision": scenario.precision,
               "device": scenario.device, "log_interval": 1, "gradient_checkpointing": scenario.gradient_checkpointing,
               "packing": mode == "packed"}
    if mode == "packed":
        options["pack_length"] = scenario.max_length
    if scenario.qlora:
        options.update({"quantize": "4bit", "lora": True, "lora_r": QLORA["r"], "lora_alpha": QLORA["alpha"],
                        "lora_dropout": QLORA["dropout"], "lora_target_modules": QLORA["targets"],
                        "optim": QLORA["optim"]})
    return options


def _missing_options(options: dict[str, Any]) -> list[str]:
    from schemas.train_config import TrainConfig

    return sorted(set(options) - set(TrainConfig.model_fields))


@dataclass(frozen=True)
class Measured:
    name: str
    steps: int
    tokens: int
    seconds: float
    cpu_seconds: float  # the process's CPU time over the same steps (all its threads)
    peak_mib: float
    first_loss: float
    last_loss: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def cpu_rate(self) -> float:
        """Tokens per CPU second: less sensitive than tokens/s to other work on a shared machine."""
        return self.tokens / self.cpu_seconds


def _measured(name: str, result: dict[str, Any], scenario: Scenario) -> Measured:
    """The timed steps: from the end of the last warm-up step to the end of the last step."""
    ends, cpu, tokens, losses = result["step_ends"], result["step_cpu"], result["tokens"], result["losses"]
    total, first = scenario.warmup + scenario.steps, scenario.warmup - 1
    if len(ends) != total or len(tokens) != total:
        raise click.ClickException(f"{name}: expected {total} optimizer steps, saw {len(ends)} (and {len(tokens)} "
                                   "token counts): the timing would not be per step")
    return Measured(name, scenario.steps, sum(tokens[scenario.warmup:]), ends[-1] - ends[first], cpu[-1] - cpu[first],
                    result["peak_cuda_mib"] if scenario.device == "cuda" else result["peak_rss_mib"],
                    losses[0], losses[-1])


def _aim(ratio: float, aim: float, *, at_least: bool) -> str:
    met = ratio >= aim if at_least else ratio <= aim
    return f"{'≥' if at_least else '≤'} {aim:.1f}x: {'met' if met else 'not met'}"


def _print_tables(scenario: Scenario, measured: dict[tuple[str, str], Measured]) -> None:
    memory = "peak CUDA MiB" if scenario.device == "cuda" else "peak RSS MiB"
    click.echo(f"\n| run | steps | tokens | seconds | tokens/s | CPU s | {memory} | loss first → last |")
    click.echo("|---|---:|---:|---:|---:|---:|---:|---|")
    for m in measured.values():
        click.echo(f"| {m.name:<42} | {m.steps:>5} | {m.tokens:>9,} | {m.seconds:7.1f} | {m.rate:>8,.0f} "
                   f"| {m.cpu_seconds:7.1f} | {m.peak_mib:>8,.0f} | {m.first_loss:6.3f} → {m.last_loss:6.3f} |")
    click.echo("\n| this trainer / TRL | tokens/s | aim | peak memory | aim | tokens per CPU s |")
    click.echo("|---|---:|---|---:|---|---:|")
    for mode in scenario.modes:
        ours, trl = measured["ours", mode], measured["trl", mode]
        speed, memory_ratio = ours.rate / trl.rate, ours.peak_mib / trl.peak_mib
        speed_aim = _aim(speed, AIMS["tokens_per_s"], at_least=True) if scenario.aims else "-"
        memory_aim = _aim(memory_ratio, AIMS["peak"], at_least=False) if scenario.aims else "-"
        click.echo(f"| {MODE_NAMES[mode]:<22} | {speed:5.2f}x | {speed_aim:<15} | {memory_ratio:5.2f}x "
                   f"| {memory_aim:<15} | {ours.cpu_rate / trl.cpu_rate:5.2f}x |")


RUN_NAMES = {("ours", "padded"): "chatshard train, padded (length-grouped)",
             ("trl", "padded"): "TRL SFTTrainer, padded",
             ("ours", "packed"): "chatshard train --packing",
             ("trl", "packed"): "TRL SFTTrainer, padding_free (bfd packing)"}
MODE_NAMES = {"padded": "padded", "packed": "packing / padding_free"}


def bench(scenario: Scenario, work_root: Path) -> None:
    """Measure one scenario and print its tables."""
    click.echo(f"\n### {scenario.title}\n")
    for note in scenario.notes:
        click.echo(f"note: {note}")
    missing = _missing_options(_ours_options(scenario, "padded", Path(), Path(), Path()))
    if missing:
        click.echo(f"skipped: this trainer has no option {', '.join(missing)} yet (TrainConfig); run this again once "
                   "it has")
        return
    with tempfile.TemporaryDirectory(dir=work_root, prefix="run-") as tmp:
        work = Path(tmp)
        shards = _shards(scenario, work)
        manifest = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))["splits"]["train"]
        click.echo(f"shards: {manifest['rows']:,} samples, {manifest['tokens']:,} tokens "
                   f"({manifest['trained_tokens'] / manifest['tokens']:.0%} trained), tokenizer {scenario.tokenizer}")
        model = _model(scenario, work_root / "models", work)
        measured, label_checks, attention = {}, [], {}
        for mode in scenario.modes:
            for trainer in ("ours", "trl"):
                name = f"{trainer}-{mode}"
                out = work / name
                spec = {"name": name, "kind": trainer, "mode": mode, "out": str(out), "device": scenario.device}
                if trainer == "ours":
                    spec["options"] = _ours_options(scenario, mode, shards, model, out)
                else:
                    spec.update(data=str(shards), model=str(model), steps=scenario.warmup + scenario.steps,
                                max_length=scenario.max_length, precision=scenario.precision,
                                gradient_checkpointing=scenario.gradient_checkpointing, qlora=scenario.qlora)
                click.echo(f"running {RUN_NAMES[trainer, mode]} ...", err=True)
                result = _child(spec, work, RUN_NAMES[trainer, mode])
                shutil.rmtree(out, ignore_errors=True)  # checkpoints and final/: made by this run, not needed
                if trainer == "trl":
                    if not result["labels_equal"]:
                        raise click.ClickException(
                            f"TRL's labels differ from this trainer's on {result['label_samples']} {mode} samples: "
                            "the runs would not be of equal work")
                    label_checks.append(f"{result['label_samples']} {mode} samples")
                    attention[mode] = result["attention"]
                measured[trainer, mode] = _measured(RUN_NAMES[trainer, mode], result, scenario)
    _print_tables(scenario, measured)
    click.echo(f"\nsteps: {scenario.steps} timed after {scenario.warmup} warm-up step(s); tokens: the non-pad tokens "
               f"of the timed steps; CPU s: the process's CPU time over them. Labels checked equal (TRL's collator vs "
               f"this trainer's) on {' and '.join(label_checks)}. TRL attention: "
               f"{', '.join(f'{m}: {a}' for m, a in attention.items())}. Gradient checkpointing: "
               f"{'on' if scenario.gradient_checkpointing else 'off'} in both.")


def _provenance() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " with uncommitted changes" if git("status", "--porcelain", "--", "pipeline", "schemas") else ""
    from importlib.metadata import version

    versions = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "trl", "peft"))
    return f"trainer at commit {commit}{dirty}; {versions}; {os.cpu_count()} cores"


# --- the child: one job in its own process ------------------------------------------------------------------------


def run_child(spec_file: Path) -> None:
    """Run one job; write its measurements, the time of every optimizer step and the process's peak memory."""
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    cuda = spec["device"] == "cuda"
    step_ends: list[float] = []
    step_cpu: list[float] = []

    def on_step(optimizer, args, kwargs) -> None:  # every optimizer's step, whichever trainer made it
        if cuda:
            torch.cuda.synchronize()
        step_ends.append(time.perf_counter())
        step_cpu.append(time.process_time())

    register_optimizer_step_post_hook(on_step)
    result = {"model": _build_model, "ours": _train_ours, "trl": _train_trl}[spec["kind"]](spec)
    result.update(step_ends=step_ends, step_cpu=step_cpu, peak_rss_mib=peak_rss_mib(),
                  peak_cuda_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else None)
    Path(spec["result"]).write_text(json.dumps(result), encoding="utf-8")


def _build_model(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**spec["arch"])
    torch.manual_seed(SEED)
    with torch.device("cuda" if spec["device"] == "cuda" else "cpu"):  # a 7B init is quick on the GPU
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[
            spec["dtype"]]))
    out = Path(spec["out"])
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))  # new: nothing of anyone's is replaced
    model.save_pretrained(tmp)
    tmp.rename(out)
    return {}


def _train_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """This trainer through its public entry point, `train(TrainConfig)`; per-step tokens from its metrics.jsonl."""
    from pipeline.train.loop import train
    from schemas.train_config import load_train_config

    train(load_train_config(None, overrides=spec["options"]))
    records = [json.loads(line) for line in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in records if "tokens" in r and "loss" in r]
    return {"tokens": [r["tokens"] for r in steps], "losses": [r["loss"] for r in steps]}


def _train_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL's SFTTrainer, its labels checked against this trainer's first, then trained."""
    trainer = trl_trainer(spec)
    checked, equal = compare_labels(trainer, Path(spec["data"]), packed=spec["mode"] == "packed")
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"tokens": trainer.step_tokens, "losses": losses, "label_samples": checked, "labels_equal": equal,
            "attention": trainer.model.config._attn_implementation}


def trl_trainer(spec: dict[str, Any]):
    """TRL's SFTTrainer on the shards' rows (`input_ids`, `labels`: used as they are), with the same model, batch,
    schedule, optimizer and steps as this trainer's run; it counts each micro-batch's non-pad tokens."""
    import importlib.util

    import datasets
    import torch
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    packed, cuda, qlora = spec["mode"] == "packed", spec["device"] == "cuda", spec["qlora"]

    class CountingSFTTrainer(SFTTrainer):
        step_tokens: list[int]

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")  # none in a padding-free row, which holds no padding
            self.step_tokens.append(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    rows = datasets.load_from_disk(spec["data"], keep_in_memory=True)["train"].select_columns(["input_ids", "labels"])
    # padding_free is made for flash attention's variable-length kernels; without them (CPU), sdpa gets a
    # block-diagonal mask that transformers builds from the position_ids
    attention = "flash_attention_2" if packed and cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    dtype = torch.bfloat16 if qlora else torch.float32  # QLoRA's frozen base in bf16; otherwise fp32 weights
    extra: dict[str, Any] = {}
    if qlora:
        from peft import LoraConfig
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=False)
        extra["peft_config"] = LoraConfig(task_type="CAUSAL_LM", r=QLORA["r"], lora_alpha=QLORA["alpha"],
                                          lora_dropout=QLORA["dropout"], target_modules=QLORA["targets"])
    args = SFTConfig(
        output_dir=spec["out"], max_steps=spec["steps"], per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": MIN_LR}, warmup_steps=0, adam_beta1=BETAS[0], adam_beta2=BETAS[1],
        weight_decay=0.0, max_grad_norm=GRAD_CLIP, optim=QLORA["optim"] if qlora else "adamw_torch", seed=SEED,
        bf16=spec["precision"] == "bf16" and cuda, use_cpu=not cuda,
        gradient_checkpointing=spec["gradient_checkpointing"], logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
        max_length=spec["max_length"] if packed else None, packing=packed, packing_strategy="bfd",
        padding_free=packed, model_init_kwargs={"dtype": dtype, "attn_implementation": attention})
    trainer = CountingSFTTrainer(model=spec["model"], args=args, train_dataset=rows,
                                 processing_class=AutoTokenizer.from_pretrained(Path(spec["data"]) / "tokenizer"),
                                 **extra)
    trainer.step_tokens = []
    return trainer


def compare_labels(trainer, shards: Path, *, packed: bool, rows: int = 8) -> tuple[int, bool]:
    """Collate `rows` of TRL's prepared rows, spread over the dataset (bfd packing puts the longest samples alone in
    its first rows), with TRL's own collator; cut the batch back into samples, and compare each sample's labels with
    those this trainer's `collate` gives the same sample (padded, or packed: first label ignored). Returns (samples
    compared, all equal)."""
    import torch

    from pipeline.train.data import IGNORE_INDEX, collate, open_shards

    split = open_shards(shards).splits["train"]
    index = {tuple(split.sample(i)[0].tolist()): i for i in range(len(split))}
    prepared = trainer.train_dataset
    picks = sorted({k * (len(prepared) - 1) // max(1, rows - 1) for k in range(rows)})
    batch = trainer.data_collator([prepared[i] for i in picks])
    if packed:  # one flattened row; samples start where position_ids restart
        ids, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
        starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
        samples = [(ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:])]
        equal = True
    else:
        mask = batch["attention_mask"].bool()
        samples = [(batch["input_ids"][r][mask[r]], batch["labels"][r][mask[r]]) for r in range(len(mask))]
        equal = bool((batch["labels"][~mask] == IGNORE_INDEX).all())
    for ids, labels in samples:
        i = index.get(tuple(ids.tolist()))
        ours = collate(split, [[i]], pad_id=0, packing=packed).labels[0] if i is not None else None
        equal = equal and ours is not None and torch.equal(labels.long(), ours)
    return len(samples), equal


# --- command line ---------------------------------------------------------------------------------------------------


@click.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cpu: the small-body 151k-vocabulary model in fp32; cuda: the 0.5B-class model in bf16 and QLoRA "
                   "on a 7B-class one.")
@click.option("--steps", type=click.IntRange(min=1), help="Timed optimizer steps (default: per scenario).")
@click.option("--warmup", type=click.IntRange(min=1), help="Steps run before the timing starts (default: per "
              "scenario).")
@click.option("--smoke", is_flag=True, help="A minuscule model and a few steps: checks the harness end to end.")
@click.option("--work", type=click.Path(path_type=Path), default=REPO / "out" / "bench-train", show_default=True,
              help="Cached models (models/) and each scenario's temporary shards and runs (removed at the end).")
@click.option("--child", type=click.Path(path_type=Path, exists=True), hidden=True)
def main(device: str, steps: int | None, warmup: int | None, smoke: bool, work: Path, child: Path | None) -> None:
    """Benchmark `python -m pipeline train` against TRL's SFTTrainer: tokens/s, peak memory and their ratios."""
    if child is not None:
        run_child(child)
        return
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise click.UsageError("--device cuda: no CUDA device is available here (use --device cpu)")
    work.mkdir(parents=True, exist_ok=True)
    click.echo(f"Benchmark against TRL: {_provenance()}")
    click.echo(f"both trainers: batch {BATCH}, lr {LR} cosine to {MIN_LR}, no lr warmup, AdamW betas {BETAS}, "
               f"weight decay 0, grad clip {GRAD_CLIP}, seed {SEED}, one process")
    for scenario in scenarios(device, smoke=smoke, steps=steps, warmup=warmup):
        bench(scenario, work)


if __name__ == "__main__":
    main()
