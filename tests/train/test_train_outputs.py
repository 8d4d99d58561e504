"""The run directory: the trainer writes only into a new, empty or own run directory, replaces only what it recorded
(final/, adapter/, checkpoints/), and stops with a one-line error or exit 130, never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.train.train_helpers import write_shards

TINY = ["--tiny-hidden", "32", "--tiny-heads", "2", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=16, n_eval=0, tokenizer=True)


def train(shards: Path, out: Path, *args: str):
    return CliRunner().invoke(main, ["train", "--data", str(shards), "--out", str(out), *TINY, *args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_directory_holding_someone_elses_final_is_refused(shards, tmp_path):
    out = tmp_path / "D"
    (out / "final").mkdir(parents=True)
    (out / "final" / "model.safetensors").write_bytes(b"weights trained for a week")
    before = snapshot(out)
    result = train(shards, out, "--max-steps", "1")
    assert result.exit_code == 2, result.output
    assert f"{out}: not empty and not an output of chatshard (it holds final/)" in result.output
    assert "Traceback" not in result.output and snapshot(out) == before


def test_out_pointing_at_a_file_is_refused(shards, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("keep me\n")
    result = train(shards, out, "--max-steps", "1")
    assert result.exit_code == 2 and f"{out}: a file, not a directory" in result.output, result.output
    assert out.read_text() == "keep me\n"


@pytest.mark.parametrize("where", ["data", "parent"])
def test_out_that_is_or_holds_the_shards_is_refused(shards, where):
    before = snapshot(shards)
    out = shards if where == "data" else shards.parent
    result = train(shards, out, "--max-steps", "1")
    relation = "is" if where == "data" else "holds"
    assert result.exit_code == 2 and f"{out}: the output directory {relation} the input {shards}" in result.output
    assert snapshot(shards) == before


def test_own_run_directory_is_recorded_and_foreign_files_in_it_are_refused(shards, tmp_path):
    from pipeline.outputs import LEDGER

    out = tmp_path / "run"
    result = train(shards, out, "--max-steps", "3", "--save-interval", "1", "--keep-checkpoints", "2")
    assert result.exit_code == 0, result.output
    ledger = json.loads((out / LEDGER).read_text())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*")} - {LEDGER}
    assert on_disk == set(ledger["paths"]) and ledger["scratch"] == []  # step 1 pruned and forgotten
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002.pt", "step_0000003.pt"]
    for foreign in ("final/README.md", "checkpoints/step_0000009.pt"):
        (out / foreign).write_text("not the trainer's\n")
        before = snapshot(out)
        result = train(shards, out, "--max-steps", "4", "--resume")
        assert result.exit_code == 2, result.output
        assert f"{out / foreign}: not written by chatshard" in result.output
        assert snapshot(out) == before
        (out / foreign).unlink()


def test_ctrl_c_exits_130_with_how_to_go_on(shards, tmp_path, monkeypatch):
    import pipeline.train.loop as loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "micro_steps", interrupted)
    result = train(shards, tmp_path / "run", "--max-steps", "2")
    assert result.exit_code == 130
    assert "interrupted; rerun with the same arguments plus --resume" in result.output
    assert "Traceback" not in result.output
