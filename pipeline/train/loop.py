"""Train a causal LM on pre-masked shards. One loop for CPU, GPU and DDP; it reads only the shards.

    python -m pipeline train --data out/shards --out out/run                      # tiny model, CPU is fine
    python -m pipeline train --config data/train.yaml --data out/shards --out out/run --resume
    python -m pipeline train --data out/shards --out out/run --model path/to/model --lora
    torchrun --standalone --nproc_per_node 4 -m pipeline train --data out/shards --out out/run

Order of work, top to bottom: system (ranks, device, precision), data (memory-mapped shards), model, optimizer,
resume, then the loop: set the LR, run the micro-steps (token-weighted loss), clip, step, evaluate, log, checkpoint
(on schedule, and at each new best eval loss), until the last step or early stopping. At the end: a last evaluation
and checkpoint, `final/` (the best or the last weights: save_pretrained + the shards' tokenizer files), `loss.png`,
a summary that says which step `final/` holds and why the run stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.errors import ConfigError
from pipeline.train.checkpoint import (list_checkpoints, load_checkpoint, load_model_state, rng_state,
                                       save_checkpoint, set_rng_state, write_best)
from pipeline.train.data import (Batch, MicroBatches, check_fits, collate, open_training_shards, plan_eval,
                                 steps_for_epochs)
from pipeline.train.early_stop import EvalTracker
from pipeline.train.loss import TrainedTokenLoss
from pipeline.train.lr import lr_at
from pipeline.train.metrics import plot_losses, read_metrics, records_to_keep
from pipeline.train.model import (build_model, load_trained_state, parameter_count, precision_for, save_final,
                                  trained_state)
from pipeline.train.neftune import NEFTune
from pipeline.train.optim import build_optimizer, require_bitsandbytes
from pipeline.train.reporter import Reporter, check_report_to
from pipeline.train.resume import check_resume, data_record
from pipeline.train.run_dir import claim_run_dir
from schemas.train_config import TrainConfig


@dataclass(frozen=True)
class TrainResult:
    steps: int
    first_loss: float | None
    last_loss: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    tokens_per_s: float
    padding_fraction: float
    run_dir: Path
    final_dir: Path
    final_step: int
    final_why: str  # which weights final/ holds, in words
    stopped: str  # why the run ended, in words

    def summary(self) -> str:
        fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        return "\n".join([
            f"trained {self.steps} steps: loss {fmt(self.first_loss)} -> {fmt(self.last_loss)}"
            + (f", eval loss {fmt(self.eval_loss)}" if self.eval_loss is not None else "")
            + (f", eval accuracy {self.eval_accuracy:.1%}" if self.eval_accuracy is not None else ""),
            f"stopped: {self.stopped}",
            f"throughput: {self.tokens_per_s:,.0f} tokens/s; padding: {self.padding_fraction:.1%} of positions",
            f"model + tokenizer: {self.final_dir}, step {self.final_step}: {self.final_why}",
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
    require_bitsandbytes(cfg)
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    try:
        result = _train(cfg, rank=rank, world=world, device_index=local_rank if use_cuda else None)
        if ddp:
            dist.barrier()  # rank 0 writes final/ last: no rank tears the group down while another still uses it
        return result
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
    # bf16: frozen weights stored in bf16, autocast; trained weights, optimizer state and the loss stay fp32
    precision = precision_for(cfg, device)
    autocast = precision.autocast(device)
    torch.manual_seed(cfg.seed)  # same init on every rank; per-rank dropout streams are split just below
    out = cfg.out
    check_report_to(cfg.report_to)

    # -- data: only the manifest and the memory-mapped Arrow files --------------------------------------------
    shards = open_training_shards(cfg.data, cfg.data_storage_options)
    token_info = shards.manifest.tokenizer  # ids and vocabulary size, without loading the tokenizer
    train_split, eval_split = shards.splits["train"], shards.splits.get("eval")
    pack_length = cfg.pack_length or int(train_split.lengths.max())
    check_fits(train_split, batch_tokens=cfg.batch_tokens, packing=cfg.packing, pack_length=pack_length)
    if eval_split is not None and len(eval_split):
        check_fits(eval_split, batch_tokens=cfg.batch_tokens, packing=cfg.packing,
                   pack_length=max(pack_length, int(eval_split.lengths.max())))
    else:
        eval_split = None
    if cfg.early_stopping_patience is not None and eval_split is None:
        raise ConfigError([f"early_stopping_patience needs an eval split, and {cfg.data} has none (preprocess with "
                           "--eval-split)"])
    pad_id = next(i for i in (token_info.pad_token_id, token_info.eos_token_id, 0) if i is not None)  # masked anyway
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
    # A run dir without a checkpoint (killed before its first one) holds nothing to continue: a fresh start over it
    # is allowed and starts clean.
    checkpoints = list_checkpoints(out)
    data = data_record(cfg.data, shards.path)
    if cfg.resume and not checkpoints:
        raise ConfigError([f"resume: no checkpoint in {out / 'checkpoints'} (a run stopped before its first "
                           "checkpoint has none): run the same command without --resume to start it from step 0"])
    if not cfg.resume and (checkpoints or (out / "final").exists()):
        held = f"checkpoint {checkpoints[-1].name}" if checkpoints else "a final model in final/"
        raise ConfigError([f"out: {out} already holds a run ({held}); pass --resume to continue it, or choose a "
                           "new --out"])
    ckpt = load_checkpoint(checkpoints[-1]) if cfg.resume else None
    schedule_changes, kept_metrics = {}, []
    tracker = EvalTracker(patience=cfg.early_stopping_patience, min_delta=cfg.early_stopping_min_delta)
    if ckpt is not None:
        schedule_changes = check_resume(ckpt, cfg, world=world, data=data, max_steps=max_steps)
        kept_metrics = records_to_keep(read_metrics(out / "metrics.jsonl"), step=ckpt["step"])
        tracker = EvalTracker.restore(ckpt["evals"], patience=tracker.patience, min_delta=tracker.min_delta)
    if ddp:
        dist.barrier()  # every rank has looked at `out` before rank 0 writes anything there

    # -- model and optimizer ----------------------------------------------------------------------------------
    longest = max(pack_length, int(eval_split.lengths.max()) if eval_split is not None else 0)
    model = build_model(cfg, precision=precision, device=device, vocab_size=token_info.vocab_size, max_length=longest,
                        pad_token_id=token_info.pad_token_id, bos_token_id=token_info.bos_token_id,
                        eos_token_id=token_info.eos_token_id)
    torch.manual_seed(cfg.seed + 1 + rank)  # dropout differs per rank; the data order does not use torch RNG
    raw_model = model
    loss_model = TrainedTokenLoss(raw_model)  # body -> trained positions -> head and cross-entropy in chunks
    model = DDP(loss_model, device_ids=[device.index] if use_cuda else None) if ddp else loss_model
    neftune = NEFTune(raw_model.get_input_embeddings(), cfg.neftune_alpha) if cfg.neftune_alpha else None
    params = [p for p in raw_model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params, fused=use_cuda)
    step = 0
    if ckpt is not None:
        load_trained_state(raw_model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        set_rng_state(ckpt["rng"][rank])  # the same number of ranks: checked above
        del ckpt  # free host memory

    n_params = parameter_count(raw_model)
    if master:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n", encoding="utf-8")
        changed = cfg.model_dump(mode="json", exclude_defaults=True)
        print(f"config: {json.dumps(changed, sort_keys=True)}")
        print(f"data: {len(train_split)} train samples"
              + (f", {len(eval_split)} eval" if eval_split is not None else "")
              + f", vocab {token_info.vocab_size}; {'packed rows of ' + str(pack_length) if cfg.packing else 'padded'}")
        print(f"model: {cfg.model}, {n_params / 1e6:.2f}M parameters ({sum(p.numel() for p in params) / 1e6:.2f}M "
              f"trained); {world} rank(s) x {cfg.grad_accum} micro-batches per step; {max_steps} steps"
              + (f", resuming at step {step}" if step else "") + f"; {precision.describe()} on {device.type}")
        if loss_model.full_logits_reason:
            print(f"loss: on the full logits, not in chunks: {loss_model.full_logits_reason}")
    reporter = Reporter(out, keep=kept_metrics, report_to=cfg.report_to, step=step, max_steps=max_steps) if master \
        else None
    if master and schedule_changes:
        reporter.note({"step": step, "resume_changes": schedule_changes})
        print(f"resume at step {step} with schedule changes (--allow-schedule-change): "
              + ", ".join(f"{k} {c['from']} -> {c['to']}" for k, c in schedule_changes.items()))
    rank_log = None
    if cfg.rank_log:
        (out / "ranks").mkdir(parents=True, exist_ok=True)
        rank_log = open(out / "ranks" / f"rank{rank}.jsonl", "a" if cfg.resume else "w", encoding="utf-8")
    eval_batches = _eval_plan(cfg, eval_split, pack_length=pack_length, rank=rank, world=world)

    def evaluate() -> dict[str, float]:
        """Token-weighted eval loss and token accuracy over the eval split (each rank a share), reduced over ranks,
        offered to the tracker; every rank gets the same numbers and so takes the same decisions."""
        loss_model.eval()  # not through DDP: ranks may run different numbers of eval batches
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, trained
        with torch.no_grad():
            for rows in eval_batches:
                batch = collate(eval_split, rows, pad_id=pad_id, packing=cfg.packing)
                with autocast:
                    sums = loss_model.eval_sums(**batch.model_inputs(device), labels=batch.labels.to(device))
                totals += torch.stack([x.double() for x in sums])
        if ddp:
            dist.all_reduce(totals)
        loss_model.train()
        loss_sum, correct, trained = totals.tolist()
        return {"eval_loss": loss_sum / max(trained, 1), "eval_accuracy": correct / max(trained, 1)}

    def checkpoint() -> None:
        """All ranks call this (it gathers their RNG states); rank 0 writes."""
        rngs = [None] * world
        if ddp:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if master:
            save_checkpoint(run_dir, {
                "model": trained_state(raw_model),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "micro_batch": step * per_step,  # the data position: global index of the next micro-batch
                "rng": rngs,
                "config": cfg.model_dump(mode="json"),
                "world_size": world,
                "data": data,
                "evals": tracker.state(),
            }, step=step, keep=cfg.keep_checkpoints, best=tracker.best_step)
            if tracker.best_step is not None:
                write_best(run_dir, step=tracker.best_step, eval_loss=tracker.best_loss)
        if ddp:
            dist.barrier()

    # -- the loop ---------------------------------------------------------------------------------------------
    model.train()
    first_loss = last_loss = None
    throughput = []
    while step < max_steps and not tracker.should_stop:
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
                               autocast=autocast, neftune=neftune)
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
        evals = evaluate() if is_eval else {}
        new_best = bool(evals) and tracker.update(step, evals["eval_loss"])
        done = step == max_steps or tracker.should_stop
        if master and (step % cfg.log_interval == 0 or step == 1 or is_eval or done):
            reporter.log({"step": step, "epoch": round(stream.epoch_of(first), 4), "loss": loss, "lr": lr,
                          "grad_norm": grad_norm.item(), "tokens_per_s": round(throughput[-1], 1),
                          "trained_tokens": int(counts[0].item()), "tokens": int(counts[1].item()),
                          "padding_fraction": round(1 - counts[1].item() / counts[2].item(), 4), **evals})
        if master:
            reporter.advance()
        if not done and (new_best or (cfg.save_interval > 0 and step % cfg.save_interval == 0)):
            checkpoint()  # a new best is kept whatever keep_checkpoints says: final/ may come from it

    # -- the end ----------------------------------------------------------------------------------------------
    if eval_split is not None and tracker.last_eval_step != step:
        evals = evaluate()
        tracker.update(step, evals["eval_loss"])
        if master:
            reporter.log({"step": step, **evals})
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
    reporter.close()
    final_step, final_why = _final_choice(cfg, tracker, step=step)
    if final_step != step:
        load_trained_state(raw_model, load_model_state(out, final_step))
    final = save_final(raw_model, run_dir, tokenizer_dir=shards.tokenizer_dir, lora=cfg.lora)
    records = reporter.read()
    plot_losses(records, out / "loss.png", final_step=final_step)
    losses = [r["loss"] for r in records if "loss" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    padding = [r["padding_fraction"] for r in records if "padding_fraction" in r]
    last_eval = next((r for r in reversed(records) if "eval_loss" in r), {})
    return TrainResult(steps=step, first_loss=losses[0] if losses else first_loss,
                       last_loss=losses[-1] if losses else last_loss, eval_loss=last_eval.get("eval_loss"),
                       eval_accuracy=last_eval.get("eval_accuracy"),
                       tokens_per_s=sum(speeds) / len(speeds) if speeds else 0.0,
                       padding_fraction=sum(padding) / len(padding) if padding else 0.0, run_dir=out, final_dir=final,
                       final_step=final_step, final_why=final_why,
                       stopped=_stop_reason(cfg, tracker, step=step, max_steps=max_steps))


def _final_choice(cfg: TrainConfig, tracker: EvalTracker, *, step: int) -> tuple[int, str]:
    """The step whose weights go to final/, and why: the lowest eval loss (`final: best`, with an eval split), else
    the last step."""
    if cfg.final == "last":
        return step, "the last step (final: last)"
    if tracker.best_step is None:
        return step, "the last step (no eval split to choose the best by)"
    return tracker.best_step, f"the lowest eval loss, {tracker.best_loss:.4f} (final: best)"


def _stop_reason(cfg: TrainConfig, tracker: EvalTracker, *, step: int, max_steps: int) -> str:
    if step < max_steps:  # the loop ends early only by early stopping
        return (f"early stopping at step {step}, after {tracker.evals_without_improvement} evaluations without "
                f"improvement (early_stopping_patience {cfg.early_stopping_patience}, early_stopping_min_delta "
                f"{cfg.early_stopping_min_delta:g}); best eval loss {tracker.best_loss:.4f} at step {tracker.best_step}")
    if cfg.max_steps is not None:
        return f"max_steps reached ({max_steps})"
    return f"epochs done ({cfg.epochs or 1.0:g} epochs, {max_steps} steps)"


def micro_steps(model: torch.nn.Module, batches: list[Batch], *, trained_total: torch.Tensor, world: int,
                device: torch.device, autocast=nullcontext(), neftune: NEFTune | None = None) -> torch.Tensor:
    """Forward and backward over one optimizer step's micro-batches on this rank; returns the summed token loss.
    `model` returns a batch's summed token loss (`TrainedTokenLoss`, DDP-wrapped under torchrun).

    Each micro-batch backpropagates sum(token losses) / `trained_total`, the trained tokens of the whole step over
    all micro-batches and ranks, so the accumulated gradient is that of the token-weighted mean loss, however the
    tokens are spread over micro-batches. DDP averages gradients over ranks when the last micro-batch's backward
    runs (the others skip the all-reduce, `no_sync`), hence the factor `world`. `neftune` noises the embeddings by
    each sample's length.
    """
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for micro, batch in enumerate(batches):
        sync = not isinstance(model, DDP) or micro == len(batches) - 1
        noise = neftune.sample_lengths(batch.sample_lengths) if neftune is not None else nullcontext()
        with (nullcontext() if sync else model.no_sync()), noise:
            with autocast:
                loss = model(**batch.model_inputs(device), labels=batch.labels.to(device, non_blocking=True))
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
