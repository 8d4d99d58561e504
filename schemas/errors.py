"""The root of the project's errors and the config error, defined here so that loading a config raises them without
importing `pipeline`; `pipeline.errors` re-exports both beside the others."""
from __future__ import annotations


class PipelineError(Exception):
    """The run cannot go on (unreadable file, unusable tokenizer, ...). The CLI exits 2 or 1 with the message."""


class ConfigError(PipelineError):
    """A config file or option combination is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
