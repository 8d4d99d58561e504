"""`check`: every check passes on a real output and fails on a copy edited to break it; CLI exit codes 0/1/2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.commands.check import content_hash, is_byte_level, round_trips, run_checks
from pipeline.errors import ConfigError, InputError
from pipeline.run import preprocess
from pipeline.shards.format import IGNORE_INDEX
from pipeline.shards.reader import iter_batches
from pipeline.shards.writer import Sample, SampleTable, ShardWriter
from pipeline.tokenizer import special_token_ids
from schemas.check_config import CheckConfig, load_check_config
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER, demo_tokenizer

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def chat(k: int, turns: int = 1) -> dict:
    messages = [SYSTEM] if k % 2 else []
    for t in range(turns):
        messages += [{"role": "user", "content": f"Question {k}.{t}: what is {k} + {t}?"},
                     {"role": "assistant", "content": f"The answer to {k}.{t} is {k + t}. 第{t}轮回答，谢谢。"}]
    return {"messages": messages}


def build_output(root: Path, rows: int = 30, **overrides) -> Path:
    """A real output: `rows` conversations (1-3 turns, some Chinese) and one invalid line, two shards, an eval split."""
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(chat(k, 1 + k % 3), ensure_ascii=False) + "\n" for k in range(rows))
                    + "{not json\n", encoding="utf-8")
    options = {"output.eval_split": 0.2, "output.rows_per_shard": 20, **overrides}
    config = load_config(None, {"inputs": [str(data)], "render.tokenizer": str(DEMO_TOKENIZER), **options})
    out = root / "out"
    preprocess(config, out)
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return build_output(tmp_path_factory.mktemp("good"))


@pytest.fixture
def copy(good, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(good, out)
    return out


def failed(out: Path, config: CheckConfig = CheckConfig()) -> set[str]:
    return {r.name for r in run_checks(out, config).results if r.status == "fail"}


def edit_manifest(out: Path, edit) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


def rewrite_rows(out: Path, edit, *, split: str = "train", shard: int = 0, fix_manifest: bool = True) -> None:
    """Rewrite one shard with `edit(rows)` applied (rows as dicts of numpy arrays); update the manifest to match,
    so that only the check aimed at fails."""
    path = sorted((out / split).glob("*.arrow"))[shard]
    table = pa.Table.from_batches(list(iter_batches(path)))
    rows = [{**r, "input_ids": np.array(r["input_ids"]), "labels": np.array(r["labels"])} for r in table.to_pylist()]
    before = len(rows)
    rows = edit(rows)
    writer = ShardWriter(path)
    writer.write(SampleTable.of([Sample(r["input_ids"], r["labels"], r["id"], r["source"], r["row"]) for r in rows]))
    info = writer.close()
    if not fix_manifest:
        return

    def update(manifest):
        entry = manifest["splits"][split]
        entry["shards"][shard].update(rows=info.rows, tokens=info.tokens, trained_tokens=info.trained_tokens,
                                      sha256=info.sha256)
        for key in ("rows", "tokens", "trained_tokens"):
            entry[key] = sum(s[key] for s in entry["shards"])
        manifest["accounting"]["written"] += len(rows) - before
        manifest["accounting"]["read"] += len(rows) - before

    edit_manifest(out, update)


def test_a_real_output_passes_every_check(good):
    report = run_checks(good)
    assert report.passed, report.to_markdown()
    statuses = {r.name: r.status for r in report.results}
    assert set(statuses.values()) == {"pass"}  # none skipped: default preset, byte-level tokenizer
    assert report.scan.rows["train"] + report.scan.rows["eval"] == 30
    assert report.scan.round_trip_tried == 30 and report.scan.runs > 30


def test_edited_labels_fail_the_label_check(copy):
    def edit(rows):
        labels = rows[0]["labels"]
        k = int(np.flatnonzero(labels == IGNORE_INDEX)[3])
        labels[k] = rows[0]["input_ids"][k] + 1  # a label that is neither -100 nor its token
        return rows

    rewrite_rows(copy, edit)
    assert failed(copy) == {"labels", "end_of_turn"}  # the stray label is also a trained run with no end-of-turn


def test_labels_of_another_length_fail_the_label_check(copy):
    path = sorted((copy / "train").glob("*.arrow"))[0]
    table = pa.ipc.open_stream(path.read_bytes()).read_all()  # not memory-mapped: the file is rewritten in place
    labels = table.column("labels").to_pylist()
    labels[1] = labels[1][:-1]  # the writer cannot write this, so build the columns by hand
    bad = table.set_column(1, "labels", pa.array(labels, type=pa.list_(pa.int32())))
    with pa.ipc.new_stream(str(path), bad.schema) as writer:
        writer.write_table(bad)
    result = {r.name: r for r in run_checks(copy).results}
    assert result["labels"].status == "fail" and "labels" in result["labels"].detail
    assert result["checksums"].status == "fail"


def test_a_corrupted_shard_byte_fails_the_checksum(copy):
    path = sorted((copy / "train").glob("*.arrow"))[0]
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x01
    path.write_bytes(bytes(data))
    assert "checksums" in failed(copy)


def test_an_unreadable_shard_is_a_failed_check_not_a_crash(copy):
    path = sorted((copy / "train").glob("*.arrow"))[0]
    path.write_bytes(path.read_bytes()[:300])
    result = {r.name: r for r in run_checks(copy).results}
    assert result["checksums"].status == "fail" and "unreadable" in result["checksums"].detail
    assert result["accounting"].status == "fail"


def test_a_shard_file_not_in_the_manifest_fails_the_checksums(copy):
    shutil.copy(sorted((copy / "train").glob("*.arrow"))[0], copy / "train" / "data-extra.arrow")
    assert failed(copy) == {"checksums"}


def test_the_checksum_count_is_of_listed_files_that_match(copy):
    listed = sorted((copy / "train").glob("*.arrow")) + sorted((copy / "eval").glob("*.arrow"))
    for k in range(len(listed) + 2):  # more stray files than listed ones
        shutil.copy(listed[0], copy / "train" / f"data-extra-{k}.arrow")
    corrupted = bytearray(listed[-1].read_bytes())
    corrupted[-200] ^= 0x01
    listed[-1].write_bytes(bytes(corrupted))
    result = {r.name: r for r in run_checks(copy).results}["checksums"]
    assert result.status == "fail" and result.value == f"{len(listed) - 1}/{len(listed)} match", result.value


def test_cache_files_that_datasets_writes_beside_the_shards_are_ignored_with_a_note(copy):
    """The README's recipe (`load_from_disk`, then `map`) leaves `cache-*.arrow` files in the split folders."""
    import datasets

    ds = datasets.load_from_disk(str(copy))
    ds.map(lambda r: {"attention_mask": [1] * r["length"]})
    caches = sorted((copy / "train").glob("cache-*.arrow"))
    assert caches  # what this test is about: datasets did write them there
    result = {r.name: r for r in run_checks(copy).results}["checksums"]
    assert result.status == "pass", result.detail
    assert "cache file(s) that `datasets` wrote beside the shards ignored" in result.detail


def test_a_duplicated_row_fails_the_duplicate_check(copy):
    rewrite_rows(copy, lambda rows: rows + [{**rows[0], "id": "copy", "row": 999}])
    result = {r.name: r for r in run_checks(copy).results}
    assert {n for n, r in result.items() if r.status == "fail"} == {"duplicates"}
    assert "copy" in result["duplicates"].detail
    assert not failed(copy, CheckConfig(max_duplicate_rate=0.1))
    assert failed(copy, CheckConfig(max_duplicate_rate=0.1, max_duplicates=0)) == {"duplicates"}


def test_duplicates_across_splits_are_counted(copy):
    path = sorted((copy / "eval").glob("*.arrow"))[0]
    eval_row = pa.Table.from_batches(list(iter_batches(path))).slice(0, 1).to_pylist()[0]
    rewrite_rows(copy, lambda rows: rows + [{**eval_row, "input_ids": np.array(eval_row["input_ids"]),
                                             "labels": np.array(eval_row["labels"]), "id": "leak"}])
    report = run_checks(copy)
    assert report.scan.cross_split_duplicates == 1


def test_the_duplicate_key_ignores_whitespace_runs_but_not_words():
    assert content_hash("<|user|>\nhello   world \n") == content_hash("<|user|> hello world")
    assert content_hash("<|user|>hello") != content_hash("<|assistant|>hello")


def test_a_row_with_no_trained_token_fails(copy):
    def edit(rows):
        rows[2]["labels"][:] = IGNORE_INDEX
        return rows

    rewrite_rows(copy, edit)
    result = {r.name: r for r in run_checks(copy).results}
    assert {n for n, r in result.items() if r.status == "fail"} == {"no_trained_tokens"}
    assert result["no_trained_tokens"].value == 1


def test_broken_accounting_fails(copy):
    edit_manifest(copy, lambda m: m["accounting"].update(read=m["accounting"]["read"] + 1))
    assert failed(copy) == {"accounting"}


def test_split_rows_that_differ_from_the_shards_fail_the_accounting(copy):
    edit_manifest(copy, lambda m: m["splits"]["train"].update(rows=m["splits"]["train"]["rows"] - 1))
    result = {r.name: r for r in run_checks(copy).results}
    assert result["accounting"].status == "fail" and "train" in result["accounting"].detail


def test_reject_rate_over_the_threshold_fails(good):
    assert failed(good, CheckConfig(max_reject_rate=0.01)) == {"reject_rate"}  # 1 invalid line of 31


def test_a_sample_over_the_limit_fails_the_length_check(copy):
    edit_manifest(copy, lambda m: m["config"]["truncation"].update(max_length=40))
    result = {r.name: r for r in run_checks(copy).results}
    assert result["length"].status == "fail" and "p95" in result["length"].value


def test_truncation_rate_and_cut_rows(tmp_path):
    out = build_output(tmp_path, rows=24, **{"truncation.max_length": 60})
    result = {r.name: r for r in run_checks(out).results}
    assert result["truncation_rate"].status == "fail" and result["truncation_rate"].value > 0.05
    # cut rows end mid-turn: still fine for lengths, end-of-turn and the round trip (cut-tail tolerance)
    assert {n for n, r in result.items() if r.status == "fail"} == {"truncation_rate"}


def test_an_untrained_end_of_turn_fails(copy):
    special = set(special_token_ids(demo_tokenizer()).tolist())

    def edit(rows):
        for row in rows:  # the first row with a turn after an assistant turn
            ids, labels = row["input_ids"], row["labels"]
            trained = labels != IGNORE_INDEX
            ends = [k for k in range(len(ids) - 1) if trained[k] and not trained[k + 1]]
            if ends:
                assert ids[ends[0]] in special
                labels[ends[0]] = IGNORE_INDEX
                return rows
        raise AssertionError("no multi-turn row")

    rewrite_rows(copy, edit)
    result = {r.name: r for r in run_checks(copy).results}
    assert {n for n, r in result.items() if r.status == "fail"} == {"end_of_turn"}
    assert result["end_of_turn"].value < 1


@pytest.mark.parametrize("edit", [{"preset": "glm4"}, {"train_end_of_turn": False}])
def test_the_end_of_turn_check_is_not_applicable_to_other_policies(copy, edit):
    edit_manifest(copy, lambda m: m["config"]["mask"].update(edit))
    result = {r.name: r for r in run_checks(copy).results}
    assert result["end_of_turn"].status == "skip" and "not applicable" in result["end_of_turn"].detail


def test_a_non_canonical_tokenization_fails_the_round_trip(copy):
    tokenizer = demo_tokenizer()
    special = set(special_token_ids(tokenizer).tolist())

    def edit(rows):
        ids, labels = rows[0]["input_ids"], rows[0]["labels"]
        k = next(i for i, t in enumerate(ids.tolist()) if t not in special and len(tokenizer.decode([t])) >= 3
                 and labels[i] == IGNORE_INDEX)
        text = tokenizer.decode([int(ids[k])])
        split = tokenizer.encode(text[0], add_special_tokens=False) + tokenizer.encode(text[1:], add_special_tokens=False)
        assert len(split) > 1 and tokenizer.decode(split) == text
        rows[0]["input_ids"] = np.concatenate([ids[:k], split, ids[k + 1 :]])
        rows[0]["labels"] = np.concatenate([labels[:k], [IGNORE_INDEX] * len(split), labels[k + 1 :]])
        return rows

    rewrite_rows(copy, edit)
    assert failed(copy, CheckConfig(decode_sample_rows=0)) == {"decode_round_trip"}


def test_checks_can_be_skipped_by_config(copy):
    edit_manifest(copy, lambda m: m["accounting"].update(read=0))
    assert failed(copy, CheckConfig(skip=("accounting", "reject_rate"))) == set()


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / "manifest.json").unlink(), "no manifest.json"),
    (lambda out: (out / "manifest.json").write_text("{not json"), "not a valid manifest"),
    (lambda out: (out / "manifest.json").write_text("{}"), "not a valid manifest"),
    (lambda out: next((out / "eval").glob("*.arrow")).unlink(), "missing"),
    (lambda out: (out / "tokenizer" / "tokenizer.json").unlink(), "tokenizer"),
])
def test_an_invalid_output_is_an_input_error(copy, damage, message):
    damage(copy)
    with pytest.raises(InputError, match=message):
        run_checks(copy)
    result = CliRunner().invoke(main, ["check", str(copy)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_cli_exit_codes_markdown_json_and_report(good, copy, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["check", str(good), "--report", str(tmp_path / "r.html")])
    assert ok.exit_code == 0, ok.output
    assert "| check | status | value | threshold | detail |" in ok.output and "all checks passed" in ok.output
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    edit_manifest(copy, lambda m: m["accounting"].update(read=m["accounting"]["read"] + 1))
    bad = runner.invoke(main, ["check", str(copy), "--json"])
    assert bad.exit_code == 1
    data = json.loads(bad.output)
    assert data["passed"] is False and {c["name"] for c in data["checks"] if c["status"] == "fail"} == {"accounting"}
    assert all({"name", "value", "threshold", "status"} <= set(c) for c in data["checks"])


def test_thresholds_file_lists_every_problem(tmp_path):
    path = tmp_path / "check.yaml"
    path.write_text("max_reject_rate: 2\nmin_trained_fraktion: 0.1\nskip: [nope]\n")
    with pytest.raises(ConfigError) as info:
        load_check_config(path)
    text = str(info.value)
    assert "max_reject_rate" in text and "min_trained_fraktion" in text and "skip" in text
    result = CliRunner().invoke(main, ["check", str(tmp_path), "--config", str(path)])
    assert result.exit_code == 2 and "min_trained_fraktion" in result.output
    path.write_text("max_duplicate_rate: 0.0\nskip: [decode_round_trip]\n")
    assert load_check_config(path) == CheckConfig(max_duplicate_rate=0.0, skip=("decode_round_trip",))


def test_a_cut_through_a_character_is_tolerated_only_at_the_tail():
    tokenizer = demo_tokenizer()
    ids = np.array(tokenizer.encode("The answer is 3. 第三轮回答，谢谢。", add_special_tokens=False))
    cuts = [k for k in range(1, len(ids)) if tokenizer.decode(ids[:k].tolist()).endswith("\ufffd")]
    assert cuts, "the demo tokenizer splits some CJK characters over byte tokens"
    cut = ids[: cuts[0]]
    assert round_trips(tokenizer, ids) and not round_trips(tokenizer, cut)
    assert round_trips(tokenizer, cut, tolerance=2)


def test_is_byte_level_reads_only_the_decoder():
    """Serialising the whole tokenizer (half of it merges) to find its decoder took half a second on a 150k vocabulary."""

    class Backend:
        decoder = demo_tokenizer().backend_tokenizer.decoder

        def to_str(self):
            raise AssertionError("the whole tokenizer was serialised")

    class Tokenizer:
        backend_tokenizer = Backend()

    assert is_byte_level(Tokenizer()) is True
    Backend.decoder = None
    assert is_byte_level(Tokenizer()) is False


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """An output of two sources: ten chats drawn 1.5 times (five of them twice) and four chats once."""
    root = tmp_path_factory.mktemp("mixed")
    for name, rows in (("a.jsonl", range(10)), ("b.jsonl", range(10, 14))):
        (root / name).write_text("".join(json.dumps(chat(k), ensure_ascii=False) + "\n" for k in rows), encoding="utf-8")
    config = load_config(None, {"sources": [{"path": str(root / "a.jsonl"), "epochs": 1.5}, {"path": str(root / "b.jsonl")}],
                                "render.tokenizer": str(DEMO_TOKENIZER), "output.eval_split": 0.2})
    preprocess(config, root / "out")
    return root / "out"


def test_an_output_of_sources_passes_and_its_repeated_draws_are_not_duplicates(mixed):
    report = run_checks(mixed)
    assert report.passed, report.to_markdown()
    result = {r.name: r for r in report.results}
    assert "5 repeated draws of a record (sources) not counted" in result["duplicates"].detail


def test_a_source_that_does_not_balance_fails_the_accounting(mixed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(mixed, out)
    edit_manifest(out, lambda m: m["sources"][0].update(written=m["sources"][0]["written"] - 1))
    result = {r.name: r for r in run_checks(out).results}["accounting"]
    assert result.status == "fail"
    assert "a.jsonl: drawn 15 != written 14 + rejected 0 + filtered 0" in result.detail
    assert "written 19 != the sources' written 18" in result.detail
