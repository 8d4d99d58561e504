"""Sources and mixtures: exact shares, seeded and worker-independent draws, per-source settings, default system
messages, and the per-source accounting in the manifest."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.commands.check import run_checks
from pipeline.errors import InputError
from pipeline.run import preprocess
from pipeline.shards.reader import open_shards
from pipeline.stages.mixture import Mixture, find_sources, rows_to_draw, weighted_shares
from schemas.config import PreprocessConfig, load_config
from schemas.errors import ConfigError
from schemas.mixture import MixtureConfig, MixtureSource
from tests.conftest import DEMO_TOKENIZER, demo_tokenizer, real_tokenizer, shared_path


def _chat(k: int, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": f"What is {k} + 1?"}, {"role": "assistant", "content": f"It is {k + 1}."}]
    return {"messages": messages}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _draws(specs: list[dict], **mixture) -> list[tuple[int, int, int]]:
    """(source, row, draw) of every drawn record, in order."""
    sources = find_sources([MixtureSource(**spec) for spec in specs])
    plan = Mixture.plan(sources, MixtureConfig(**mixture))
    return [(drawn.source, drawn.record.row, drawn.draw) for drawn, _ in plan.records()]


# --- how many rows ---------------------------------------------------------------------------------------------------
def test_weights_share_out_the_total_exactly():
    assert weighted_shares(600, [0.3, 0.7]) == [180, 420]
    assert weighted_shares(10, [1, 1, 1]) == [4, 3, 3]  # the one left over goes to the earliest largest remainder
    assert weighted_shares(7, [0.1, 0.2, 0.7]) == [1, 1, 5]  # 0.7, 1.4, 4.9: remainders .7 and .9 win
    assert sum(weighted_shares(1001, [0.17, 0.29, 0.31, 0.23])) == 1001


@pytest.mark.parametrize("rule, rows, expected", [
    ({"epochs": 1.5}, 4, 6), ({"epochs": 1.5}, 7, 11), ({"epochs": 0.1}, 30, 3), ({"epochs": 3}, 5, 15),
    ({"max_rows": 3}, 5, 3), ({"max_rows": 9}, 5, 5), ({}, 5, 5),
])
def test_epochs_and_max_rows_ask_for_exact_counts(rule, rows, expected):
    assert rows_to_draw(MixtureSource(path="x", **rule), rows) == expected


# --- which rows --------------------------------------------------------------------------------------------------
def test_a_source_smaller_than_its_share_is_repeated_whole_then_a_seeded_part(tmp_path):
    small = _jsonl(tmp_path / "small.jsonl", [_chat(k) for k in range(3)])
    large = _jsonl(tmp_path / "large.jsonl", [_chat(k) for k in range(5)])
    draws = _draws([{"path": str(small), "weight": 0.3}, {"path": str(large), "weight": 0.7}], total_rows=20)
    per_source = Counter(source for source, _, _ in draws)
    assert per_source == {0: 6, 1: 14}
    small_rows = Counter(row for source, row, _ in draws if source == 0)
    assert set(small_rows.values()) == {2}  # 6 of 3 rows: two whole passes
    large_rows = Counter(row for source, row, _ in draws if source == 1)
    assert sorted(large_rows.values()) == [2, 3, 3, 3, 3]  # 14 of 5: two passes and 4 seeded rows a third time
    assert [d for s, _, d in draws if s == 1] == [1] * 5 + [2] * 5 + [3] * 4  # draw = the pass


def test_fractional_epochs_draw_every_row_once_and_a_seeded_part_without_repeats(tmp_path):
    data = _jsonl(tmp_path / "a.jsonl", [_chat(k) for k in range(10)])
    draws = _draws([{"path": str(data), "epochs": 1.5}])
    counts = Counter(row for _, row, _ in draws)
    assert len(draws) == 15 and set(counts) == set(range(1, 11)) and sorted(counts.values()) == [1] * 5 + [2] * 5
    assert draws == _draws([{"path": str(data), "epochs": 1.5}])  # the same rows every time
    other_seed = _draws([{"path": str(data), "epochs": 1.5}], seed=7)
    assert Counter(row for _, row, _ in other_seed) != counts  # the seed picks the half
    subset = _draws([{"path": str(data), "max_rows": 4}])
    assert len({row for _, row, _ in subset}) == 4 and all(d == 1 for _, _, d in subset)


def test_a_file_in_two_sources_and_an_empty_weighted_source_are_refused(tmp_path):
    data = _jsonl(tmp_path / "a.jsonl", [_chat(0)])
    with pytest.raises(InputError, match=r"a.jsonl: named by sources.0 .* and sources.1 .*; a file belongs to one"):
        find_sources([MixtureSource(path=str(data)), MixtureSource(path=str(tmp_path))])
    empty = _jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(InputError, match=r"sources.1 \(.*empty.jsonl\): holds no rows, but 5 are to be drawn"):
        _draws([{"path": str(data), "weight": 1}, {"path": str(empty), "weight": 1}], total_rows=10)
    with pytest.raises(InputError, match=r"sources.0: .*missing.jsonl: no such file"):
        find_sources([MixtureSource(path=str(tmp_path / "missing.jsonl"))])


def _token_plan(tmp_path: Path, tokens: list[list[int]], total_tokens: int, **mixture) -> Mixture:
    """A plan of `total_tokens` over one source per list of `tokens`, each row writing the tokens given (a stand-in for
    the counting pass, which runs the chain)."""
    specs = [MixtureSource(path=str(_jsonl(tmp_path / f"s{k}.jsonl", [_chat(r) for r in range(len(rows))])), weight=1)
             for k, rows in enumerate(tokens)]
    plan = Mixture.plan(find_sources(specs), MixtureConfig(total_tokens=total_tokens, **mixture))

    def count(first_pass):
        return (tokens[drawn.source][drawn.record.row - 1] for drawn, _ in first_pass.records())

    return plan.counted(count)


def test_a_token_share_is_whole_passes_and_the_fewest_seeded_rows_that_reach_the_rest(tmp_path):
    tokens = [[5, 0, 7, 3, 9], [4, 4, 4]]  # 24 and 12 tokens; the second row of the first source is not written
    plan = _token_plan(tmp_path, tokens, total_tokens=100)  # 50 tokens each: 2 passes + 2, and 4 passes + 2
    for source, share in enumerate([50, 50]):
        draws = [(drawn.record.row, drawn.draw) for drawn, _ in plan.records() if drawn.source == source]
        rows = tokens[source]
        passes = share // sum(rows)
        assert Counter(d for _, d in draws if d <= passes) == {d: len(rows) for d in range(1, passes + 1)}
        part = [row for row, draw in draws if draw == passes + 1]
        assert part == sorted(part) and all(rows[row - 1] for row in part)  # file order; no row of 0 tokens
        written = passes * sum(rows) + sum(rows[row - 1] for row in part)
        assert written >= share and written - max(rows[row - 1] for row in part) < share  # less than one row over
        assert plan.planned[source].drawn == len(draws)
    assert _token_plan(tmp_path, tokens, total_tokens=100).planned[0].part.tolist() == plan.planned[0].part.tolist()
    exact = _token_plan(tmp_path, tokens, total_tokens=48)  # 24 each: exactly one pass of the first source
    assert [p.drawn for p in exact.planned] == [5, 6]


def test_a_source_that_writes_no_tokens_cannot_give_its_token_share(tmp_path):
    with pytest.raises(InputError, match=r"sources.1 \(.*s1.jsonl\): writes no tokens \(2 rows read, none written\), "
                                         r"but 5 tokens are to be drawn from it"):
        _token_plan(tmp_path, [[3, 4], [0, 0]], total_tokens=10)
    good, bad = _jsonl(tmp_path / "good.jsonl", [_chat(0)]), _jsonl(tmp_path / "bad.jsonl", ["{broken", "{}"])
    config = load_config(None, {"render.tokenizer": str(DEMO_TOKENIZER), "mixture": {"total_tokens": 100},
                                "sources": [{"path": str(good), "weight": 1},
                                            {"path": str(bad), "format": "openai", "weight": 1}]})
    with pytest.raises(InputError, match=r"sources.1 \(.*bad.jsonl\): writes no tokens \(2 rows read, none written\)"):
        preprocess(config, tmp_path / "out")  # its rows are rejected by the run's own chain
    assert not (tmp_path / "out" / "manifest.json").exists()


# --- the config ------------------------------------------------------------------------------------------------------
def test_a_config_of_inputs_dumps_as_before():
    dumped = PreprocessConfig.model_validate({"inputs": ["a.jsonl"]}).model_dump(mode="json")
    assert list(dumped) == ["inputs", "source", "render", "mask", "truncation", "output"]


@pytest.mark.parametrize("data, message", [
    ({"inputs": ["a"], "sources": [{"path": "b"}]}, "inputs and sources: give one or the other"),
    ({"sources": [{"path": "a", "weight": 1, "epochs": 2}]}, "sources.0: give one sampling rule per source"),
    ({"sources": [{"path": "a", "weight": 1}]}, "weighted sources need mixture.total_rows"),
    ({"sources": [{"path": "a", "weight": 1}, {"path": "b"}], "mixture": {"total_rows": 5}}, "give every source a weight"),
    ({"sources": [{"path": "a"}], "mixture": {"total_rows": 5}}, "mixture.total_rows: is shared out by weight"),
    ({"sources": [{"path": "a"}], "mixture": {"total_tokens": 5}}, "mixture.total_tokens: is shared out by weight"),
    ({"sources": [{"path": "a", "weight": 1}], "mixture": {"total_rows": 5, "total_tokens": 5}},
     "mixture: give total_rows or total_tokens, not both"),
    ({"sources": [{"path": "a", "weight": 1}], "mixture": {"total_tokens": 0}},
     "mixture.total_tokens: Input should be greater than or equal to 1"),
    ({"inputs": ["a"], "mixture": {"seed": 1}}, "mixture: only used with sources"),
    ({"sources": [{"path": "a", "epochs": 0}]}, "sources.0.epochs: Input should be greater than 0"),
    ({"sources": [{"path": "a", "format": "glm", "csv_messages_column": "m"}]}, "csv_messages_column: only used"),
])
def test_bad_source_configs_are_refused_with_the_field(data, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, data)
    assert message in str(info.value)


def test_source_section_and_flags_are_the_defaults_of_each_source():
    config = load_config(None, {"sources": [{"path": "a.csv"}, {"path": "b.jsonl", "format": "sharegpt",
                                                                "encoding": "utf-8"}],
                                "source.encoding": "gb18030", "source.csv_map": {"user": "q", "assistant": "a"}})
    first, second = config.sources
    assert (first.encoding, first.csv_map) == ("gb18030", {"user": "q", "assistant": "a"})
    assert (second.encoding, second.format, second.csv_map_given) == ("utf-8", "sharegpt", False)  # no CSV keys


# --- whole runs ------------------------------------------------------------------------------------------------------
def _mixture_config(tmp_path: Path, **overrides) -> PreprocessConfig:
    """Two sources in two formats with their own settings: a CSV with its own column map and a ShareGPT JSONL with a
    bad line and a default system message."""
    csv = tmp_path / "qa.csv"
    csv.write_text("prompt,answer\n" + "".join(f"Q{k}?,A{k}.\n" for k in range(4)), encoding="utf-8")
    sharegpt = _jsonl(tmp_path / "sg.jsonl", [
        {"conversations": [{"from": "human", "value": f"Hi {k}"}, {"from": "gpt", "value": f"Hello {k}"}]}
        for k in range(5)] + ["{broken"])
    return load_config(None, {
        "render.tokenizer": str(DEMO_TOKENIZER),
        "sources": [{"path": str(csv), "csv_map": {"user": "prompt", "assistant": "answer"}, "weight": 0.3},
                    {"path": str(sharegpt), "format": "sharegpt", "default_system": "Be kind.", "weight": 0.7}],
        "mixture": {"total_rows": 20}, "output.eval_split": 0.3, "output.rows_per_shard": 7, **overrides})


def _rows(out: Path) -> list[dict]:
    shards = open_shards(out)
    return [row for name in shards.split_names for row in
            shards.split(name).table.select(["id", "source", "row"]).to_pylist()]


def test_a_mixture_run_counts_each_source_exactly_and_balances(tmp_path):
    out = tmp_path / "out"
    manifest = preprocess(_mixture_config(tmp_path), out)
    assert manifest["version"] == 2
    csv, sharegpt = manifest["sources"]
    assert (csv["read"], csv["drawn"], csv["written"], csv["rejected"]) == (4, 6, 6, 0)
    assert (sharegpt["read"], sharegpt["drawn"]) == (6, 14)  # 5 chats and a bad line, 14 of them drawn
    for source in manifest["sources"]:
        assert source["drawn"] == source["written"] + source["rejected"] + source["filtered"]
    assert sharegpt["rejected"] >= 2  # two whole passes: the bad line at least twice
    acc = manifest["accounting"]
    assert acc["read"] == 20 and acc["written"] == csv["written"] + sharegpt["written"]
    assert sum(s["tokens"] for s in manifest["sources"]) == sum(i["tokens"] for i in manifest["splits"].values())
    rows = _rows(out)
    assert len({r["id"] for r in rows}) == len(rows)  # every draw has its own id
    repeated = [r for r in rows if r["id"].endswith("#2")]
    assert repeated and all({r["id"].removesuffix("#2") for r in rows} >= {r["id"].removesuffix("#2")}
                            for r in repeated)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len({(r["id"], r["row"]) for r in rejects}) == len(rejects) == sharegpt["rejected"]
    statuses = {r.name: r.status for r in run_checks(out).results}
    assert statuses["accounting"] == statuses["duplicates"] == "pass"  # repeats are asked for, not duplicates
    assert statuses["reject_rate"] == "fail"  # 2 bad lines of 20 rows


def test_every_draw_of_a_record_goes_to_the_same_split(tmp_path):
    out = tmp_path / "out"
    preprocess(_mixture_config(tmp_path), out)
    shards = open_shards(out)
    split_of: dict[tuple, set] = {}
    for name in shards.split_names:
        for row in shards.split(name).table.select(["source", "row"]).to_pylist():
            split_of.setdefault((row["source"], row["row"]), set()).add(name)
    assert all(len(splits) == 1 for splits in split_of.values())
    assert {"train", "eval"} == set().union(*split_of.values())


@pytest.mark.parametrize("mixture", [{"total_rows": 20}, {"total_tokens": 400}])
def test_the_same_shards_for_one_and_two_workers(tmp_path, mixture):
    config = _mixture_config(tmp_path, mixture=mixture)
    one, two = tmp_path / "one", tmp_path / "two"
    preprocess(config, one)
    preprocess(config.model_copy(update={"output": config.output.model_copy(update={"workers": 2})}), two)
    files = sorted(p.relative_to(one) for p in one.rglob("*.arrow"))
    assert files and files == sorted(p.relative_to(two) for p in two.rglob("*.arrow"))
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert json.loads((one / "manifest.json").read_text())["sources"] == \
        json.loads((two / "manifest.json").read_text())["sources"]


def test_each_source_is_read_with_its_own_format_and_column_map(tmp_path):
    out = tmp_path / "out"
    preprocess(_mixture_config(tmp_path, **{"mixture.total_rows": 10}), out)
    texts: dict[str, list] = {}
    shards = open_shards(out)
    for name in shards.split_names:
        table = shards.split(name).table
        for ids, source in zip(table.column("input_ids").to_pylist(), table.column("source").to_pylist()):
            texts.setdefault(Path(source).name, []).append(ids)
    decode = demo_tokenizer().decode
    csv_texts = [decode(ids) for ids in texts["qa.csv"]]
    sg_texts = [decode(ids) for ids in texts["sg.jsonl"]]
    assert all("Q" in t and "A" in t and "Be kind." not in t for t in csv_texts)  # the CSV's own columns
    assert all("Be kind." in t and "Hello" in t for t in sg_texts)  # ShareGPT, with its default system message


def test_default_system_replaces_the_template_default_of_qwen(tmp_path):
    tokenizer_dir = shared_path("tokenizers", "qwen2.5")
    data = _jsonl(tmp_path / "a.jsonl", [_chat(0), _chat(1, system="Answer in French.")])
    out = tmp_path / "out"
    base = {"render.tokenizer": str(tokenizer_dir), "output.rows_per_shard": 10}
    preprocess(load_config(None, {**base, "sources": [{"path": str(data), "default_system": "You are terse."}]}), out)
    plain = tmp_path / "plain"
    preprocess(load_config(None, {**base, "inputs": [str(data)]}), plain)

    def texts(directory: Path) -> list[str]:
        decode = real_tokenizer("qwen2.5").decode
        return [decode(ids) for ids in open_shards(directory).split("train").table.column("input_ids").to_pylist()]

    injected = "You are Qwen, created by Alibaba Cloud"
    without, own = texts(plain)
    assert injected in without and injected not in own  # the template's default, as the data did not have one
    mixed_without, mixed_own = texts(out)
    assert injected not in mixed_without and "<|im_start|>system\nYou are terse.<|im_end|>" in mixed_without
    assert mixed_own == own and "You are terse." not in mixed_own  # a conversation's own system message is kept


def _written_tokens(out: Path) -> dict[str, list[tuple[int, int]]]:
    """Per source file, straight from the shards: (draw, tokens) of every row written."""
    written: dict[str, list[tuple[int, int]]] = {}
    shards = open_shards(out)
    for name in shards.split_names:
        table = shards.split(name).table
        for ids, source, sample_id in zip(*(table.column(c).to_pylist() for c in ("input_ids", "source", "id"))):
            draw = int(sample_id.rpartition("#")[2]) if "#" in sample_id else 1
            written.setdefault(Path(source).name, []).append((draw, len(ids)))
    return written


def test_a_token_mixture_writes_the_fewest_rows_that_reach_each_share(tmp_path):
    out = tmp_path / "out"
    manifest = preprocess(_mixture_config(tmp_path, mixture={"total_tokens": 400, "seed": 3}), out)
    written = _written_tokens(out)
    for entry, name, share in zip(manifest["sources"], ["qa.csv", "sg.jsonl"], [120, 280]):  # 0.3 and 0.7 of 400
        rows = written[name]
        tokens = sum(t for _, t in rows)
        last = max(d for d, _ in rows)
        assert tokens >= share and tokens - max(t for d, t in rows if d == last) < share  # less than one row over
        assert entry["tokens"] == tokens and entry["drawn"] == entry["written"] + entry["rejected"] + entry["filtered"]
        assert entry["token_share"] == share
        assert last > 1  # the small sources are read more than once
    assert manifest["sources"][1]["rejected"] == max(d for d, _ in written["sg.jsonl"]) - 1  # the bad line, per pass
    assert {r.name: r.status for r in run_checks(out).results}["accounting"] == "pass"
    manifest_path = out / "manifest.json"
    edited = json.loads(manifest_path.read_text())
    edited["sources"][0]["token_share"] = edited["sources"][0]["tokens"] + 1
    manifest_path.write_text(json.dumps(edited))
    accounting = {r.name: r for r in run_checks(out).results}["accounting"]
    assert accounting.status == "fail" and "qa.csv: tokens " in accounting.detail and "below its token_share" in \
        accounting.detail


def test_a_mixture_of_rows_has_no_token_share(tmp_path):
    manifest = preprocess(_mixture_config(tmp_path), tmp_path / "out")
    assert all("token_share" not in entry for entry in manifest["sources"])
