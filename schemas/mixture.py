"""Per-source settings and the mixture: `sources:` in a preprocess config, as an alternative to `inputs:`.

A source is one path (file, directory or glob) read with its own ingest options (a `SourceConfig`), an optional
`default_system`, and at most one sampling rule. Without a rule every row is drawn once. The rules are numbers, and
the draws are computed from them exactly (`pipeline/stages/mixture.py`), so each is kept as the decimal written
(`Fraction(str(value))`), never rounded through a float product.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.sources import SourceConfig

RULES = ("weight", "epochs", "max_rows")


class MixtureSource(SourceConfig):
    """One entry of `sources:`: where the rows come from, how they are read, and how many are drawn."""

    path: str = Field(min_length=1, description="a file, a directory or a glob, as an INPUT argument")
    default_system: str | None = Field(
        default=None, description="a system message for conversations that have none (replaces a template's default)"
    )
    weight: float | None = Field(
        default=None, gt=0, description="this source's share of mixture.total_rows or mixture.total_tokens"
    )
    epochs: float | None = Field(default=None, gt=0, description="passes over the rows; 1.5 = all once + a seeded half")
    max_rows: int | None = Field(default=None, ge=1, description="at most this many rows, a seeded choice")

    @model_validator(mode="after")
    def _one_rule(self) -> "MixtureSource":
        given = [name for name in RULES if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one sampling rule per source, not {' and '.join(given)}")
        return self

    @property
    def rule(self) -> str | None:
        """The sampling rule given, or None (every row once)."""
        return next((name for name in RULES if getattr(self, name) is not None), None)


class MixtureConfig(BaseModel):
    """How weighted sources are combined: `total_rows` or `total_tokens` shared out by weight, and the seed of every
    draw."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_rows: int | None = Field(default=None, ge=1, description="rows drawn in all, shared out by the weights")
    total_tokens: int | None = Field(
        default=None, ge=1, description="tokens written in all (at least), shared out by the weights"
    )
    seed: int = Field(default=42, description="seeds the choice of rows of every source that is not read whole")

    @model_validator(mode="after")
    def _one_total(self) -> "MixtureConfig":
        if self.total_rows is not None and self.total_tokens is not None:
            raise ValueError("give total_rows or total_tokens, not both")
        return self

    @property
    def total(self) -> str | None:
        """The key of the total the weights share out (`total_rows` or `total_tokens`), or None."""
        return next((key for key in ("total_rows", "total_tokens") if getattr(self, key) is not None), None)
