"""Train a causal LM on pre-masked shards. One loop for CPU, GPU and DDP; it reads only the shards.

    python -m pipeline train --data out/shards --out out/run                      # tiny model, CPU is fine
    python -m pipeline train --config data/train.yaml --data out/shards --out out/run --resume
    python -m pipeline train --data out/shards --out out/run --model path/to/model --lora
    torchrun --standalone --nproc_per_node 4 -m pipeline train --data out/shards --out out/run

Order of work, top to bottom: system (ranks, device, precision), data (memory-mapped shards), model, optimizer,
resume, then the loop: set the LR, run the micro-steps (token-weighted loss), clip, step, log, evaluate, checkpoint.
At the end: a last checkpoint, `final/` (save_pretrained + the shards' tokenizer files), `loss.png`, a summary.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from pipeline.errors import ConfigError
from pipeline.train.checkpoint import list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.train.data import Batch, MicroBatches, check_fits, collate, open_shards, plan_eval, steps_for_epochs
from pipeline.train.loss import token_loss_sum
from pipeline.train.lr import lr_at
from pipeline.train.metrics import MetricsLog, plot_losses
from pipeline.train.model import build_model, save_final
from pipeline.train.run_dir import claim_run_dir
from schemas.train_config import RESUME_FIXED, TrainConfig


@dataclass(frozen=True)
class TrainResult:
    steps: int
    first_loss: float | None
    last_loss: float | None
    eval_loss: float | None
    tokens_per_s: float
    padding_fraction: float
    run_dir: Path
    final_dir: Path

    def summary(self) -> str:
        fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        return "\n".join([
            f"trained {self.steps} steps: loss {fmt(self.first_loss)} -> {fmt(self.last_loss)}"
            + (f", eval loss {fmt(self.eval_loss)}" if self.eval_loss is not None else ""),
            f"throughput: {self.tokens_per_s:,.0f} tokens/s; padding: {self.padding_fraction:.1%} of positions",
            f"model + tokenizer: {self.final_dir}",
            f"metrics: {self.run_dir / 'metrics.jsonl'}, curve: {self.run_dir / 'loss.png'}, "
            f"checkpoints: {self.run_dir / 'checkpoints'}",
        ])


def train(cfg: TrainConfig) -> TrainResult | None:
    """Run training as configured. Returns the result on rank 0, None on other ranks."""
    # -- system -----------------------------------------------------------------------------------------------
    ddp = "WORLD_SIZE" in os.environ  # launched by torchrun, even with one rank: the same code path as many
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["device: 'cuda' requested but no CUDA device is available"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise ConfigError([f"device: this process is local rank {local_rank}, but only {torch.cuda.device_count()} "
                           "CUDA device(s) are visible: start at most that many processes per node (torchrun "
                           "--nproc_per_node), or train on the CPU with --device cpu"])
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    try:
        return _train(cfg, rank=rank, world=world, device_index=local_rank if use_cuda else None)
    finally:
        if ddp:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, *, rank: int, world: int, device_index: int | None) -> TrainResult | None:
    """The run on this rank; `device_index` is its CUDA device (checked in `train`), None on the CPU."""
    master = rank == 0
    ddp = dist.is_initialized()
    use_cuda = device_index is not None
    if use_cuda:
        device = torch.device("cuda", device_index)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        device = torch.device("cpu")
    # bf16 autocast on CUDA only; master weights and the loss stay fp32. A CPU run computes in fp32.
    bf16 = cfg.precision == "bf16" and use_cuda and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    torch.manual_seed(cfg.seed)  # same init on every rank; per-rank dropout streams are split just below
    out = cfg.out

    # -- data: only the manifest and the memory-mapped Arrow files --------------------------------------------
    shards = open_shards(cfg.data)
    train_split, eval_split = shards.splits["train"], shards.splits.get("eval")
    pack_length = cfg.pack_length or int(train_split.lengths.max())
    check_fits(train_split, batch_tokens=cfg.batch_tokens, packing=cfg.packing, pack_length=pack_length)
    if eval_split is not None and len(eval_split):
        check_fits(eval_split, batch_tokens=cfg.batch_tokens, packing=cfg.packing,
                   pack_length=max(pack_length, int(eval_split.lengths.max())))
    else:
        eval_split = None
    pad_id = next(i for i in (shards.pad_token_id, shards.eos_token_id, 0) if i is not None)  # masked anyway
    stream = MicroBatches(train_split, seed=cfg.seed, batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens,
                          bucket_batches=cfg.bucket_batches, packing=cfg.packing, pack_length=pack_length,
                          pad_id=pad_id)
    per_step = cfg.grad_accum * world  # micro-batches per optimizer step, all ranks
    max_steps = cfg.max_steps or steps_for_epochs(stream, epochs=cfg.epochs or 1.0, per_step=per_step)
    if cfg.warmup_steps >= max_steps:
        raise ConfigError([f"warmup_steps ({cfg.warmup_steps}) must be below the run's steps ({max_steps}, from "
                           f"epochs={cfg.epochs or 1.0})"])

    run_dir = claim_run_dir(cfg, world=world, writer=master)  # new, empty or a run of ours; refused otherwise

    # -- resume: refuse mismatches before the model is built --------------------------------------------------
    checkpoints = list_checkpoints(out)
    if cfg.resume and not checkpoints:
        raise ConfigError([f"resume: no checkpoint in {out / 'checkpoints'} to resume from"])
    if not cfg.resume and (checkpoints or (out / "metrics.jsonl").exists()):
        raise ConfigError([f"out: {out} already holds a run; pass --resume to continue it, or choose a new --out"])
    ckpt = load_checkpoint(checkpoints[-1]) if cfg.resume else None
    if ckpt is not None:
        old = ckpt["config"]
        diff = [f"{k}: checkpoint has {old.get(k)!r}, this run has {v!r}" for k in RESUME_FIXED
                if (v := cfg.model_dump(mode="json")[k]) != old.get(k)]
        if diff:
            raise ConfigError(["resume needs the checkpoint's values for these options:", *diff])
    if ddp:
        dist.barrier()  # every rank has looked at `out` before rank 0 writes anything there

    # -- model and optimizer ----------------------------------------------------------------------------------
    longest = max(pack_length, int(eval_split.lengths.max()) if eval_split is not None else 0)
    model = build_model(cfg, vocab_size=shards.vocab_size, max_length=longest, pad_token_id=shards.pad_token_id,
                        bos_token_id=shards.bos_token_id, eos_token_id=shards.eos_token_id).to(device)
    torch.manual_seed(cfg.seed + 1 + rank)  # dropout differs per rank; the data order does not use torch RNG
    raw_model = model
    if ddp:
        model = DDP(model, device_ids=[device.index] if use_cuda else None)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]  # matrices and embeddings; not norms or biases
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=use_cuda or None)
    step = 0
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        if len(ckpt["rng"]) == world:
            set_rng_state(ckpt["rng"][rank])
        del ckpt  # free host memory

    n_params = sum(p.numel() for p in raw_model.parameters())
    if master:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n", encoding="utf-8")
        changed = cfg.model_dump(mode="json", exclude_defaults=True)
        print(f"config: {json.dumps(changed, sort_keys=True)}")
        print(f"data: {len(train_split)} train samples"
              + (f", {len(eval_split)} eval" if eval_split is not None else "")
              + f", vocab {shards.vocab_size}; {'packed rows of ' + str(pack_length) if cfg.packing else 'padded'}")
        print(f"model: {cfg.model}, {n_params / 1e6:.2f}M parameters ({sum(p.numel() for p in params) / 1e6:.2f}M "
              f"trained); {world} rank(s) x {cfg.grad_accum} micro-batches per step; {max_steps} steps"
              + (f", resuming at step {step}" if step else "") + f"; {'bf16' if bf16 else 'fp32'} on {device.type}")
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=step if cfg.resume else None) if master else None
    rank_log = None
    if cfg.rank_log:
        (out / "ranks").mkdir(parents=True, exist_ok=True)
        rank_log = open(out / "ranks" / f"rank{rank}.jsonl", "a" if cfg.resume else "w", encoding="utf-8")
    eval_batches = _eval_plan(cfg, eval_split, pack_length=pack_length, rank=rank, world=world)

    def evaluate() -> float | None:
        """Token-weighted eval loss over the eval split (each rank a share), reduced over ranks."""
        if eval_split is None:
            return None
        raw_model.eval()  # not through DDP: ranks may run different numbers of eval batches
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            for rows in eval_batches:
                batch = collate(eval_split, rows, pad_id=pad_id, packing=cfg.packing)
                with autocast:
                    logits = raw_model(**batch.model_inputs(device)).logits
                totals[0] += token_loss_sum(logits, batch.labels).double()
                totals[1] += batch.trained
        if ddp:
            dist.all_reduce(totals)
        raw_model.train()
        return (totals[0] / totals[1].clamp(min=1)).item()

    def checkpoint() -> None:
        """All ranks call this (it gathers their RNG states); rank 0 writes."""
        rngs = [None] * world
        if ddp:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if master:
            save_checkpoint(run_dir, {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "micro_batch": step * per_step,  # the data position: global index of the next micro-batch
                "rng": rngs,
                "config": cfg.model_dump(mode="json"),
                "world_size": world,
            }, step=step, keep=cfg.keep_checkpoints)
        if ddp:
            dist.barrier()

    # -- the loop ---------------------------------------------------------------------------------------------
    model.train()
    bar = tqdm(total=max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (master and sys.stderr.isatty()))
    first_loss = last_loss = last_eval = None
    throughput = []
    while step < max_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, max_steps=max_steps,
                   schedule=cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        first = (step * world + rank) * cfg.grad_accum
        batches = [stream[k] for k in range(first, first + cfg.grad_accum)]
        # counts for the whole step, known before any forward: [trained tokens, real tokens, all positions]
        counts = torch.tensor([[b.trained, b.tokens, b.positions] for b in batches], dtype=torch.float64).sum(0)
        counts = counts.to(device)
        if ddp:
            dist.all_reduce(counts)
        trained_total = counts[0].clamp(min=1)
        loss_sum = micro_steps(model, batches, trained_total=trained_total, world=world, device=device,
                               autocast=autocast)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ddp:
            dist.all_reduce(loss_sum)
        loss = (loss_sum / trained_total).item()  # .item() waits for the device: the step's time is now real
        step += 1
        dt = time.perf_counter() - t0
        first_loss = loss if first_loss is None else first_loss
        last_loss = loss
        throughput.append(counts[1].item() / dt)
        if rank_log is not None:
            rank_log.write(json.dumps({"step": step, "ids": [i for b in batches for i in
                                                             train_split.ids(b.samples)]}) + "\n")
        is_eval = eval_split is not None and cfg.eval_interval > 0 and step % cfg.eval_interval == 0
        eval_loss = evaluate() if is_eval else None
        last_eval = eval_loss if eval_loss is not None else last_eval
        if master and (step % cfg.log_interval == 0 or step == 1 or is_eval or step == max_steps):
            record = {"step": step, "epoch": round(stream.epoch_of(first), 4), "loss": loss, "lr": lr,
                      "grad_norm": grad_norm.item(), "tokens_per_s": round(throughput[-1], 1),
                      "trained_tokens": int(counts[0].item()), "tokens": int(counts[1].item()),
                      "padding_fraction": round(1 - counts[1].item() / counts[2].item(), 4)}
            if eval_loss is not None:
                record["eval_loss"] = eval_loss
            metrics.write(record)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        bar.update(1)
        if cfg.save_interval > 0 and step % cfg.save_interval == 0 and step < max_steps:
            checkpoint()
    bar.close()

    # -- the end ----------------------------------------------------------------------------------------------
    if eval_split is not None and (cfg.eval_interval == 0 or max_steps % cfg.eval_interval):
        last_eval = evaluate()
        if master:
            metrics.write({"step": step, "eval_loss": last_eval})
    checkpoint()
    if rank_log is not None:
        digest = hashlib.sha256()
        for name, tensor in sorted(raw_model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        rank_log.write(json.dumps({"step": step, "weights_sha256": digest.hexdigest()}) + "\n")
        rank_log.close()
    if not master:
        return None
    final = save_final(raw_model, run_dir, tokenizer_dir=shards.tokenizer_dir, lora=cfg.lora)
    records = metrics.read()
    plot_losses(records, out / "loss.png")
    losses = [r["loss"] for r in records if "loss" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    padding = [r["padding_fraction"] for r in records if "padding_fraction" in r]
    return TrainResult(steps=step, first_loss=losses[0] if losses else first_loss,
                       last_loss=losses[-1] if losses else last_loss, eval_loss=last_eval,
                       tokens_per_s=sum(speeds) / len(speeds) if speeds else 0.0,
                       padding_fraction=sum(padding) / len(padding) if padding else 0.0, run_dir=out, final_dir=final)


def micro_steps(model: torch.nn.Module, batches: list[Batch], *, trained_total: torch.Tensor, world: int,
                device: torch.device, autocast=nullcontext()) -> torch.Tensor:
    """Forward and backward over one optimizer step's micro-batches on this rank; returns the summed token loss.

    Each micro-batch backpropagates sum(token losses) / `trained_total`, the trained tokens of the whole step over
    all micro-batches and ranks, so the accumulated gradient is that of the token-weighted mean loss, however the
    tokens are spread over micro-batches. DDP averages gradients over ranks when the last micro-batch's backward
    runs (the others skip the all-reduce, `no_sync`), hence the factor `world`.
    """
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for micro, batch in enumerate(batches):
        sync = not isinstance(model, DDP) or micro == len(batches) - 1
        with (nullcontext() if sync else model.no_sync()):
            with autocast:
                logits = model(**batch.model_inputs(device)).logits
            loss = token_loss_sum(logits, batch.labels)
            (loss * (world / trained_total)).backward()
        loss_sum += loss.detach().double()
    return loss_sum


def _eval_plan(cfg: TrainConfig, split, *, pack_length: int, rank: int, world: int) -> list[list[list[int]]]:
    """This rank's share of the eval micro-batches (fixed order), capped at `eval_batches` in all."""
    if split is None:
        return []
    plan = plan_eval(split.lengths, batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens, packing=cfg.packing,
                     pack_length=max(pack_length, int(split.lengths.max())))
    if cfg.eval_batches is not None:
        plan = plan[:cfg.eval_batches]
    return plan[rank::world]
