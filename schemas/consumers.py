"""The trainers `export` writes a layout for (`pipeline/commands/export.py` holds each one's layout)."""
from __future__ import annotations

from typing import Literal

Consumer = Literal["trl", "llamafactory", "axolotl", "hf"]
