"""Output directories: preprocess writes only into a new, empty or own output, never over the user's files or inputs,
and replaces only what it recorded as its own."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import DEMO_TOKENIZER, REPO

CHATS = "".join(json.dumps({"messages": [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": f"a{k}"}]})
                + "\n" for k in range(4))


def preprocess(*args: str, **kw):
    return CliRunner().invoke(main, ["preprocess", *args, "--tokenizer", str(DEMO_TOKENIZER)], **kw)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def chats(tmp_path) -> Path:
    path = tmp_path / "in" / "chats.jsonl"
    path.parent.mkdir()
    path.write_text(CHATS)
    return path


def test_a_directory_holding_other_files_is_refused_and_left_as_it_was(tmp_path, chats):
    home = tmp_path / "H"
    (home / "train").mkdir(parents=True)
    (home / "train" / "thesis.txt").write_text("three years of work\n")
    (home / "manifest.json").write_text('{"mine": true}\n')
    before = snapshot(home)
    result = preprocess(str(chats), "--out", str(home))
    assert result.exit_code == 2, result.output
    assert f"{home}: not empty and not an output of chatshard (it holds manifest.json, train/)" in result.output
    assert "Traceback" not in result.output
    assert snapshot(home) == before


@pytest.mark.parametrize("out", ["data", ".", "data/train/shards"])
def test_an_output_that_is_holds_or_sits_inside_an_input_is_refused(tmp_path, monkeypatch, out):
    """`--out data` with inputs under data/, `--out .` in the project, and an output inside an input folder."""
    monkeypatch.chdir(tmp_path)
    for split in ("train", "eval"):
        Path("data", split).mkdir(parents=True)
        Path("data", split, "part.jsonl").write_text(CHATS)
    before = snapshot(tmp_path)
    result = preprocess("data/train", "data/eval/*.jsonl", "--out", out)
    assert result.exit_code == 2, result.output
    relation = {"data": "holds", ".": "holds", "data/train/shards": "sits inside"}[out]
    assert f"{out}: the output directory {relation} the input data/" in result.output
    assert snapshot(tmp_path) == before


def test_the_output_may_not_be_the_tokenizer_it_reads(tmp_path, chats):
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(DEMO_TOKENIZER, tokenizer)
    before = snapshot(tokenizer)
    result = CliRunner().invoke(main, ["preprocess", str(chats), "--tokenizer", str(tokenizer), "--out", str(tokenizer)])
    assert result.exit_code == 2 and f"{tokenizer}: the output directory is the input" in result.output, result.output
    assert snapshot(tokenizer) == before


def test_rerunning_into_its_own_output_replaces_only_its_own_files(tmp_path, chats):
    out = tmp_path / "out"
    assert preprocess(str(chats), "--out", str(out), "--eval-split", "0.5").exit_code == 0
    assert (out / "eval").is_dir()
    (out / "NOTES.md").write_text("my notes\n")  # a file the tool never writes: left alone
    chats.write_text(CHATS + CHATS.replace("q", "Q"))
    result = preprocess(str(chats), "--out", str(out))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["accounting"]["read"] == 8 and list(manifest["splits"]) == ["train"]
    assert not (out / "eval").exists() and not (out / ".work").exists()
    assert (out / "NOTES.md").read_text() == "my notes\n"
    from pipeline.outputs import LEDGER

    ledger = json.loads((out / LEDGER).read_text())
    assert ledger["kind"] == "shards" and ledger["scratch"] == []
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*")} - {LEDGER, "NOTES.md"}
    assert on_disk == set(ledger["paths"])  # everything it wrote is recorded, and nothing it removed


@pytest.mark.parametrize("where, named", [("train/thesis.txt", "train/thesis.txt"),
                                          ("tokenizer/thesis.txt", "tokenizer/thesis.txt"),
                                          (".work/thesis.txt", ".work")])  # the run removed its .work: not its own
def test_a_foreign_file_where_its_own_output_is_replaced_is_refused(tmp_path, chats, where, named):
    out = tmp_path / "out"
    assert preprocess(str(chats), "--out", str(out)).exit_code == 0
    (out / where).parent.mkdir(exist_ok=True)
    (out / where).write_text("not the tool's\n")
    before = snapshot(out)
    result = preprocess(str(chats), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert f"{out / named}: not written by chatshard" in result.output
    assert snapshot(out) == before


def test_an_output_of_an_earlier_version_is_refused_with_a_clear_message(tmp_path, chats):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"version": 1, "tool": {"name": "chatshard", "version": "0.0.9"}}))
    before = snapshot(out)
    result = preprocess(str(chats), "--out", str(out))
    assert result.exit_code == 2
    assert "a shards output of an earlier chatshard version, which did not record its files" in result.output
    assert snapshot(out) == before


def test_an_output_inside_an_input_folder_is_not_read_back(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "chats.jsonl").write_text(CHATS + "{broken\n")
    assert preprocess(str(data / "chats.jsonl"), "--out", str(data / "shards")).exit_code == 0
    result = preprocess(str(data), "--out", str(tmp_path / "again"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert [i["path"] for i in manifest["inputs"]] == [str(data / "chats.jsonl")]
    assert manifest["accounting"]["read"] == 5
    from pipeline.stages.ingest import resolve_inputs

    assert resolve_inputs([f"{data}/**/*.json*", f"{data}/*"]) == [data / "chats.jsonl"]
    named = preprocess(str(data / "shards"), "--out", str(tmp_path / "third"))
    assert named.exit_code == 2 and f"{data / 'shards'}: an output directory of chatshard" in named.output


def test_the_same_file_named_twice_is_read_once(tmp_path, chats, monkeypatch):
    monkeypatch.chdir(chats.parent)
    result = preprocess("chats.jsonl", str(chats), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "read 4  written 4" in result.output
    assert f"warning: input files named more than once are read once: chats.jsonl (also given as {chats})" in result.output


def test_make_preprocess_twice(tmp_path, monkeypatch):
    """What `make preprocess` runs, twice into the same directory: the second run replaces the first's files."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "shards"
    runs = [CliRunner().invoke(main, ["preprocess", "--config", "data/preprocess.yaml", "--out", str(out)])
            for _ in range(2)]
    assert [r.exit_code for r in runs] == [0, 0], runs[1].output
    assert runs[0].output == runs[1].output


def test_the_ledger_rules(tmp_path):
    """Kinds do not mix; a temp file a kill left beside a recorded file is the tool's; a recorded folder is removed
    only when everything in it is the tool's."""
    from pipeline.errors import OutputError
    from pipeline.outputs import LEDGER, claim

    out = tmp_path / "out"
    owned = claim(out, "shards", writes=["a.bin"])
    with pytest.raises(OutputError, match="holds a chatshard shards output, not a run output"):
        claim(out, "run")
    (out / ".a.bin.tmp").write_bytes(b"half")  # killed mid-write
    owned = claim(out, "shards", writes=["a.bin"])
    owned.remove(".a.bin.tmp")
    assert not (out / ".a.bin.tmp").exists()
    owned.record("dir/x.bin")
    (out / "dir").mkdir()
    (out / "dir" / "x.bin").write_bytes(b"ours")
    (out / "dir" / "y.bin").write_bytes(b"theirs")
    with pytest.raises(OutputError, match=f"{out / 'dir' / 'y.bin'}: not written by chatshard"):
        owned.remove("dir")
    (out / "dir" / "y.bin").unlink()
    owned.remove("dir")
    assert not (out / "dir").exists() and json.loads((out / LEDGER).read_text())["paths"] == ["a.bin"]
    (out / LEDGER).write_text("{torn")
    with pytest.raises(OutputError, match="unreadable ledger"):
        claim(out, "shards")


def test_a_directory_swap_killed_midway_is_finished_by_the_next_run(tmp_path, monkeypatch):
    import os

    import pipeline.outputs as outputs

    out = tmp_path / "out"
    owned = outputs.claim(out, "run")
    (owned.scratch(".final.tmp") / "weights").write_text("one")
    owned.replace_dir(".final.tmp", "final")
    (owned.scratch(".final.tmp", fresh=True) / "weights").write_text("two")
    real_replace = os.replace

    def killed_before_the_new_one_moves_in(src, dst):
        if dst == out / "final":
            raise KeyboardInterrupt  # final/ is set aside as .final.old, the new one not yet in place
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", killed_before_the_new_one_moves_in)
    with pytest.raises(KeyboardInterrupt):
        owned.replace_dir(".final.tmp", "final")
    monkeypatch.undo()
    assert not (out / "final").exists() and (out / ".final.old" / "weights").read_text() == "one"
    owned = outputs.claim(out, "run", writes=["final"])
    (owned.scratch(".final.tmp", fresh=True) / "weights").write_text("three")
    owned.replace_dir(".final.tmp", "final")
    assert sorted(p.name for p in out.iterdir()) == [outputs.LEDGER, "final"]
    assert (out / "final" / "weights").read_text() == "three"
