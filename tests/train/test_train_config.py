"""TrainConfig: defaults, YAML + flag merging, every problem reported at once, bad combinations named."""
from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from schemas.train_config import TrainConfig, load_train_config

BASE = {"data": "d", "out": "o"}


def test_flags_override_yaml(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("lr: 0.002\nepochs: 3\nbatch_size: 4\n")
    cfg = load_train_config(yaml_file, overrides={**BASE, "lr": 0.01, "batch_size": None})
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.grad_accum) == (0.01, 3, 4, 1)


def test_unknown_keys_and_wrong_types_listed_together(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("lr: fast\nbatch_sise: 4\nmax_steps: -1\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(yaml_file, overrides=BASE)
    text = str(e.value)
    assert "lr:" in text and "batch_sise: unknown key" in text and "max_steps:" in text
    assert len(e.value.problems) == 3


def test_bad_combinations_name_both_fields():
    with pytest.raises(ConfigError) as e:
        load_train_config(overrides={**BASE, "max_steps": 5, "epochs": 2, "pack_length": 64, "lora_r": 4,
                                     "warmup_steps": 5})
    text = str(e.value)
    for phrase in ("max_steps and epochs", "pack_length is set but packing", "lora_r set but lora",
                   "warmup_steps (5) must be below max_steps (5)"):
        assert phrase in text


def test_batch_tokens_alone_replaces_batch_size():
    cfg = load_train_config(overrides={**BASE, "batch_tokens": 512})
    assert cfg.batch_size is None and cfg.batch_tokens == 512
    with pytest.raises(ConfigError, match="batch_size and batch_tokens"):
        load_train_config(overrides={**BASE, "batch_tokens": 512, "batch_size": 4})


def test_frozen_and_strict():
    cfg = TrainConfig(**BASE)
    with pytest.raises(Exception):
        cfg.lr = 1.0  # type: ignore[misc]


def test_quantize_needs_lora_and_a_model_dir():
    with pytest.raises(ConfigError) as e:
        load_train_config(overrides={**BASE, "quantize": "4bit"})
    text = str(e.value)
    assert "quantize '4bit' needs lora" in text and "needs a pretrained model directory" in text
    with pytest.raises(ConfigError, match="double_quant is set but quantize is 'none'"):
        load_train_config(overrides={**BASE, "double_quant": True})
    cfg = load_train_config(overrides={**BASE, "model": "m", "lora": True, "quantize": "4bit", "double_quant": True,
                                       "optim": "paged_adamw_32bit"})
    assert (cfg.quantize, cfg.double_quant, cfg.optim) == ("4bit", True, "paged_adamw_32bit")
    with pytest.raises(ConfigError, match="optim"):
        load_train_config(overrides={**BASE, "optim": "sgd"})

def test_every_train_option_shows_its_schema_default():
    """The flags default to None (only given flags override the YAML), so their help states TrainConfig's default;
    every field has a flag."""
    import click
    from pydantic_core import PydanticUndefined

    from pipeline.cli import main

    command = main.commands["train"]
    ctx = click.Context(command)
    options = {p.name: p for p in command.params if isinstance(p, click.Option) and p.name not in ("config", "help")}
    assert set(options) == set(TrainConfig.model_fields)
    for name, field in TrainConfig.model_fields.items():
        help_text = " ".join(options[name].get_help_record(ctx)[1].split())
        default = field.default
        if default is PydanticUndefined:
            expected = "[required]"
        elif isinstance(default, bool) or default is None:
            expected = f"[default: {str(default).lower()}]"
        elif isinstance(default, tuple):
            expected = f"[default: {','.join(default)}]"
        else:
            expected = f"[default: {default}]"
        assert help_text.endswith(expected), (name, help_text, expected)


def test_the_demo_config_stops_early_and_keeps_the_best():
    from pathlib import Path

    cfg = load_train_config(Path(__file__).resolve().parents[2] / "data" / "train.yaml", overrides=BASE)
    assert cfg.early_stopping_patience and cfg.eval_interval > 0 and cfg.final == "best"
