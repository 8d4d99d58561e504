"""Thresholds for `check`: one field per configurable check. A YAML file lists only what differs from these.

Checks whose only sane threshold is zero (accounting, labels, lengths over the limit, samples with no trained
token, checksums) have no field: they always fail on a single problem.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.loading import read_yaml_mapping, validate_model

CheckName = Literal[
    "accounting",
    "reject_rate",
    "truncation_rate",
    "no_trained_tokens",
    "trained_fraction",
    "length",
    "duplicates",
    "labels",
    "end_of_turn",
    "decode_round_trip",
    "checksums",
    "injected_text",
]


class CheckConfig(BaseModel):
    """What `check` accepts. Rates are fractions in [0, 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_reject_rate: float = Field(0.05, ge=0, le=1, description="rejected / read")
    max_truncation_rate: float = Field(0.05, ge=0, le=1, description="notes.truncated / written")
    min_trained_fraction: float = Field(0.05, ge=0, le=1, description="trained tokens / tokens, all splits")
    max_duplicate_rate: float = Field(0.01, ge=0, le=1, description="duplicate rows / written, across splits")
    max_duplicates: int | None = Field(None, ge=0, description="and at most this many duplicate rows (null: no cap)")
    min_end_of_turn_fraction: float = Field(1.0, ge=0, le=1, description="trained runs that end on a special token")
    decode_sample_rows: int = Field(200, ge=0, description="rows the decode round trip is tried on (0: all)")
    min_decode_round_trip: float = Field(1.0, ge=0, le=1, description="sampled rows whose ids survive decode+encode")
    cut_tail_tokens: int = Field(8, ge=0, description="tokens at the end of a possibly cut row the round trip ignores")
    max_injected_text_rate: float = Field(0.0, ge=0, le=1, description="written rows holding text the chat template "
                                          "added (a default system prompt, a date line) / written")
    report_samples: int = Field(3, ge=0, description="samples shown in the HTML report")
    skip: tuple[CheckName, ...] = Field((), description="checks not to run (reported as skipped)")


def load_check_config(path: Path | None) -> CheckConfig:
    """Read a thresholds YAML file; report every problem in it at once."""
    if path is None:
        return CheckConfig()
    return validate_model(CheckConfig, read_yaml_mapping(path), source=path)
