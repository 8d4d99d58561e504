"""The Jinja environment chat templates render in, as transformers' `apply_chat_template` builds it, without importing
transformers (that import costs most of a second of a run's start-up).

The same sandbox, options, extensions, filters and globals: `ImmutableSandboxedEnvironment` with `trim_blocks` and
`lstrip_blocks`, loop controls, the `{% generation %}` tag (its body rendered as is: the pipeline finds trained text
itself), a `tojson` that does not escape HTML, `raise_exception`, `strftime_now`, a `dict` constructor and a
`namespace` that refuses underscore names. Tests compare it with transformers' own, name by name and rendering by
rendering. The reasoning-field aliases transformers applies to messages are here too.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
"""Names a message's reasoning is passed under; the first is the one chat templates read."""


def alias_reasoning_fields(messages: list[Any]) -> list[Any]:
    """Fill `reasoning_content` from older names for it, and `thinking` for templates that read that."""
    aliased = []
    for message in messages:
        if isinstance(message, dict):
            reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(message)
    return aliased


class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: marks what the model writes, for transformers' assistant mask;
    rendered here as its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: jinja2.runtime.Macro) -> str:
        return caller()


class TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` in templates, without exposing the type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore-prefixed names, which could reach interpreter internals."""

    def __init__(*args, **kwargs):  # jinja's own signature trick: `namespace(self=...)` still works
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name in attributes:
            TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name, value):
        TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}. "
                "Please rename the attribute."
            )


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def chat_environment() -> ImmutableSandboxedEnvironment:
    """A fresh environment as `apply_chat_template` renders in."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[GenerationTag, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=TemplateDict(),
                               namespace=TemplateNamespace)
    return environment
