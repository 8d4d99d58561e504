"""Small fake `preprocess` outputs in the exact shard layout, for the trainer's tests.

`write_shards` writes them with the shard writer (train/, eval/, dataset_dict.json, manifest.json) and,
when asked, a real word-level tokenizer with a chat template in tokenizer/. Samples are random token ids with a
random-length untrained prompt (labels -100) and a trained reply (labels = input ids), so micro-batches differ in
how many tokens they train.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.shards.format import MANIFEST, MANIFEST_VERSION
from pipeline.shards.writer import Sample
from tests.shards.fake_output import write_output

REPO = Path(__file__).resolve().parents[2]
VOCAB = 64
SPECIAL = ["<pad>", "<|user|>", "<|assistant|>", "<|end|>"]  # ids 0..3; words w4 .. w63 follow
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' }} {{ m['content'] }} {{ '<|end|>' }} "
                 "{% endfor %}")


def make_samples(n: int, *, seed: int = 0, min_len: int = 6, max_len: int = 40, stride: int | None = None
                 ) -> list[dict]:
    """Random word ids; with `stride`, each sample counts from a random start by `stride` (modulo the words): a rule
    a tiny model learns in a few steps."""
    rng = np.random.default_rng(seed)
    words = VOCAB - len(SPECIAL)
    out = []
    for i in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        if stride is None:
            ids = rng.integers(4, VOCAB, size=length).astype(np.int32)
        else:
            ids = (len(SPECIAL) + (rng.integers(words) + stride * np.arange(length)) % words).astype(np.int32)
        prompt = int(rng.integers(1, length - 1))
        labels = ids.copy()
        labels[:prompt] = -100
        out.append({"input_ids": ids.tolist(), "labels": labels.tolist(), "length": length, "id": f"s{seed}-{i}",
                    "source": "fake.jsonl", "row": i + 1})
    return out


def write_shards(path: Path, *, n_train: int = 48, n_eval: int = 8, seed: int = 0, tokenizer: bool = False,
                 vocab_size: int = VOCAB, version: int = MANIFEST_VERSION, max_len: int = 40,
                 train_stride: int | None = None, eval_stride: int | None = None) -> Path:
    """Strides (see `make_samples`) that differ between the splits make eval loss rise as the model learns the train
    split's rule: an eval curve that bottoms out early, for early stopping. Written by the real shard writer (see
    `write_output`); a `version` other than the current one is patched in afterwards."""
    splits = {"train": make_samples(n_train, seed=seed, max_len=max_len, stride=train_stride)}
    if n_eval:
        splits["eval"] = make_samples(n_eval, seed=seed + 1000, max_len=max_len, stride=eval_stride)
    write_output(path, {name: [Sample(np.array(r["input_ids"], np.int32), np.array(r["labels"], np.int32), r["id"],
                                      r["source"], r["row"]) for r in rows] for name, rows in splits.items()},
                 vocab_size=vocab_size, eos_token_id=3, pad_token_id=0)
    (path / "tokenizer").mkdir(exist_ok=True)
    if tokenizer:
        save_word_tokenizer(path / "tokenizer")
    if version != MANIFEST_VERSION:
        manifest = json.loads((path / MANIFEST).read_text())
        (path / MANIFEST).write_text(json.dumps({**manifest, "version": version}))
    return path


def save_word_tokenizer(folder: Path) -> None:
    """A real fast tokenizer (word level, VOCAB entries) with a chat template, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), VOCAB)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<|end|>",
                                  additional_special_tokens=SPECIAL[1:])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(folder))


def run_cli(*args: str, env: dict | None = None, prelude: str = "", launcher: list[str] | None = None,
            timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m pipeline ...` in a fresh process (one thread), optionally with code run before the CLI."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **(env or {})}
    code = prelude + "\nimport sys\nfrom pipeline.cli import main\nsys.exit(main())\n"
    cmd = [*launcher, "-m", "pipeline", *args] if launcher else [sys.executable, "-c", code, *args]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def tiny_model(attn: str = "sdpa", seed: int = 0, arch: str = "llama", tied: bool = False):
    """A seeded 2-layer causal LM over VOCAB tokens; `tied`: its LM head shares the input embedding matrix."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    torch.manual_seed(seed)
    config = config_cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, use_cache=False,
                        tie_word_embeddings=tied)
    config._attn_implementation = attn
    return model_cls(config)


def copy_run_until(full: Path, part: Path, step: int) -> None:
    """`part` as `full`'s run directory was when killed right after its checkpoint of `step`: the checkpoints up to
    `step`, `metrics.jsonl` (holding later steps too: resume must drop them) and the ledger (the list of what the run
    wrote, which a resume may replace)."""
    from pipeline.outputs import LEDGER

    (part / "checkpoints").mkdir(parents=True)
    for ckpt in sorted((full / "checkpoints").glob("step_*.pt")):
        if int(ckpt.stem.split("_")[1]) <= step:
            shutil.copy(ckpt, part / "checkpoints")
    shutil.copy(full / "metrics.jsonl", part / "metrics.jsonl")
    shutil.copy(full / LEDGER, part / LEDGER)


def save_tiny_llama(path: Path, *, hidden: int = 32, layers: int = 1) -> Path:
    """A tiny random Llama saved with `save_pretrained` in fp32, vocabulary `VOCAB`: a `--model` directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                                 num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2)
                     ).save_pretrained(path)
    return path
