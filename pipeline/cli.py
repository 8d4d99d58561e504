"""The command line: parse options, load a config model, call one library function, map errors to exit codes."""
from __future__ import annotations

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


# --- commands are registered below, one block each --------------------------------------------------------------
