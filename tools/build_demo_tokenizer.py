"""The demo tokenizer: a small byte-level BPE trained on `data/corpus.txt`, with GLM-4-style special tokens.

It is the project's embedded default (`make preprocess` runs offline with it) and the tokenizer tests use for
hand-checkable results. Byte-level BPE with all 256 bytes in the alphabet encodes any text losslessly, Chinese and
emoji included. The chat format is GLM-4's (the built-in `glm4` template), so its special tokens are GLM-4's:

    <|endoftext|> (eos and pad)  [MASK]  [gMASK]  [sMASK]  <sop>  <eop>
    <|system|>  <|user|>  <|assistant|>  <|observation|>

They take the ids right after the learned vocabulary, as in GLM-4. Encoding adds no special tokens: the template
writes `[gMASK]<sop>` itself. The build is deterministic: the same corpus always gives byte-identical files.

Run it from the repository root with `make demo-tokenizer` (or `python -m tools.build_demo_tokenizer`).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from pipeline.templates import load_template

VOCAB_SIZE = 4000
"""Total vocabulary, special tokens included."""

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 8192

# GPT-4 / Qwen2 style pre-split: contractions, letter runs with one leading non-letter, single digits,
# punctuation runs, newlines, and whitespace that leaves the last space to the next word.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _train(corpus: Path) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False: offsets keep their leading spaces, so character spans map to tokens exactly.
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train([str(corpus)], trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def build_demo_tokenizer(corpus: Path, out: Path) -> None:
    """Train the demo tokenizer on `corpus` and save it to `out` (tokenizer.json, tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    corpus, out = Path(corpus), Path(out)
    tokenizer = _train(corpus)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        chat_template=load_template("glm4"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        fast.save_pretrained(tmp, save_jinja_files=False)  # chat_template stays in tokenizer_config.json
        tokenizer_json = json.loads((Path(tmp) / "tokenizer.json").read_text(encoding="utf-8"))
        config = json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))
    # Spelled so that transformers 4.x loads it too (5.x writes "TokenizersBackend" and "extra_special_tokens").
    config.pop("backend", None)
    config.pop("extra_special_tokens", None)
    config["additional_special_tokens"] = SPECIAL_TOKENS[1:]
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    out.mkdir(parents=True, exist_ok=True)
    # tokenizer.json compact (half the size; it is generated), in the library's own key order.
    _write_json(out / "tokenizer.json", json.dumps(tokenizer_json, ensure_ascii=False))
    _write_json(out / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True))


def _write_json(path: Path, text: str) -> None:
    """Write atomically (temp file, then rename), as UTF-8 with a final newline."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


@click.command()
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path), default="data/corpus.txt",
              show_default=True, help="Training text for the byte-level BPE.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="data/tokenizer", show_default=True,
              help="Folder to write tokenizer.json and tokenizer_config.json to.")
def main(corpus: Path, out: Path) -> None:
    """Train the demo tokenizer (byte-level BPE, GLM-4 special tokens and chat template). Deterministic."""
    build_demo_tokenizer(corpus, out)
    click.echo(f"wrote {out}/tokenizer.json and {out}/tokenizer_config.json")


if __name__ == "__main__":
    main()
