"""Named built-in chat templates (Hugging Face chat-template semantics), for tokenizers without one or to override.

    glm4     GLM-4 (glm-4-9b-chat): [gMASK]<sop>, <|role|>\\n{content}, tools on the system message, `observation`
    chatml   ChatML, tool calls and results as Qwen2.5 writes them, no default system prompt
    llama3   Llama 3 Instruct: <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>
    alpaca   the Alpaca instruction format of "LLMs from scratch", chapter 7, each response ended by eos_token

Each file opens with a comment that states exactly what it renders.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError

TEMPLATE_DIR = Path(__file__).resolve().parent

BUILTIN_TEMPLATES: dict[str, str] = {
    "glm4": "glm4.jinja",
    "chatml": "chatml.jinja",
    "llama3": "llama3.jinja",
    "alpaca": "alpaca.jinja",
}
"""Built-in template name -> file name in this folder."""


def load_template(name_or_path: str) -> str:
    """The text of a built-in template (by name) or of a `.jinja` file (by path).

    Raises `ConfigError` for anything else, naming the built-in templates.
    """
    if name_or_path in BUILTIN_TEMPLATES:
        return (TEMPLATE_DIR / BUILTIN_TEMPLATES[name_or_path]).read_text(encoding="utf-8")
    path = Path(name_or_path)
    if path.suffix == ".jinja" and path.is_file():
        return path.read_text(encoding="utf-8")
    names = ", ".join(sorted(BUILTIN_TEMPLATES))
    raise ConfigError(
        [f"chat template {name_or_path!r} is neither a built-in name ({names}) nor an existing .jinja file"]
    )
