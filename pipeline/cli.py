"""The command line: parse options, load a config model, call one library function, map errors to exit codes."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from pipeline import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="chatshard")
def main() -> None:
    """Chat SFT data to pre-masked Arrow shards, and a lean trainer that reads them.

    \b
    Typical use:
      python -m pipeline validate data/*.jsonl
      python -m pipeline preprocess data/ --tokenizer data/tokenizer --out out/shards
      python -m pipeline check out/shards
      python -m pipeline train --data out/shards --out out/run
    """


class _Unreadable(click.ClickException):
    """An input, output directory or config that cannot be used at all: exit 2, like a usage error."""

    exit_code = 2


INTERRUPTED = 130  # the shells' code for a process ended by Ctrl-C (128 + SIGINT)


@contextmanager
def _exit_codes(on_interrupt: str) -> Iterator[None]:
    """One mapping from errors to exit codes, each shown as `Error: ...` without a traceback: 2 for unusable options,
    inputs or output directories; 1 for a run that failed (a file that could not be read or written midway among
    them); 130 for Ctrl-C, with `on_interrupt` saying how to go on."""
    from pipeline.errors import ConfigError, InputError, OutputError, PipelineError

    try:
        yield
    except (ConfigError, InputError, OutputError) as e:
        raise _Unreadable(str(e)) from None
    except PipelineError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{e.filename}: {e.strerror}" if e.filename else str(e)) from None
    except KeyboardInterrupt:
        click.echo(f"interrupted; {on_interrupt}", err=True)
        raise click.exceptions.Exit(INTERRUPTED) from None


def _csv_map_option(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, str] | None:
    from pipeline.errors import ConfigError
    from pipeline.stages.ingest import parse_csv_map

    try:
        return parse_csv_map(value) if value is not None else None
    except ConfigError as e:
        raise click.BadParameter("; ".join(e.problems)) from None


# --- validate ------------------------------------------------------------------------------------------------------
_VALIDATE_HELP = """Check input files without tokenizing: read every row, adapt it to the canonical conversation,
apply the validation rules, and report accepted and rejected rows per reason.

\b
INPUT: files, globs or directories (searched recursively for .json .jsonl .csv, optionally .gz).
Exit status: 0 all rows accepted, 1 some rows rejected, 2 unusable arguments or an unreadable file.

\b
Examples:
  python -m pipeline validate data/samples/
  python -m pipeline validate 'data/*.jsonl' --rejects out/rejects.jsonl
  python -m pipeline validate qa.csv --csv-map system=sys,user=prompt,assistant=answer
  python -m pipeline validate export.csv --csv-messages-column messages --encoding gb18030
  python -m pipeline validate train.json --format sharegpt --json | jq .reasons
"""


@main.command("validate", help=_VALIDATE_HELP)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--format", "fmt", type=click.Choice(["auto", "glm", "openai", "sharegpt", "alpaca", "csv"]),
              default="auto", show_default=True, help="Input format; auto detects it per file from the first record.")
@click.option("--csv-map", callback=_csv_map_option, metavar="ROLE=COL,...",
              help="CSV columns per role [default: system=system,user=question,assistant=chosen].")
@click.option("--csv-messages-column", metavar="COL", help="A CSV column holding a `messages` JSON string.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the inputs (e.g. gb18030).")
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path), help="Write every rejected row here (JSONL).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (read, accepted, rejected, reasons, files).")
@click.option("--max-errors", default=10, show_default=True, help="How many errors to show.")
@click.pass_context
def validate_command(ctx, inputs, fmt, csv_map, csv_messages_column, encoding, rejects, as_json, max_errors) -> None:
    import json as json_

    from pydantic import ValidationError

    from pipeline.errors import InputError
    from pipeline.commands.validate import validate_inputs
    from schemas.sources import SourceConfig

    options = {"format": fmt, "encoding": encoding, "csv_map": csv_map, "csv_messages_column": csv_messages_column}
    try:
        source = SourceConfig(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as e:
        raise click.UsageError("; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())) from None
    try:
        report = validate_inputs(inputs, source, rejects=rejects, max_examples=max_errors)
    except InputError as e:
        raise _Unreadable(str(e)) from None
    click.echo(json_.dumps(report.to_json(), ensure_ascii=False) if as_json else report.to_text())
    if rejects is not None and not as_json:
        click.echo(f"rejects: {rejects} ({report.rejected} rows)")
    ctx.exit(1 if report.rejected else 0)


# --- preprocess ----------------------------------------------------------------------------------------------------
_PREPROCESS_HELP = """Turn chat data into pre-masked Arrow shards: validate, render once with the chat template,
tokenize once, map character spans to token labels, truncate, and write `datasets`-layout shards with a manifest.

\b
INPUT: files, globs or directories (or `inputs:` in --config). Flags override the config file.
Rows that cannot be used go to DIR/rejects.jsonl with file:line and reason; the manifest counts every row.
--out must be new, empty or an earlier output of preprocess, and apart from the inputs.
Exit status: 0 done, 1 the run failed, 2 unusable options, inputs or --out, 130 interrupted (rerun to resume).

\b
Examples:
  python -m pipeline preprocess --config data/preprocess.yaml --out out/shards
  python -m pipeline preprocess data/samples/ --tokenizer ./Qwen2.5-7B-Instruct --out out/qwen --max-length 4096
  python -m pipeline preprocess chats.jsonl --tokenizer ./glm-4-9b-chat --preset glm4 \\
      --max-input-length 1024 --max-output-length 1024 --out out/glm4
  python -m pipeline preprocess alpaca.json --tokenizer ./gpt2 --chat-template alpaca --preset rasbt --out out/gpt2
  python -m pipeline preprocess qa.csv --csv-map system=sys,user=prompt,assistant=answer --eval-split 0.05 --out out/qa
"""

_PRESET_CHOICE = click.Choice(["default", "glm4", "trl_completion_only", "rasbt"])


@main.command("preprocess", help=_PREPROCESS_HELP)
@click.argument("inputs", nargs=-1)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config (sections: source, render, mask, truncation, output).")
@click.option("--tokenizer", help="Local tokenizer directory (AutoTokenizer.from_pretrained). [default: data/tokenizer]")
@click.option("--chat-template", help="Built-in template name (chatml, glm4, llama3, alpaca) or a .jinja file.")
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow the tokenizer's own Python code.")
@click.option("--encoder", type=click.Choice(["auto", "hf", "tiktoken"]),
              help="Token encoder: tiktoken where it is proven identical to the tokenizer, else hf [default: auto].")
@click.option("--render-time-limit", type=float, metavar="SECONDS",
              help="Longest one rendering of the chat template may take; a row over it is rejected [default: 10].")
@click.option("--render-max-chars", type=int, metavar="N",
              help="Most characters one rendering may produce; a row over it is rejected [default: 67108864].")
@click.option("--allow-special-tokens", is_flag=True, default=None,
              help="Keep rows that type control tokens as text in any field the chat template is given (they are "
                   "then tokenized as control tokens).")
@click.option("--format", "fmt", type=click.Choice(["auto", "glm", "openai", "sharegpt", "alpaca", "csv"]),
              help="Input format [default: auto].")
@click.option("--csv-map", callback=_csv_map_option, metavar="ROLE=COL,...", help="CSV columns per role.")
@click.option("--csv-messages-column", metavar="COL", help="A CSV column holding a `messages` JSON string.")
@click.option("--encoding", help="Text encoding of the inputs [default: utf-8].")
@click.option("--preset", type=_PRESET_CHOICE, help="Mask preset [default: default].")
@click.option("--roles-to-train", metavar="ROLE,...", help="Roles whose messages are trained [default: assistant].")
@click.option("--last-turn-only", is_flag=True, default=None, help="Train only the last assistant message.")
@click.option("--train-on-prompt", is_flag=True, default=None, help="Train every token.")
@click.option("--append-eos", is_flag=True, default=None, help="Append eos to every sample and train it.")
@click.option("--response-template", help="trl_completion_only: the text that starts a response.")
@click.option("--instruction-template", help="trl_completion_only: the text that starts an instruction.")
@click.option("--max-length", type=int, help="Token limit per sample [default: 2048].")
@click.option("--max-input-length", type=int, help="GLM-style limit: input part (use with --max-output-length).")
@click.option("--max-output-length", type=int, help="GLM-style limit: output part.")
@click.option("--truncation", type=click.Choice(["cut_tail", "drop", "drop_oldest_turns"]),
              help="What to do with samples over the limit [default: cut_tail].")
@click.option("--eval-split", type=float, help="Fraction of rows for the eval split (by a hash of the id).")
@click.option("--seed", type=int, help="Seed of the eval split assignment.")
@click.option("--workers", type=int, help="Worker processes, each adapting, rendering, tokenizing and masking whole "
              "batches; one per core is fastest [default: 1].")
@click.option("--rows-per-shard", type=int, help="Input rows per shard [default: 20000].")
def preprocess_command(inputs, out, config_path, **options) -> None:
    from pipeline.errors import ConfigError
    from pipeline.run import preprocess
    from schemas.config import load_config

    keys = {
        "tokenizer": "render.tokenizer", "chat_template": "render.chat_template",
        "trust_remote_code": "render.trust_remote_code", "encoder": "render.encoder", "allow_special_tokens": "render.allow_special_tokens_in_content",
        "render_time_limit": "render.time_limit", "render_max_chars": "render.max_chars",
        "fmt": "source.format", "csv_map": "source.csv_map", "csv_messages_column": "source.csv_messages_column",
        "encoding": "source.encoding", "preset": "mask.preset", "roles_to_train": "mask.roles_to_train",
        "last_turn_only": "mask.last_turn_only", "train_on_prompt": "mask.train_on_prompt",
        "append_eos": "mask.append_eos", "response_template": "mask.response_template",
        "instruction_template": "mask.instruction_template", "max_length": "truncation.max_length",
        "max_input_length": "truncation.max_input_length", "max_output_length": "truncation.max_output_length",
        "truncation": "truncation.strategy", "eval_split": "output.eval_split", "seed": "output.seed",
        "workers": "output.workers", "rows_per_shard": "output.rows_per_shard",
    }
    overrides = {keys[k]: v for k, v in options.items() if v is not None}
    if "mask.roles_to_train" in overrides:
        overrides["mask.roles_to_train"] = [r.strip() for r in overrides["mask.roles_to_train"].split(",") if r.strip()]
    if inputs:
        overrides["inputs"] = list(inputs)
    with _exit_codes("rerun with the same arguments to resume"):
        config = load_config(config_path, overrides)
        if not config.inputs:
            raise ConfigError(["inputs: give INPUT arguments or `inputs:` in --config"])
        manifest = preprocess(config, out)
    click.echo(format_summary(manifest, out))


def format_summary(manifest: dict, out: Path) -> str:
    """A few lines a person reads after a run: what was written, what was not and why, where it went."""
    acc = manifest["accounting"]
    lines = [f"read {acc['read']}  written {acc['written']}  rejected {acc['rejected']}  filtered {acc['filtered']}"]
    for split, info in manifest["splits"].items():
        share = info["trained_tokens"] / max(1, info["tokens"])
        lines.append(f"  {split}: {info['rows']} rows, {info['tokens']} tokens, {share:.1%} trained, {len(info['shards'])} shard(s)")
    for kind in ("rejected_reasons", "filtered_reasons", "notes"):
        for reason, count in acc[kind].items():
            lines.append(f"  {kind.split('_')[0]}: {reason}: {count}")
    lines.append(f"wrote {out} (rejects: {out / 'rejects.jsonl'})")
    return "\n".join(lines)


# --- check ---------------------------------------------------------------------------------------------------------
_CHECK_HELP = """Data-quality checks on a preprocess output, for CI: accounting, reject and truncation rates,
trained tokens, lengths against the limit, duplicates, labels, end-of-turn tokens, decode round trip, checksums.

\b
DIR: the --out directory of `preprocess` (manifest.json, split folders, tokenizer/).
Exit status: 0 every check passed, 1 a check failed, 2 DIR is not a valid output or --config is invalid.

\b
Examples:
  python -m pipeline check out/shards
  python -m pipeline check out/shards --config data/check.yaml --report out/report.html
  python -m pipeline check out/shards --json | jq '.checks[] | select(.status == "fail")'
"""


@main.command("check", help=_CHECK_HELP)
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Thresholds YAML (keys as in schemas/check_config.py; list only what differs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every check.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report here.")
@click.pass_context
def check_command(ctx, directory, config_path, as_json, report_path) -> None:
    import json as json_

    from pipeline.commands.check import run_checks
    from pipeline.errors import ConfigError, InputError
    from schemas.check_config import load_check_config

    try:
        config = load_check_config(config_path)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    try:
        report = run_checks(directory, config)
    except InputError as e:
        raise _Unreadable(str(e)) from None
    if report_path is not None:
        from pipeline.commands.report import write_report

        write_report(report, report_path)
    click.echo(json_.dumps(report.to_json(), ensure_ascii=False) if as_json else report.to_markdown())
    if report_path is not None and not as_json:
        click.echo(f"report: {report_path}")
    ctx.exit(0 if report.passed else 1)


# --- show ----------------------------------------------------------------------------------------------------------
_SHOW_HELP = """Print one written sample with its trained tokens highlighted: coloured on a terminal, in [[...]]
otherwise. --ids adds a table of position, token id, label and token text.

\b
Examples:
  python -m pipeline show out/shards                       # the first train row
  python -m pipeline show out/shards --split eval --index 3 --ids
  python -m pipeline show out/shards --id 37a5d2e9d7efcb3a | less -R
"""


@main.command("show", help=_SHOW_HELP)
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--index", type=int, help="Row number in the split (0-based) [default: 0].")
@click.option("--id", "row_id", help="The row's `id` (searched in --split, or in every split).")
@click.option("--split", help="Split to read [default: train].")
@click.option("--ids", is_flag=True, help="Also print a table of position, id, label and token.")
@click.option("--color/--no-color", default=None, help="Colour trained tokens [default: when stdout is a terminal].")
def show_command(directory, index, row_id, split, ids, color) -> None:
    import sys

    from pipeline.errors import InputError, PipelineError
    from pipeline.commands.show import show

    if index is not None and row_id is not None:
        raise click.UsageError("give --index or --id, not both")
    color = sys.stdout.isatty() if color is None else color
    highlight = (lambda text: click.style(text, fg="green", bold=True)) if color else None
    try:
        text = show(directory, split=split, index=index, row_id=row_id, highlight=highlight, ids=ids)
    except InputError as e:
        raise _Unreadable(str(e)) from None
    except PipelineError as e:
        raise click.UsageError(str(e)) from None
    click.echo(text, color=color)


# --- train ---------------------------------------------------------------------------------------------------------
_TRAIN_EXAMPLES = """Train a causal LM on the shards written by `preprocess` (reads only the shards: no tokenizer, no
template). Flags override the YAML config; every flag has a config key of the same name with '_' for '-'.

\b
--out must be new, empty or a run directory of this trainer, and apart from --data and --model.
Exit status: 0 done, 1 the run failed, 2 unusable options, shards or --out, 130 interrupted (resume with --resume).

\b
Examples:
  python -m pipeline train --data out/shards --out out/run                  # tiny random model, CPU is fine
  python -m pipeline train --config data/train.yaml --data out/shards --out out/run
  python -m pipeline train --data out/shards --out out/run --resume         # continue from the newest checkpoint
  python -m pipeline train --data out/shards --out out/run --model ./my-model --lora --lora-r 16
  python -m pipeline train --data out/shards --out out/run --model ./my-model --lora --quantize 4bit \\
      --optim paged_adamw_32bit --gradient-checkpointing          # QLoRA: pip install 'chatshard[qlora]'
  python -m pipeline train --data out/shards --out out/run --packing --batch-tokens 8192 --grad-accum 4
  torchrun --standalone --nproc_per_node 2 -m pipeline train --data out/shards --out out/run
"""


def _flag(name: str, type_=None, help_: str = "", **kw):
    """An option whose default is None, so only flags actually given override the config file. Its help ends with
    the TrainConfig field's default, read from the schema (where defaults live), or says the field is required."""
    return click.option(name, type=type_, default=None, help=f"{help_} {_schema_default(name)}".strip(), **kw)


def _schema_default(name: str) -> str:
    from pydantic_core import PydanticUndefined

    from schemas.train_config import TrainConfig

    field = TrainConfig.model_fields.get(name.split("/")[0].removeprefix("--").replace("-", "_"))
    if field is None:  # --config: not a TrainConfig field
        return ""
    if field.default is PydanticUndefined:
        return "[required]"
    return f"[default: {_as_flag_value(field.default)}]"


def _as_flag_value(value) -> str:
    """A default as one would write it: true/false, none, a comma-separated list."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


@main.command("train", help=_TRAIN_EXAMPLES)
@_flag("--config", click.Path(dir_okay=False, path_type=str), "YAML config (keys as in schemas/train_config.py).")
@_flag("--data", click.Path(path_type=str), "Shard directory written by `preprocess`.")
@_flag("--out", click.Path(path_type=str), "Run directory (metrics.jsonl, loss.png, checkpoints/, final/).")
@_flag("--model", str, "'tiny' (random init, sized to the shards) or a local pretrained model directory.")
@_flag("--tiny-arch", click.Choice(["llama", "qwen2"]), "Tiny model architecture.")
@_flag("--tiny-layers", int, "Tiny model layers.")
@_flag("--tiny-hidden", int, "Tiny model width.")
@_flag("--tiny-heads", int, "Tiny model attention heads.")
@_flag("--resume/--no-resume", help_="Continue from the newest checkpoint in --out.")
@_flag("--allow-schedule-change/--no-allow-schedule-change",
       help_="Let --resume change lr, min_lr, schedule, warmup, length, optimizer or early-stopping settings (noted "
             "in metrics.jsonl).")
@_flag("--batch-size", int, "Sequences (packed rows when packing) per micro-batch, per rank.")
@_flag("--batch-tokens", int, "Or: at most this many (padded) tokens per micro-batch.")
@_flag("--grad-accum", int, "Micro-batches per optimizer step, per rank.")
@_flag("--packing/--no-packing", help_="Pack samples into rows (no attention across samples).")
@_flag("--pack-length", int, "Packed row length (none: the longest sample).")
@_flag("--bucket-batches", int, "Padding: sort by length within shuffled buckets of this many micro-batches.")
@_flag("--lr", float, "Peak learning rate.")
@_flag("--min-lr", float, "Where cosine and linear decay end.")
@_flag("--schedule", click.Choice(["cosine", "linear", "constant"]), "LR schedule after warmup.")
@_flag("--warmup-steps", int, "Linear warmup steps.")
@_flag("--optim", click.Choice(["adamw", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit"]),
       "Optimizer: torch AdamW, or a bitsandbytes paged / 8-bit AdamW (needs the qlora extra).")
@_flag("--weight-decay", float, "AdamW weight decay (matrices only).")
@_flag("--beta1", float, "AdamW beta1.")
@_flag("--beta2", float, "AdamW beta2.")
@_flag("--neftune-alpha", float, "NEFTune: uniform noise alpha/sqrt(L*d) on the input embeddings in training "
       "forwards (L: each sample's length, d: hidden size).")
@_flag("--grad-clip", float, "Max gradient norm (0: no clipping).")
@_flag("--max-steps", int, "Optimizer steps (or use --epochs).")
@_flag("--epochs", float, "Passes over the train split (none, and no --max-steps: 1).")
@_flag("--eval-interval", int, "Steps between evaluations: eval loss and token accuracy (0: at the end only).")
@_flag("--eval-batches", int, "Cap on eval micro-batches per evaluation (none: the whole eval split).")
@_flag("--early-stopping-patience", int, "Stop after this many evaluations without improvement (none: never); "
       "needs an eval split and --eval-interval.")
@_flag("--early-stopping-min-delta", float, "An improvement is an eval-loss drop of more than this below the best.")
@_flag("--final", click.Choice(["best", "last"]), "What final/ holds: the lowest eval loss (the last step when there "
       "is no eval split) or the last step.")
@_flag("--save-interval", int, "Steps between checkpoints (0: at the end only).")
@_flag("--keep-checkpoints", int, "How many of the newest checkpoints to keep (the best is kept besides).")
@_flag("--log-interval", int, "Steps between metrics.jsonl lines, and progress lines when stderr is not a terminal.")
@_flag("--report-to", click.Choice(["none", "tensorboard"]),
       "Also write TensorBoard event files to OUT/tensorboard (pip install 'chatshard[tensorboard]').")
@_flag("--seed", int, "Seed for the model init and the data order.")
@_flag("--precision", click.Choice(["bf16", "fp32"]), "bf16: frozen weights (LoRA, QLoRA) in bf16 and bf16 "
       "autocast; trained weights stay fp32. A full fine-tune on the CPU computes in fp32.")
@_flag("--device", click.Choice(["auto", "cpu", "cuda"]), "Where to train.")
@_flag("--gradient-checkpointing/--no-gradient-checkpointing", help_="Recompute activations in backward.")
@_flag("--lora/--no-lora", help_="Train LoRA adapters (peft) instead of all weights.")
@_flag("--lora-r", int, "LoRA rank.")
@_flag("--lora-alpha", float, "LoRA alpha.")
@_flag("--lora-dropout", float, "LoRA dropout.")
@_flag("--lora-target-modules", str, "Comma-separated module names, e.g. q_proj,v_proj.")
@_flag("--quantize", click.Choice(["none", "4bit"]), "QLoRA: the base's Linear layers in 4-bit NF4 (bitsandbytes; "
       "needs --lora and a --model directory).")
@_flag("--double-quant/--no-double-quant", help_="4-bit: also quantize the quantization scales.")
@_flag("--rank-log/--no-rank-log", help_="Write ranks/rank<R>.jsonl: sample ids per step and a weights digest.")
def train_command(config: str | None, **flags) -> None:
    from schemas.train_config import load_train_config

    if flags.get("lora_target_modules") is not None:
        flags["lora_target_modules"] = [m.strip() for m in flags["lora_target_modules"].split(",") if m.strip()]
    with _exit_codes("rerun with the same arguments plus --resume to continue from the newest checkpoint"):
        cfg = load_train_config(config, overrides=flags)
        from pipeline.train.loop import train

        result = train(cfg)
    if result is not None:
        click.echo(result.summary())
