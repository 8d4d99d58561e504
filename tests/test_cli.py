"""The preprocess command and its config: exit codes, messages, flags over YAML (CliRunner, in process)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import click
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import ConfigError, InputError, OptionError, OutputError, PipelineError
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER, REPO


@pytest.fixture
def chats(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": f"a{k}"}]} for k in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    return path


def test_preprocess_writes_shards_and_prints_the_accounting(tmp_path, chats):
    result = CliRunner().invoke(main, ["preprocess", str(chats), "--tokenizer", str(DEMO_TOKENIZER),
                                       "--out", str(tmp_path / "out"), "--max-length", "64"])
    assert result.exit_code == 0, result.output
    assert "read 6  written 5  rejected 1  filtered 0" in result.output
    assert "rejected: invalid_json: 1" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["truncation"]["max_length"] == 64


def test_flags_override_the_config_file(tmp_path, chats):
    config = tmp_path / "run.yaml"
    config.write_text(f"inputs: [{chats}]\nrender:\n  tokenizer: {DEMO_TOKENIZER}\nmask:\n  last_turn_only: true\n"
                      "truncation:\n  max_length: 100\n")
    result = CliRunner().invoke(main, ["preprocess", "--config", str(config), "--out", str(tmp_path / "out"),
                                       "--max-length", "50", "--roles-to-train", "assistant,user"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["truncation"]["max_length"] == 50
    assert manifest["config"]["mask"]["roles_to_train"] == ["assistant", "user"]
    assert manifest["config"]["mask"]["last_turn_only"] is True


def test_config_problems_are_all_listed_and_exit_2(tmp_path, chats):
    config = tmp_path / "bad.yaml"
    config.write_text("mask:\n  preset: glm5\n  train_on_everything: true\ntruncation:\n  max_length: many\n")
    result = CliRunner().invoke(main, ["preprocess", str(chats), "--config", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    for expected in ("mask.preset", "mask.train_on_everything", "truncation.max_length"):
        assert expected in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_missing_input_and_bad_tokenizer_are_clear_errors(tmp_path, chats):
    missing = CliRunner().invoke(main, ["preprocess", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "nope.jsonl" in missing.output
    (tmp_path / "empty").mkdir()
    bad_tok = CliRunner().invoke(main, ["preprocess", str(chats), "--tokenizer", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert bad_tok.exit_code == 1 and "cannot load tokenizer" in bad_tok.output
    assert "Traceback" not in missing.output + bad_tok.output


def test_bad_combinations_name_both_fields():
    with pytest.raises(ConfigError, match="max_input_length and truncation.max_output_length"):
        load_config(None, {"truncation.max_input_length": 10})
    with pytest.raises(ConfigError, match="response_template"):
        load_config(None, {"mask.preset": "trl_completion_only"})
    with pytest.raises(ConfigError, match="truncation.strategy must be cut_tail"):
        load_config(None, {"mask.preset": "glm4", "truncation.strategy": "drop"})


def test_the_shipped_default_config_is_valid():
    config = load_config(REPO / "data" / "preprocess.yaml", {})
    assert config.inputs == ("data/samples/",) and config.output.eval_split > 0


def test_every_command_has_help_with_examples():
    assert set(main.commands) == {"validate", "preprocess", "check", "show", "diff", "export", "train"}
    for command in main.commands:
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0, command
    assert "Examples:" in CliRunner().invoke(main, ["preprocess", "--help"]).output


def test_an_unreadable_input_is_a_clear_error(tmp_path):
    """A file that opens but cannot be read (as root, permissions do not make one: /proc/self/mem fails with EIO)."""
    if not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux /proc")
    unreadable = tmp_path / "chats.jsonl"
    unreadable.symlink_to("/proc/self/mem")
    result = CliRunner().invoke(main, ["preprocess", str(unreadable), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert f"{unreadable}: cannot read" in result.output and "Traceback" not in result.output


def test_an_output_that_cannot_be_created_is_a_clear_error(tmp_path, chats):
    (tmp_path / "file.txt").write_text("x")
    cases = [(tmp_path / "file.txt" / "out", f"{tmp_path / 'file.txt'} is a file")]
    if Path("/sys").is_dir():  # sysfs refuses new folders, even to root
        cases.append((Path("/sys/chatshard-test/out"), "cannot create the output directory"))
    for out, cause in cases:
        result = CliRunner().invoke(main, ["preprocess", str(chats), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert f"Error: {out}: cannot create the output directory" in result.output and cause in result.output
        assert "Traceback" not in result.output
    assert (tmp_path / "file.txt").read_text() == "x"


def test_a_ray_address_without_the_ray_engine_is_refused(tmp_path, chats):
    result = CliRunner().invoke(main, ["preprocess", str(chats), "--tokenizer", str(DEMO_TOKENIZER),
                                       "--ray-address", "127.0.0.1:6379", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--ray-address: only with --engine ray" in result.output, result.output
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_ctrl_c_exits_130_and_a_rerun_resumes(tmp_path, chats, monkeypatch):
    import pipeline.engines.local as local_engine

    class Interrupted(local_engine.ChunkFiles):
        def add(self, part):
            raise KeyboardInterrupt

    args = ["preprocess", str(chats), "--tokenizer", str(DEMO_TOKENIZER), "--out", str(tmp_path / "out")]
    with monkeypatch.context() as patch:
        patch.setattr(local_engine, "ChunkFiles", Interrupted)
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 130
    assert result.output.strip() == "interrupted; rerun with the same arguments to resume"
    resumed = CliRunner().invoke(main, args)
    assert resumed.exit_code == 0 and "written 5" in resumed.output, resumed.output


# Each command's library call, and arguments that reach it.
COMMANDS = {
    "validate": ("pipeline.commands.validate", "validate_inputs", ["x.jsonl"]),
    "preprocess": ("pipeline.run", "preprocess", ["x.jsonl", "--out", "o", "--tokenizer", str(DEMO_TOKENIZER)]),
    "check": ("pipeline.commands.check", "run_checks", ["o"]),
    "show": ("pipeline.commands.show", "show", ["o"]),
    "train": ("pipeline.train.loop", "train", ["--data", "d", "--out", "o"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("error, code, message", [
    (PipelineError("the run failed"), 1, "the run failed"),
    (OSError(28, "No space left on device", "o/x"), 1, "o/x: No space left on device"),
    (InputError("x.jsonl: cannot read"), 2, "x.jsonl: cannot read"), (ConfigError(["a: bad"]), 2, "- a: bad"),
    (OptionError("--index: 9 is out of range"), 2, "--index: 9"), (OutputError("o: not ours"), 2, "o: not ours"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_every_command_maps_errors_to_the_same_exit_codes(command, error, code, message, monkeypatch):
    import importlib

    module, function, args = COMMANDS[command]

    def fails(*a, **k):
        raise error

    monkeypatch.setattr(importlib.import_module(module), function, fails)
    result = CliRunner().invoke(main, [command, *args])
    assert result.exit_code == code and message in result.output, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # ended as click ends, no traceback
    assert result.output.startswith("interrupted" if code == 130 else "Error: "), result.output


def test_choices_are_the_schemas_literals():
    """Every option with choices offers exactly the values its config field accepts."""
    from typing import get_args

    from pipeline.commands.export import LAYOUTS
    from schemas.config import PreprocessConfig
    from schemas.consumers import Consumer
    from schemas.train_config import TrainConfig

    checked = 0
    for name, command in main.commands.items():
        for option in command.params:
            if not isinstance(option.type, click.Choice):
                continue
            if name == "train":
                field = TrainConfig.model_fields[option.name]
            elif name == "export":
                assert tuple(option.type.choices) == get_args(Consumer) == tuple(LAYOUTS)
                checked += 1
                continue
            else:
                section, key = option.name.split("__")
                field = PreprocessConfig.model_fields[section].annotation.model_fields[key]
            assert tuple(option.type.choices) == get_args(field.annotation), (name, option.name)
            checked += 1
    assert checked >= 13


def _imports_of(tmp_path: Path, *args: str) -> list[str]:
    """The modules a `python -m pipeline ...` run imports, from `-X importtime` (stderr), in a fresh interpreter."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]


def test_preprocess_and_check_start_without_torch_and_a_known_tokenizer_without_transformers(tmp_path, monkeypatch):
    """The first run on a tokenizer loads it with transformers (never torch) and caches it; later runs and `check`
    import neither transformers nor pandas (pyarrow's converters would import it)."""
    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "cache"))
    rows = tmp_path / "one.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    first = _imports_of(tmp_path, "preprocess", str(rows), "--tokenizer", str(DEMO_TOKENIZER), "--out", "first")
    again = _imports_of(tmp_path, "preprocess", str(rows), "--tokenizer", str(DEMO_TOKENIZER), "--out", "again")
    check = _imports_of(tmp_path, "check", "again")
    assert "transformers" in first and "pyarrow" in check  # the listing is read right
    assert "torch" not in first
    heavy = {"torch", "transformers", "pandas"}
    assert not heavy & set(again) and not heavy & set(check)


@pytest.mark.parametrize("command, function", [("check", "pipeline.commands.check.run_checks"),
                                               ("show", "pipeline.commands.show.show")])
def test_storage_options_are_key_value_pairs_whose_json_values_are_read_as_json(command, function, monkeypatch):
    seen = {}

    def capture(*args, storage_options, **kw):
        seen.update(storage_options)
        raise InputError("stop here")

    monkeypatch.setattr(function, capture)
    pairs = ["anon=true", "key=0123", "max_concurrency=4", "endpoint_url=http://127.0.0.1:5000", 'token="12"', "e="]
    result = CliRunner().invoke(main, [command, "s3://b/p", *(a for pair in pairs for a in ("--storage-option", pair))])
    assert result.exit_code == 2 and "stop here" in result.output, result.output
    assert seen == {"anon": True, "key": "0123", "max_concurrency": 4, "endpoint_url": "http://127.0.0.1:5000",
                    "token": "12", "e": ""}
