"""The trainer end to end, on fake shards and tiny models: outputs, exact resume, LoRA, shards-only, DDP, CLI."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.train.loop import train
from schemas.train_config import load_train_config
from tests.train.train_helpers import REPO, VOCAB, copy_run_until, run_cli, save_tiny_llama, write_shards

FAST = {"tiny_hidden": 32, "tiny_heads": 2, "batch_size": 4, "lr": 3e-3, "min_lr": 3e-4}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=24, n_eval=4, tokenizer=True)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny pretrained model dir (save_pretrained), vocabulary as large as the shards'."""
    return save_tiny_llama(tmp_path_factory.mktemp("model") / "m")


def run(shards, out, **kw):
    torch.set_num_threads(1)
    return train(load_train_config(overrides={"data": str(shards), "out": str(out), **FAST, **kw}))


def losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_outputs_and_final_model(shards, tmp_path):
    out = tmp_path / "run"
    result = run(shards, out, max_steps=12, eval_interval=6, grad_accum=2, gradient_checkpointing=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "trained_tokens", "padding_fraction"):
        assert key in records[0]
    assert "eval_loss" in records[5] and "eval_loss" in records[11]
    assert result.last_loss < result.first_loss
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.vocab_size == VOCAB
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "w5 w6"}], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids == [1, 5, 6, 3]
    assert "trained 12 steps" in result.summary()


def test_resume_is_exact(shards, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run(shards, full, max_steps=6, save_interval=3, packing=True, batch_size=2)
    copy_run_until(full, part, 3)
    run(shards, part, max_steps=6, save_interval=3, packing=True, batch_size=2, resume=True)
    assert losses(part) == losses(full) and len(losses(full)) == 6
    a = torch.load(full / "checkpoints" / "step_0000006.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoints" / "step_0000006.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_options(shards, tmp_path):
    out = tmp_path / "run"
    run(shards, out, max_steps=2)
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size: checkpoint has 4, this run has 2"):
        run(shards, out, max_steps=4, batch_size=2, resume=True)
    with pytest.raises(ConfigError, match="already holds a run"):
        run(shards, out, max_steps=4)


def test_lora_on_a_saved_model(shards, saved_model, tmp_path):
    out = tmp_path / "run"
    overrides = {k: v for k, v in FAST.items() if not k.startswith("tiny_")}
    torch.set_num_threads(1)
    train(load_train_config(overrides={"data": str(shards), "out": str(out), "model": str(saved_model), **overrides,
                                       "max_steps": 3, "lora": True, "lora_r": 4, "lora_target_modules": ["q_proj"]}))
    assert (out / "adapter" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(saved_model).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all("q_proj" in k for k in changed)  # only the adapted layers moved (merged in)


def test_full_logits_fallback_says_so_once(shards, tmp_path, capsys):
    from transformers import GraniteConfig, GraniteForCausalLM

    model = tmp_path / "granite"  # logits divided by a scale: the chunked loss does not apply
    GraniteForCausalLM(GraniteConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2, logits_scaling=4.0)
                       ).save_pretrained(model)
    overrides = {k: v for k, v in FAST.items() if not k.startswith("tiny_")}
    torch.set_num_threads(1)
    result = train(load_train_config(overrides={"data": str(shards), "out": str(tmp_path / "run"), "model": str(model),
                                                **overrides, "max_steps": 2, "eval_interval": 1}))
    printed = capsys.readouterr().out
    assert printed.count("loss: on the full logits") == 1 and "'granite'" in printed, printed
    assert result.eval_loss is not None and len(losses(tmp_path / "run")) == 2


BLOCK_TOKENIZERS = """
import sys
for name in ("tokenizers", "jinja2", "transformers.models.auto.tokenization_auto"):
    sys.modules[name] = None  # any import of these now fails; transformers sees them as not installed
"""


def test_reads_only_the_shards(shards, saved_model, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(shards), "--out", str(out), "--model", str(saved_model),
                   "--max-steps", "2", "--batch-size", "4", prelude=BLOCK_TOKENIZERS)
    assert proc.returncode == 0, proc.stderr
    assert (out / "final" / "tokenizer.json").exists() and (out / "final" / "model.safetensors").exists()


def test_torchrun_two_ranks(shards, tmp_path):
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = run_cli("train", "--data", str(shards), "--out", str(out), "--max-steps", "3", "--batch-size", "2",
                   "--grad-accum", "2", "--tiny-hidden", "32", "--tiny-heads", "2", "--rank-log", "--device", "cpu",
                   launcher=launcher, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [[json.loads(line) for line in (out / "ranks" / f"rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    ids = [[i for rec in log if "ids" in rec for i in rec["ids"]] for log in logs]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])  # disjoint data (3 steps x 8 < 24 samples)
    assert logs[0][-1]["weights_sha256"] == logs[1][-1]["weights_sha256"]  # identical weights at the end
    assert len(losses(out)) == 3 and (out / "final" / "config.json").exists()
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"written by 2 rank\(s\), this run has 1; resume with 2"):
        run(shards, out, max_steps=3, batch_size=2, grad_accum=2, lr=3e-4, min_lr=3e-5, device="cpu", resume=True)


# Loaded by each rank before the CLI: every download from object storage is appended to $DOWNLOAD_LOG.
_LOG_DOWNLOADS = """
import os
from pipeline.storage import Store

download = Store.download
def logged(self, rel, local):
    with open(os.environ["DOWNLOAD_LOG"], "a") as log:
        log.write(rel + "\\n")
    download(self, rel, local)
Store.download = logged
"""


def test_torchrun_ranks_reading_from_object_storage_download_each_file_once(shards, s3_env, tmp_path):
    pytest.importorskip("s3fs")
    from pipeline.storage import open_store

    url = f"s3://{s3_env}/shards"
    open_store(url).upload((p, p.relative_to(shards).as_posix()) for p in sorted(shards.rglob("*")) if p.is_file())
    hook, log = tmp_path / "hook", tmp_path / "downloads.log"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_LOG_DOWNLOADS)
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "DOWNLOAD_LOG": str(log), "CHATSHARD_CACHE": str(tmp_path / "c")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = run_cli("train", "--data", url, "--out", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2",
                   "--tiny-hidden", "32", "--tiny-heads", "2", "--device", "cpu", launcher=launcher, env=env,
                   timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fetched = log.read_text().split()
    assert "train/data-00000-of-00001.arrow" in fetched and len(fetched) == len(set(fetched)), fetched


def test_cli_errors_exit_2_without_traceback(shards, saved_model, tmp_path):
    runner = CliRunner()
    cases = [
        (["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such shard directory"),
        (["train", "--data", str(shards), "--out", str(tmp_path / "o"), "--epochs", "1", "--max-steps", "3"],
         "max_steps and epochs"),
        (["train", "--data", str(shards), "--out", str(tmp_path / "o"), "--batch-size", "0", "--lr", "-1"],
         "batch_size: Input should be greater than or equal to 1\n  - lr: Input should be greater than 0"),
        (["train", "--data", str(shards), "--out", str(tmp_path / "o"), "--packing", "--pack-length", "8"],
         "pack_length (8) is below the longest train sample"),
        (["train", "--out", str(tmp_path / "o")], "data: Field required"),
    ]
    small = tmp_path / "small"
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB // 2, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(small)
    cases.append((["train", "--data", str(shards), "--out", str(tmp_path / "o2"), "--model", str(small),
                   "--max-steps", "1"], "larger than the model's embedding table"))
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output
    assert "Examples:" in runner.invoke(main, ["train", "--help"]).output


def test_trains_on_the_demo_shards_from_object_storage(s3_env, tmp_path, monkeypatch):
    pytest.importorskip("s3fs")
    from pipeline.remote_run import preprocess_to_store
    from schemas.config import load_config
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)  # the demo config names its inputs from the repository root
    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "cache"))
    url = f"s3://{s3_env}/demo"
    preprocess_to_store(load_config(REPO / "data" / "preprocess.yaml", {}), url)
    out = tmp_path / "run"
    result = run(url, out, max_steps=3)
    assert len(losses(out)) == 3 and result.last_loss > 0
    ckpt = torch.load(sorted((out / "checkpoints").iterdir())[-1], weights_only=False)
    assert ckpt["data"]["path"] == url
    assert json.loads((out / "config.json").read_text())["data"] == url


def test_trains_from_object_storage_with_the_data_storage_options_and_no_aws_variables(shards, s3_env, tmp_path,
                                                                                       monkeypatch):
    pytest.importorskip("s3fs")
    import os

    from pipeline.storage import open_store

    url = f"s3://{s3_env}/shards"
    open_store(url).upload((p, p.relative_to(shards).as_posix()) for p in sorted(shards.rglob("*")) if p.is_file())
    options = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"], "key": "testing", "secret": "s3cr3t-value"}
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    run(url, out, max_steps=2, data_storage_options={**options, "secret": "testing"})
    assert len(losses(out)) == 2
    assert "data_storage_options" not in (out / "config.json").read_text()
