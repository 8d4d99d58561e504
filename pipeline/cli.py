"""The command line: parse options, load a config model, call one library function, map errors to exit codes."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline import __version__
from schemas.config import PreprocessConfig
from schemas.consumers import Consumer
from schemas.train_config import TrainConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="chatshard")
def main() -> None:
    """Chat SFT data to pre-masked Arrow shards, and a lean trainer that reads them.

    \b
    Typical use:
      python -m pipeline validate data/samples/
      python -m pipeline preprocess data/samples/ --tokenizer data/tokenizer --out out/shards
      python -m pipeline check out/shards
      python -m pipeline train --data out/shards --out out/run
    """


class _Unusable(click.ClickException):
    """Options, an input, an output directory or a config that cannot be used at all: exit 2, like a usage error."""

    exit_code = 2


INTERRUPTED = 130  # the shells' code for a process ended by Ctrl-C (128 + SIGINT)


@contextmanager
def _exit_codes(on_interrupt: str | None = None) -> Iterator[None]:
    """The one mapping from errors to exit codes, used by every command (as a decorator), each error shown as
    `Error: ...` without a traceback: 2 for unusable options, inputs or output directories; 1 for a run that failed
    (a file that could not be read or written midway among them); 130 for Ctrl-C, with `on_interrupt` saying how
    to go on."""
    from pipeline.errors import ConfigError, InputError, OptionError, OutputError, PipelineError

    try:
        yield
    except (ConfigError, InputError, OptionError, OutputError) as e:
        raise _Unusable(str(e)) from None
    except PipelineError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{e.filename}: {e.strerror}" if e.filename else str(e)) from None
    except KeyboardInterrupt:
        click.echo(f"interrupted; {on_interrupt}" if on_interrupt else "interrupted", err=True)
        raise click.exceptions.Exit(INTERRUPTED) from None


# --- options read from the schema -----------------------------------------------------------------------------------
def _schema_option(flag: str, help_: str, model: type[BaseModel] | None, field: str, name: str | None = None, **kw):
    """An option whose default is None, so only flags actually given override the config file. For a field of
    `model`, a Literal's values are its choices and the help ends with the field's default, both read from the
    schema (where they live), or says the field is required."""
    info = model.model_fields[field] if model is not None else None
    if info is not None:
        if get_origin(info.annotation) is Literal:
            kw.setdefault("type", click.Choice(get_args(info.annotation)))
        help_ += " [required]" if info.default is PydanticUndefined else f" [default: {_as_flag_value(info.default)}]"
    return click.option(flag, *([name] if name else []), default=None, help=help_.strip(), **kw)


def _as_flag_value(value: Any) -> str:
    """A default as one would write it: true/false, none, a comma-separated list, ROLE=COL pairs."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _config_option(flag: str, key: str, help_: str, **kw):
    """A preprocess option for the config key `key` (`section.field`); its value arrives as `section__field`."""
    section, field = key.split(".")
    return _schema_option(flag, help_, PreprocessConfig.model_fields[section].annotation, field,
                          name=key.replace(".", "__"), **kw)


def _overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The options given, as dotted config keys (`source.format`)."""
    return {name.replace("__", "."): value for name, value in options.items() if value is not None}


def _csv_map_option(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, str] | None:
    from pipeline.errors import ConfigError
    from pipeline.stages.ingest import parse_csv_map

    try:
        return parse_csv_map(value) if value is not None else None
    except ConfigError as e:
        raise click.BadParameter("; ".join(e.problems)) from None


def _storage_option_pairs(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                          ) -> dict[str, Any] | None:
    """KEY=VALUE pairs to a dict; a VALUE that is JSON (true, 4, "0123", {"region_name": "eu-west-1"}) is read as
    such, any other is a string."""
    import json

    options = {}
    for pair in value:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--storage-option")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    return options or None


def _storage_options(name: str = "storage_options") -> Callable[[Callable], Callable]:
    """`--storage-option KEY=VALUE`, repeatable: how the commands that read an output reach one in object storage
    (the fsspec backend's keyword arguments), arriving as the dict `name` (None when not given)."""
    return click.option("--storage-option", name, multiple=True, callback=_storage_option_pairs,
                        metavar="KEY=VALUE", help="For an s3:// or gs:// output: an option of its storage backend "
                        "(s3fs: endpoint_url, key, secret, ...), repeatable; without it, the environment's settings "
                        "[default: none]")


def _source_options(command: Callable) -> Callable:
    """How the input files are read: the options `validate` and `preprocess` share."""
    options = [
        _config_option("--format", "source.format", "Input format; auto detects it per file from the first record."),
        _config_option("--csv-map", "source.csv_map", "CSV columns per role.", callback=_csv_map_option,
                       metavar="ROLE=COL,..."),
        _config_option("--csv-messages-column", "source.csv_messages_column",
                       "A CSV column holding a `messages` JSON string.", metavar="COL"),
        _config_option("--encoding", "source.encoding", "Text encoding of the inputs (e.g. gb18030)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# --- validate ------------------------------------------------------------------------------------------------------
_VALIDATE_HELP = """Check input files without tokenizing: read every row, adapt it to the canonical conversation,
apply the validation rules, and report accepted and rejected rows per reason.

\b
INPUT: files, globs or directories (searched recursively for .json .jsonl .csv, optionally .gz, and
.parquet .arrow), datasets.save_to_disk folders, s3:// gs:// URLs, or hf://datasets/ORG/NAME.
Exit status: 0 all rows accepted, 1 some rows rejected, 2 unusable arguments or an unreadable file.

\b
Examples:
  python -m pipeline validate data/samples/
  python -m pipeline validate 'data/samples/*.jsonl' --rejects out/rejects.jsonl
  python -m pipeline validate qa.csv --csv-map system=sys,user=prompt,assistant=answer
  python -m pipeline validate export.csv --csv-messages-column messages --encoding gb18030
  python -m pipeline validate train.json --format sharegpt --json | jq .reasons
"""


@main.command("validate", help=_VALIDATE_HELP)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@_source_options
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path), help="Write every rejected row here (JSONL).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (read, accepted, rejected, reasons, files).")
@click.option("--max-errors", default=10, show_default=True, help="How many errors to show.")
@click.pass_context
@_exit_codes()
def validate_command(ctx, inputs, rejects, as_json, max_errors, **source_options) -> None:
    import json as json_

    from pipeline.commands.validate import validate_inputs
    from schemas.loading import validate_model
    from schemas.sources import SourceConfig

    options = {key.removeprefix("source."): value for key, value in _overrides(source_options).items()}
    report = validate_inputs(inputs, validate_model(SourceConfig, options, source=None), rejects=rejects,
                             max_examples=max_errors)
    click.echo(json_.dumps(report.to_json(), ensure_ascii=False) if as_json else report.to_text())
    if rejects is not None and not as_json:
        click.echo(f"rejects: {rejects} ({report.rejected} rows)")
    ctx.exit(1 if report.rejected else 0)


# --- preprocess ----------------------------------------------------------------------------------------------------
_PREPROCESS_HELP = """Turn chat data into pre-masked Arrow shards: validate, render once with the chat template,
tokenize once, map character spans to token labels, truncate, and write `datasets`-layout shards with a manifest.

\b
INPUT: files, globs, directories or URLs (s3://, gs://, hf://datasets/ORG/NAME), or `inputs:` or `sources:` in
--config. Flags override the config file.
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


@main.command("preprocess", help=_PREPROCESS_HELP)
@click.argument("inputs", nargs=-1)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory, or an object-storage prefix (s3://BUCKET/PREFIX, gs://...).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config (sections: inputs or sources and mixture, source, render, mask, truncation, output).")
@_config_option("--tokenizer", "render.tokenizer",
                "Local tokenizer directory (as AutoTokenizer.from_pretrained reads it).")
@_config_option("--chat-template", "render.chat_template",
                "Built-in template name (chatml, glm4, llama3, alpaca) or a .jinja file; none: the tokenizer's own.")
@_config_option("--trust-remote-code", "render.trust_remote_code", "Allow the tokenizer's own Python code.",
                is_flag=True)
@_config_option("--encoder", "render.encoder",
                "Token encoder: tiktoken where it is proven identical to the tokenizer, else hf.")
@_config_option("--render-time-limit", "render.time_limit",
                "Longest one rendering of the chat template may take; a row over it is rejected.", type=float,
                metavar="SECONDS")
@_config_option("--render-max-chars", "render.max_chars",
                "Most characters one rendering may produce; a row over it is rejected.", type=int, metavar="N")
@_config_option("--allow-special-tokens", "render.allow_special_tokens_in_content",
                "Keep rows that type control tokens as text in any field the chat template is given (they are then "
                "tokenized as control tokens).", is_flag=True)
@_source_options
@_config_option("--preset", "mask.preset", "Mask preset.")
@_config_option("--roles-to-train", "mask.roles_to_train", "Roles whose messages are trained.", metavar="ROLE,...")
@_config_option("--last-turn-only", "mask.last_turn_only", "Train only the last assistant message.", is_flag=True)
@_config_option("--train-on-prompt", "mask.train_on_prompt", "Train every token.", is_flag=True)
@_config_option("--append-eos", "mask.append_eos", "Append eos to every sample and train it.", is_flag=True)
@_config_option("--response-template", "mask.response_template",
                "trl_completion_only: the text that starts a response.")
@_config_option("--instruction-template", "mask.instruction_template",
                "trl_completion_only: the text that starts an instruction.")
@_config_option("--max-length", "truncation.max_length", "Token limit per sample.", type=int)
@_config_option("--max-input-length", "truncation.max_input_length",
                "GLM-style limit: input part (use with --max-output-length).", type=int)
@_config_option("--max-output-length", "truncation.max_output_length", "GLM-style limit: output part.", type=int)
@_config_option("--truncation", "truncation.strategy", "What to do with samples over the limit.")
@_config_option("--eval-split", "output.eval_split", "Fraction of rows for the eval split (by a hash of the id).",
                type=float)
@_config_option("--seed", "output.seed", "Seed of the eval split assignment.", type=int)
@_config_option("--workers", "output.workers", "Worker processes (with --engine ray: concurrent Ray workers), each "
                "adapting, rendering, tokenizing and masking whole batches; one per core is fastest.", type=int)
@_config_option("--rows-per-shard", "output.rows_per_shard", "Input rows per shard.", type=int)
@_config_option("--engine", "output.engine", "Where the work runs: worker processes here, or Ray Data workers on a "
                "Ray cluster (same output bytes).")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="--engine ray: the Ray cluster to join [default: $RAY_ADDRESS when set, else a new local Ray].")
@_exit_codes("rerun with the same arguments to resume")
def preprocess_command(inputs, out, config_path, ray_address, **options) -> None:
    from pipeline.errors import ConfigError
    from pipeline.run import preprocess
    from pipeline.storage import is_url
    from schemas.config import load_config

    overrides = _overrides(options)
    if "mask.roles_to_train" in overrides:
        overrides["mask.roles_to_train"] = [r.strip() for r in overrides["mask.roles_to_train"].split(",") if r.strip()]
    if inputs:
        overrides["inputs"] = list(inputs)
    config = load_config(config_path, overrides)
    if not config.inputs and not config.sources:
        raise ConfigError(["inputs: give INPUT arguments, or `inputs:` or `sources:` in --config"])
    if ray_address is not None and config.output.engine != "ray":
        raise ConfigError(["--ray-address: only with --engine ray (or output.engine: ray)"])
    if is_url(out):
        from pipeline.remote_run import preprocess_to_store

        manifest = preprocess_to_store(config, out, ray_address=ray_address)
    else:
        manifest = preprocess(config, Path(out), ray_address=ray_address)
    click.echo(format_summary(manifest, out))


def format_summary(manifest: dict, out: Path | str) -> str:
    """A few lines a person reads after a run: what was written, what was not and why, where it went."""
    acc = manifest["accounting"]
    lines = [f"read {acc['read']}  written {acc['written']}  rejected {acc['rejected']}  filtered {acc['filtered']}"]
    for split, info in manifest["splits"].items():
        share = info["trained_tokens"] / max(1, info["tokens"])
        lines.append(f"  {split}: {info['rows']} rows, {info['tokens']} tokens, {share:.1%} trained, {len(info['shards'])} shard(s)")
    for kind in ("rejected_reasons", "filtered_reasons", "notes"):
        for reason, count in acc[kind].items():
            tokens = acc["note_tokens"].get(reason) if kind == "notes" else None
            lines.append(f"  {kind.split('_')[0]}: {reason}: {count}" + (f" ({tokens} tokens)" if tokens else ""))
    for source in manifest.get("sources", []):
        lines.append(f"  source {source['path']}: drew {source['drawn']} of its {source['read']} rows: written "
                     f"{source['written']}, rejected {source['rejected']}, filtered {source['filtered']}")
    lines.append(f"wrote {out} (rejects: {str(out).rstrip('/')}/rejects.jsonl)")
    return "\n".join(lines)


# --- check ---------------------------------------------------------------------------------------------------------
_CHECK_HELP = """Data-quality checks on a preprocess output, for CI: accounting, reject and truncation rates,
trained tokens, lengths against the limit, duplicates, labels, end-of-turn tokens, decode round trip, checksums.

\b
DIR: the --out directory of `preprocess` (manifest.json, split folders, tokenizer/), or its s3:// URL.
Exit status: 0 every check passed, 1 a check failed, 2 DIR is not a valid output or --config is invalid.

\b
Examples:
  python -m pipeline check out/shards
  python -m pipeline check out/shards --config data/check.yaml --report out/report.html
  python -m pipeline check out/shards --json | jq '.checks[] | select(.status == "fail")'
"""


@main.command("check", help=_CHECK_HELP)
@click.argument("directory", metavar="DIR", type=click.Path())
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Thresholds YAML (keys as in schemas/check_config.py; list only what differs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every check.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report here.")
@_storage_options()
@click.pass_context
@_exit_codes()
def check_command(ctx, directory, config_path, as_json, report_path, storage_options) -> None:
    import json as json_

    from pipeline.commands.check import run_checks
    from schemas.check_config import load_check_config

    report = run_checks(directory, load_check_config(config_path), storage_options=storage_options)
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
  python -m pipeline show out/shards --id 1bf8d80967f3ff78 | less -R
"""


@main.command("show", help=_SHOW_HELP)
@click.argument("directory", metavar="DIR", type=click.Path())
@click.option("--index", type=int, help="Row number in the split (0-based) [default: 0].")
@click.option("--id", "row_id", help="The row's `id` (searched in --split, or in every split).")
@click.option("--split", help="Split to read [default: train].")
@click.option("--ids", is_flag=True, help="Also print a table of position, id, label and token.")
@click.option("--color/--no-color", default=None, help="Colour trained tokens [default: when stdout is a terminal].")
@_storage_options()
@_exit_codes()
def show_command(directory, index, row_id, split, ids, color, storage_options) -> None:
    import sys

    from pipeline.commands.show import show

    if index is not None and row_id is not None:
        raise click.UsageError("give --index or --id, not both")
    color = sys.stdout.isatty() if color is None else color
    highlight = (lambda text: click.style(text, fg="green", bold=True)) if color else None
    click.echo(show(directory, split=split, index=index, row_id=row_id, highlight=highlight, ids=ids,
                    storage_options=storage_options), color=color)


# --- diff ----------------------------------------------------------------------------------------------------------
_DIFF_HELP = """What changed between two preprocess outputs, for CI: rows added, removed and changed (matched by
id; input_ids, labels or both), tokens and trained tokens before and after, and what built them (tokenizer, chat
template, encoder, config keys, tool version, rejected and filtered rows per reason and per source). The first
changed rows are shown decoded around their first difference, with each build's own tokenizer.

\b
OLD, NEW: --out directories of `preprocess`, or their s3:// URLs. Both are streamed: memory stays flat on large
builds.
Thresholds: a value below 1 is a fraction (0.05: 5% of rows, or of trained tokens), 1 or more a count.
Exit status: 0 within the thresholds, 1 over one, 2 OLD or NEW is not a usable output or an option is invalid.

\b
Examples:
  python -m pipeline diff out/main out/shards                  # Markdown, for a pull-request comment
  python -m pipeline diff out/main out/shards --max-changed-trained-tokens 0.05 --max-changed-rows 100
  python -m pipeline diff small-shards out/shards --show 1 --json | jq '{added, removed, changed}'
"""


@main.command("diff", help=_DIFF_HELP)
@click.argument("old", metavar="OLD", type=click.Path())
@click.argument("new", metavar="NEW", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (added, removed, changed, details).")
@click.option("--max-changed-rows", type=click.FloatRange(min=0), metavar="F",
              help="Exit 1 when more rows than this are added, removed or changed (below 1: a fraction).")
@click.option("--max-changed-trained-tokens", type=click.FloatRange(min=0), metavar="F",
              help="Exit 1 when more trained tokens than this are in rows that differ (below 1: a fraction).")
@click.option("--show", default=3, show_default=True, type=click.IntRange(min=0), metavar="N",
              help="Changed rows to show decoded around their first difference.")
@_storage_options()
@click.pass_context
@_exit_codes()
def diff_command(ctx, old, new, as_json, max_changed_rows, max_changed_trained_tokens, show, storage_options) -> None:
    import json as json_

    from pipeline.commands.diff import diff_builds

    report = diff_builds(old, new, show=show, max_changed_rows=max_changed_rows,
                         max_changed_trained_tokens=max_changed_trained_tokens, storage_options=storage_options)
    click.echo(json_.dumps(report.to_json(), ensure_ascii=False) if as_json else report.to_markdown())
    ctx.exit(0 if report.passed else 1)


# --- export --------------------------------------------------------------------------------------------------------
_EXPORT_HELP = """Copy a preprocess output into the layout one trainer loads as it is: the columns its collator
accepts and the split names its loader reads (trl: input_ids, labels, splits train/eval; llamafactory: input_ids,
attention_mask, labels, splits train/validation; axolotl: the same columns, splits train/test; hf: the same columns,
splits train/validation). The tokenizer is copied beside them. The README gives each trainer's recipe.

\b
DIR: the --out directory of `preprocess`, or its s3:// URL; it is only read. --out must be new, empty or an earlier
export, apart from DIR. Exit status: 0 done, 1 the copy failed midway, 2 DIR is not a valid output or --out cannot be
used.

\b
Examples:
  python -m pipeline export out/shards --for trl --out out/trl
  python -m pipeline export out/shards --for llamafactory --out out/llamafactory
  python -m pipeline export out/shards --for axolotl --out out/axolotl
"""


@main.command("export", help=_EXPORT_HELP)
@click.argument("directory", metavar="DIR", type=click.Path())
@click.option("--for", "consumer", required=True, type=click.Choice(get_args(Consumer)),
              help="The trainer whose layout to write.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@_storage_options()
@_exit_codes()
def export_command(directory, consumer, out, storage_options) -> None:
    from pipeline.commands.export import export

    info = export(directory, consumer, out, storage_options=storage_options)
    for name, split in info["splits"].items():
        click.echo(f"  {name} (from {split['from']}): {split['rows']} rows, {split['tokens']} tokens")
    click.echo(f"wrote {out} for {consumer}: columns {', '.join(info['columns'])}")


# --- train ---------------------------------------------------------------------------------------------------------
_TRAIN_EXAMPLES = """Train a causal LM on the shards written by `preprocess` (reads only the shards: no tokenizer, no
template). Flags override the YAML config; every flag has a config key of the same name with '_' for '-'
(--storage-option: data_storage_options).

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
    """A train option: a TrainConfig field of the same name ('_' for '-'), read from the schema (`_schema_option`)."""
    field = name.split("/")[0].removeprefix("--").replace("-", "_")
    return _schema_option(name, help_, TrainConfig if field in TrainConfig.model_fields else None, field,
                          **({"type": type_} if type_ is not None else {}), **kw)


@main.command("train", help=_TRAIN_EXAMPLES)
@_flag("--config", click.Path(dir_okay=False, path_type=str), "YAML config (keys as in schemas/train_config.py).")
@_flag("--data", click.Path(path_type=str), "Shard directory written by `preprocess`.")
@_storage_options("data_storage_options")
@_flag("--out", click.Path(path_type=str), "Run directory (metrics.jsonl, loss.png, checkpoints/, final/).")
@_flag("--model", str, "'tiny' (random init, sized to the shards) or a local pretrained model directory.")
@_flag("--tiny-arch", help_="Tiny model architecture.")
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
@_flag("--schedule", help_="LR schedule after warmup.")
@_flag("--warmup-steps", int, "Linear warmup steps.")
@_flag("--optim", help_="Optimizer: torch AdamW, or a bitsandbytes paged / 8-bit AdamW (needs the qlora extra).")
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
@_flag("--final", help_="What final/ holds: the lowest eval loss (the last step when there "
       "is no eval split) or the last step.")
@_flag("--save-interval", int, "Steps between checkpoints (0: at the end only).")
@_flag("--keep-checkpoints", int, "How many of the newest checkpoints to keep (the best is kept besides).")
@_flag("--log-interval", int, "Steps between metrics.jsonl lines, and progress lines when stderr is not a terminal.")
@_flag("--report-to", help_="Also write TensorBoard event files to OUT/tensorboard "
       "(pip install 'chatshard[tensorboard]').")
@_flag("--seed", int, "Seed for the model init and the data order.")
@_flag("--precision", help_="bf16: frozen weights (LoRA, QLoRA) in bf16 and bf16 "
       "autocast; trained weights stay fp32. A full fine-tune on the CPU computes in fp32.")
@_flag("--device", help_="Where to train.")
@_flag("--gradient-checkpointing/--no-gradient-checkpointing", help_="Recompute activations in backward.")
@_flag("--lora/--no-lora", help_="Train LoRA adapters (peft) instead of all weights.")
@_flag("--lora-r", int, "LoRA rank.")
@_flag("--lora-alpha", float, "LoRA alpha.")
@_flag("--lora-dropout", float, "LoRA dropout.")
@_flag("--lora-target-modules", str, "Comma-separated module names, e.g. q_proj,v_proj.")
@_flag("--quantize", help_="QLoRA: the base's Linear layers in 4-bit NF4 (bitsandbytes; "
       "needs --lora and a --model directory).")
@_flag("--double-quant/--no-double-quant", help_="4-bit: also quantize the quantization scales.")
@_flag("--rank-log/--no-rank-log", help_="Write ranks/rank<R>.jsonl: sample ids per step and a weights digest.")
@_exit_codes("rerun with the same arguments plus --resume to continue from the newest checkpoint")
def train_command(config: str | None, **flags) -> None:
    from schemas.train_config import load_train_config

    if flags.get("lora_target_modules") is not None:
        flags["lora_target_modules"] = [m.strip() for m in flags["lora_target_modules"].split(",") if m.strip()]
    cfg = load_train_config(config, overrides=flags)
    from pipeline.train.loop import train

    result = train(cfg)
    if result is not None:
        click.echo(result.summary())
