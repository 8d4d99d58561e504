"""`diff`: rows added, removed and changed between two real builds (template, tokenizer, truncation, data edits,
masking), build-level differences, the decoded first difference, thresholds and exit codes 0/1/2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.commands.diff import MARK, diff_builds, first_difference
from pipeline.run import preprocess
from pipeline.shards.format import IGNORE_INDEX
from schemas.config import TruncationConfig, load_config
from tests.conftest import DEMO_TOKENIZER, demo_tokenizer, shared_path


def chat(k: int, answer: str | None = None) -> dict:
    """Conversation `k` with its own id, of a length that grows with k."""
    return {"id": f"r{k}", "messages": [
        {"role": "user", "content": f"Question {k}: " + "why? " * k},
        {"role": "assistant", "content": answer or f"Answer {k}: " + "because. " * (2 * k) + "完毕。"}]}


def build(root: Path, name: str, records: list, *, tokenizer: Path = DEMO_TOKENIZER, extra_lines: str = "",
          **options) -> Path:
    data = root / "data" / name / "chats.jsonl"  # one file name for every build, so `config.inputs` stays the same
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + extra_lines, encoding="utf-8")
    config = load_config(None, {"inputs": ["chats.jsonl"], "render.tokenizer": str(tokenizer), **options})
    out = root / name
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(data.parent)
        preprocess(config, out)
    return out


ROWS = [chat(k) for k in range(8)]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diff")
    edited = [chat(0), chat(1, answer="A new answer."), *ROWS[2:5], *ROWS[6:], chat(9)]  # r1 edited, r5 out, r9 in
    return {
        "base": build(root, "base", ROWS),
        "again": build(root, "again", ROWS),
        "chatml": build(root, "chatml", ROWS, **{"render.chat_template": "chatml"}),
        "short": build(root, "short", ROWS, **{"truncation.max_length": 40}),
        "prompt": build(root, "prompt", ROWS, **{"mask.train_on_prompt": True}),
        "edited": build(root, "edited", edited, extra_lines="{not json\n"),
    }


def rows_of(out: Path) -> dict[str, dict]:
    return {r["id"]: r for split in datasets.load_from_disk(str(out)).values() for r in split}


def invoke(*args):
    return CliRunner().invoke(main, ["diff", *map(str, args)])


def test_identical_builds_no_change_exit_0(builds):
    result = invoke(builds["base"], builds["again"], "--json", "--max-changed-rows", 0,
                    "--max-changed-trained-tokens", 0)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["added"], report["removed"], report["changed"], report["unchanged"]) == (0, 0, 0, len(ROWS))
    assert report["build"] == {} and report["examples"] == [] and report["passed"]
    markdown = invoke(builds["base"], builds["again"])
    assert markdown.exit_code == 0 and "No change to the training data" in markdown.output


def test_template_change_alters_every_row_and_shows_both_renderings(builds):
    report = diff_builds(builds["base"], builds["chatml"], show=2).to_json()
    assert (report["added"], report["removed"], report["changed"]) == (0, 0, len(ROWS))
    assert report["altered"]["trained_tokens_fraction"] == 1.0
    assert set(report["build"]) >= {"chat_template.sha256", "chat_template.source", "config.render.chat_template"}
    assert "tokenizer.fingerprint" not in report["build"]
    old, new = rows_of(builds["base"]), rows_of(builds["chatml"])
    assert len(report["examples"]) == 2
    for example in report["examples"]:
        a, b = (np.array(rows[example["id"]]["input_ids"]) for rows in (old, new))
        assert example["first_difference"] == first_difference(a, b) and example["changed_in"] == "both"
        assert MARK in example["old"]["context"] and "<|im_start|>" in example["new"]["context"]
        assert "<|im_start|>" not in example["old"]["context"]


def test_tokenizer_change_is_decoded_with_each_builds_own_tokenizer(builds, tmp_path):
    edited = tmp_path / "tokenizer"
    shutil.copytree(DEMO_TOKENIZER, edited)
    spec = json.loads((edited / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["merges"] = spec["model"]["merges"][: len(spec["model"]["merges"]) // 2]  # fewer merges: longer rows
    (edited / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    other = build(tmp_path, "other", ROWS, tokenizer=edited, **{"render.encoder": "hf"})
    report = diff_builds(builds["base"], other, show=1).to_json()
    assert report["changed"] == len(ROWS) and report["changed_in"]["labels"] == 0
    assert report["build"]["tokenizer.fingerprint"]["old"] != report["build"]["tokenizer.fingerprint"]["new"]
    assert report["tokens"]["new"] > report["tokens"]["old"]
    example = report["examples"][0]
    text = demo_tokenizer().decode(rows_of(builds["base"])[example["id"]]["input_ids"])
    assert example["old"]["context"].replace(MARK, "").replace("[[", "").replace("]]", "").strip("…") in text


def test_two_real_tokenizers(tmp_path):
    qwen, llama = shared_path("tokenizers", "qwen2.5"), shared_path("tokenizers", "llama3")
    fast = {"render.encoder": "hf"}  # no tiktoken proof: seconds less, the same tokens
    report = diff_builds(build(tmp_path, "qwen", ROWS[:3], tokenizer=qwen, **fast),
                         build(tmp_path, "llama", ROWS[:3], tokenizer=llama, **fast), show=1).to_json()
    assert report["changed"] == 3 and "tokenizer.fingerprint" in report["build"]
    assert "<|im_start|>" in report["examples"][0]["old"]["context"]
    assert "<|start_header_id|>" in report["examples"][0]["new"]["context"]


def test_truncation_limit_changes_only_the_rows_over_it(builds):
    report = diff_builds(builds["base"], builds["short"], show=0).to_json()
    base, short = rows_of(builds["base"]), rows_of(builds["short"])
    over = {i for i, r in base.items() if len(r["input_ids"]) > 40}
    cut = {i for i in over if i in short}
    assert over and report["changed"] == len(cut) and report["removed"] == len(over - cut) and report["added"] == 0
    assert report["unchanged"] == len(base) - len(over)
    assert report["build"]["config.truncation.max_length"] == {"old": TruncationConfig().max_length, "new": 40}
    for i in cut:
        assert short[i]["input_ids"] == base[i]["input_ids"][:40]


def test_a_mask_change_is_a_labels_only_change(builds):
    report = diff_builds(builds["base"], builds["prompt"], show=1).to_json()
    assert report["changed"] == report["changed_in"]["labels"] == len(ROWS)
    assert report["tokens"]["old"] == report["tokens"]["new"]
    assert report["trained_tokens"]["new"] == report["tokens"]["new"] > report["trained_tokens"]["old"]
    example = report["examples"][0]
    labels = np.array(rows_of(builds["base"])[example["id"]]["labels"])
    assert example["first_difference"] == int(np.flatnonzero(labels == IGNORE_INDEX)[0])
    assert example["new"]["context"].count("[[") == 1 and example["new"]["context"].startswith(f"{MARK}[[")


def test_data_edits_added_removed_changed_and_reject_counts(builds):
    result = invoke(builds["base"], builds["edited"], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["added"], report["removed"], report["changed"], report["unchanged"]) == (1, 1, 1, len(ROWS) - 2)
    assert report["added_ids"] == ["r9"] and report["removed_ids"] == ["r5"]
    assert [e["id"] for e in report["examples"]] == ["r1"]
    assert report["build"]["rejected.invalid_json"] == {"old": 0, "new": 1}
    assert report["build"]["accounting.read"] == {"old": len(ROWS), "new": len(ROWS) + 1}
    old, new = rows_of(builds["base"]), rows_of(builds["edited"])
    differing = old["r5"], old["r1"], new["r9"], new["r1"]
    trained = sum(int((np.array(r["labels"]) != IGNORE_INDEX).sum()) for r in differing)
    assert report["altered"]["trained_tokens"] == trained
    total = sum(int((np.array(r["labels"]) != IGNORE_INDEX).sum()) for rows in (old, new) for r in rows.values())
    assert report["altered"]["trained_tokens_fraction"] == pytest.approx(trained / total)
    assert report["altered"]["rows_fraction"] == pytest.approx(3 / (len(ROWS) + 1))
    markdown = invoke(builds["base"], builds["edited"]).output
    assert f"This change alters {trained / total:.1%} of trained tokens" in markdown
    assert "| `rejected.invalid_json` | `0` | `1` |" in markdown


@pytest.mark.parametrize("args, code", [
    (["--max-changed-rows", 3], 0), (["--max-changed-rows", 2], 1),  # counts: 3 rows differ
    (["--max-changed-rows", 0.5], 0), (["--max-changed-rows", 0.3], 1),  # fractions: 3 of 9
    (["--max-changed-trained-tokens", 0.99], 0), (["--max-changed-trained-tokens", 0.01], 1),
    (["--max-changed-trained-tokens", 10**6], 0), (["--max-changed-trained-tokens", 1], 1),
])
def test_thresholds(builds, args, code):
    result = invoke(builds["base"], builds["edited"], *args)
    assert result.exit_code == code, result.output
    assert ("**FAIL**" in result.output) == (code == 1)


@pytest.mark.parametrize("args, message", [
    (["missing-dir", "{base}"], "missing-dir: no such shard directory"),
    (["{data}", "{base}"], "is not a preprocess output: no manifest.json"),
    (["{base}", "{base}", "--max-changed-rows", "-1"], "-1"),
    (["{base}", "{base}", "--show", "x"], "'x' is not a valid integer"),
])
def test_unusable_arguments_exit_2(builds, tmp_path, args, message):
    places = {"base": builds["base"], "data": builds["base"].parent / "data"}
    result = invoke(*(a.format(**places) for a in args))
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_small_buckets_and_repeated_ids_give_the_same_answer(tmp_path, builds):
    repeated = [chat(0), chat(1), {**chat(2), "id": "r1"}]  # r1 twice, matched by occurrence in build order
    changed = [chat(0), chat(1), {**chat(2, answer="Different."), "id": "r1"}]
    old, new = build(tmp_path, "old", repeated), build(tmp_path, "new", changed)
    report = diff_builds(old, new).to_json()
    assert (report["added"], report["removed"], report["changed"]) == (0, 0, 1)
    assert report["examples"][0]["new"]["row"] == 3
    for pair in [(old, new), (builds["base"], builds["edited"])]:
        assert diff_builds(*pair, rows_per_bucket=2).to_json() == diff_builds(*pair).to_json()


def mixture_build(root: Path, name: str, max_rows: int) -> Path:
    """A build of two `sources:`, drawing `max_rows` rows of the first and all of the second."""
    data = root / "data" / name
    data.mkdir(parents=True)
    for file, rows in (("a.jsonl", ROWS), ("b.jsonl", ROWS[:2])):
        (data / file).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = load_config(None, {"sources": [{"path": "a.jsonl", "max_rows": max_rows}, {"path": "b.jsonl"}],
                                "render.tokenizer": str(DEMO_TOKENIZER)})
    out = root / name
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(data)
        preprocess(config, out)
    return out


def test_per_source_counts_of_mixture_builds(tmp_path):
    old, new = mixture_build(tmp_path, "old", 8), mixture_build(tmp_path, "new", 7)
    build_diff = diff_builds(old, new, show=0).build
    assert build_diff["sources.a.jsonl.drawn"] == {"old": 8, "new": 7}
    assert build_diff["sources.a.jsonl.written"] == {"old": 8, "new": 7}
    assert not any(name.startswith("sources.b.jsonl") for name in build_diff)


def test_rows_moved_to_another_split_are_not_changed(builds, tmp_path):
    split = build(tmp_path, "split", ROWS, **{"output.eval_split": 0.5})
    report = diff_builds(builds["base"], split).to_json()
    moved = len(datasets.load_from_disk(str(split))["eval"])
    assert moved and report["moved"] == moved and report["changed"] == 0 and report["unchanged"] == len(ROWS)
    assert f"{moved} rows moved to another split" in diff_builds(builds["base"], split).to_markdown()
