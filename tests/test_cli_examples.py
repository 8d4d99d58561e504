"""Every example in the help texts runs as written: each one in a folder holding the files it names (the inputs,
the demo data, model folders stood in for by the demo tokenizer and a tiny model), and each exits 0."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import DEMO_TOKENIZER, REPO

COMMAND_STARTS = ("python -m pipeline ", "torchrun ")
TOKENIZER_FOLDERS = ("Qwen2.5-7B-Instruct", "glm-4-9b-chat", "gpt2")  # stood in for by the demo tokenizer


def help_examples() -> list[tuple[str, str]]:
    """(command, example) for every example command line in the group's and each command's help, with `\\`
    continuation lines joined."""
    found = []
    for name, command in [("main", main), *main.commands.items()]:
        lines = iter(command.help.splitlines())
        for line in lines:
            line = line.strip()
            if not line.startswith(COMMAND_STARTS):
                continue
            while line.endswith("\\"):
                line = line[:-1] + next(lines).strip()
            found.append((name, line))
    return found


EXAMPLES = help_examples()


def test_every_command_has_examples():
    assert {name for name, _ in EXAMPLES} == {"main", *main.commands}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder holding every file the examples name; each example runs in a copy of it."""
    root = tmp_path_factory.mktemp("examples") / "ws"
    shutil.copytree(REPO / "data", root / "data")
    for name in TOKENIZER_FOLDERS:
        shutil.copytree(DEMO_TOKENIZER, root / name)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "Seven."}]
    (root / "chats.jsonl").write_text("".join(json.dumps({"messages": chat}) + "\n" for _ in range(3)))
    (root / "train.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "Hi"},
                                                                    {"from": "gpt", "value": "Hello."}]}]))
    (root / "alpaca.json").write_text(json.dumps([{"instruction": "Add 2 and 3.", "input": "", "output": "5"}] * 3))
    (root / "qa.csv").write_text("sys,prompt,answer\nBe brief.,Name a prime.,Seven.\nBe kind.,Hi,Hello.\n")
    (root / "export.csv").write_bytes(('messages\n"' + json.dumps(chat, ensure_ascii=False).replace('"', '""') + '"\n')
                                      .replace("Seven.", "七。").encode("gb18030"))
    with _cwd(root):
        assert _invoke(["preprocess", "--config", "data/preprocess.yaml", "--out", "out/shards"]).exit_code == 0
        shutil.copytree("out/shards", "out/main")  # the build a `diff` example compares with
        # the trainer's examples run on a few rows, so that each takes seconds
        few = (root / "data/samples/glm_messages.jsonl").read_text().splitlines(keepends=True)[:6]
        (root / "few.jsonl").write_text("".join(few))
        small = ["preprocess", "few.jsonl", "--out", "small-shards", "--eval-split", "0.3"]
        assert _invoke(small).exit_code == 0
    _tiny_model(root / "my-model", json.loads((root / "out/shards/manifest.json").read_text())["tokenizer"]["vocab_size"])
    return root


def _tiny_model(path: Path, vocab_size: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(path)


class _cwd:
    def __init__(self, path: Path):
        self.path, self.old = path, None

    def __enter__(self):
        self.old = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc):
        os.chdir(self.old)


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def _needs_cuda(argv: list[str]) -> bool:
    return "--quantize" in argv or "paged_adamw_32bit" in argv


@pytest.mark.parametrize("command, example", EXAMPLES, ids=[f"{c}-{k}" for k, (c, _) in enumerate(EXAMPLES)])
def test_help_example_runs_as_written(command, example, workspace, tmp_path):
    argv = shlex.split(example, comments=True)
    consumer = argv[argv.index("|") + 1 :] if "|" in argv else []  # jq, less: not ours
    argv = argv[: argv.index("|")] if consumer else argv
    if _needs_cuda(argv):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("QLoRA needs a CUDA device")
    root = tmp_path / "ws"
    shutil.copytree(workspace, root)
    if "train" in argv:
        shutil.rmtree(root / "out" / "shards")
        (root / "small-shards").rename(root / "out" / "shards")
    with _cwd(root):
        if "--resume" in argv:  # a run to continue
            assert _invoke([a for a in argv[3:] if a != "--resume"]).exit_code == 0
        if argv[0] == "torchrun":
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            launcher = [sys.executable, "-m", "torch.distributed.run"]
            done = subprocess.run(launcher + argv[1:], env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            return
        assert argv[:3] == ["python", "-m", "pipeline"], example
        result = _invoke(argv[3:])
    assert result.exit_code == 0, f"{example}\n{result.output}"
    if consumer[:1] == ["jq"]:
        json.loads(result.stdout)
