"""`show`: one sample with trained runs in [[...]] (or coloured), the ids table, and clear errors."""
from __future__ import annotations

import re

import datasets
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.commands.show import runs, token_pieces
from pipeline.stages.mask import IGNORE_INDEX
from tests.commands.test_check import build_output
from tests.conftest import demo_tokenizer

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return build_output(tmp_path_factory.mktemp("show"), rows=10)


def _invoke(*args):
    return CliRunner().invoke(main, ["show", *map(str, args)])


def test_trained_runs_are_bracketed_and_the_text_is_the_decoded_row(out):
    train = datasets.load_from_disk(str(out))["train"]
    ids, labels = train[2]["input_ids"], np.array(train[2]["labels"])
    result = _invoke(out, "--index", 2)
    assert result.exit_code == 0, result.output
    header, _, body = result.output.rstrip("\n").split("\n", 2)
    assert header.startswith(f"train[2] id={train[2]['id']}") and f"{int((labels != IGNORE_INDEX).sum())} trained" in header
    assert f" from {train[2]['source']}:{train[2]['row']} " in header  # where the sample came from: file:row
    assert body.replace("[[", "").replace("]]", "") == demo_tokenizer().decode(ids)
    assert body.count("[[") == body.count("]]") == sum(t for _, _, t in runs(labels != IGNORE_INDEX))
    first = body[body.index("[[") + 2 : body.index("]]")]
    assert first.startswith("\nThe answer to") and first.endswith("<|user|>")  # content and its end-of-turn


def test_ids_table_and_colour(out):
    train = datasets.load_from_disk(str(out))["train"]
    result = _invoke(out, "--ids", "--color")
    assert result.exit_code == 0
    assert "\x1b[" in result.output and "[[" not in result.output
    plain = ANSI.sub("", result.output)
    table = plain.split("  pos       id    label  token\n", 1)[1].splitlines()
    assert len(table) == len(train[0]["input_ids"])
    pos, token, label, text = table[3].split(None, 3)
    assert (int(pos), int(token), int(label)) == (3, train[0]["input_ids"][3], train[0]["labels"][3])


def test_find_by_id_in_any_split(out):
    row = datasets.load_from_disk(str(out))["eval"][0]
    result = _invoke(out, "--id", row["id"])
    assert result.exit_code == 0 and result.output.startswith(f"eval[0] id={row['id']}")


@pytest.mark.parametrize("args, message", [
    (["--index", "999"], "--index: 999 is out of range"),
    (["--index", "-1"], "out of range"),
    (["--id", "nope"], "--id: no row with id 'nope'"),
    (["--split", "test"], "--split: no split 'test'"),
    (["--index", "1", "--id", "x"], "not both"),
])
def test_clear_errors(out, args, message):
    result = _invoke(out, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_not_an_output_directory(tmp_path):
    result = _invoke(tmp_path)
    assert result.exit_code == 2 and "no manifest.json" in result.output


def test_token_pieces_join_to_the_decoded_text_through_split_characters():
    tokenizer = demo_tokenizer()
    ids = tokenizer.encode("<|user|>\n第三轮：谢谢！ naïve café 😀", add_special_tokens=False)
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids)
    assert "" in pieces  # some character spans several byte tokens; its last token carries it
