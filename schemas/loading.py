"""Loading a config model from YAML plus overrides, reporting every problem at once (as torchtune does)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from schemas.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; ConfigError when it cannot be read or is not a mapping."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc}"]) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError([f"{path}: the config file must be a mapping of keys to values"])
    return loaded or {}


def validate_model(model: type[Model], data: dict[str, Any], *, source: Path | None) -> Model:
    """`model` validated from `data`; ConfigError listing each problem as `key.path: message`."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(problems(error, source=source)) from None


def problems(error: ValidationError, *, source: Path | None) -> list[str]:
    """One line per pydantic error; an unknown key says so and names the file."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + (f" (in {source})" if source else "")
        if loc:
            lines.append(f"{loc}: {msg}")
        else:
            lines.extend(msg.splitlines())
    return lines
