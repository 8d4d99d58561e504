"""The Ray Data engine writes the local engine's bytes: on the demo data, on real corpora, after a Ray worker is
killed mid-chunk (Ray runs the chunk again) and after the driver is killed (a rerun resumes from the journal).

One local Ray with 2 CPUs serves the module: starting one costs seconds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeline.engines.ray as ray_engine
from pipeline.engines.ray import ChunkWorker
from pipeline.run import preprocess
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER, REPO, shared_path

ray = pytest.importorskip("ray", reason="ray[data] is the `ray` extra")
SAMPLES = REPO / "data" / "samples"
DEMO = {"render.tokenizer": str(DEMO_TOKENIZER), "output.eval_split": 0.1, "mask.append_eos": True}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _config(inputs, **overrides):
    return load_config(None, {"inputs": [str(p) for p in inputs], **DEMO, **overrides})


def _run(engine: str, out: Path, inputs=(SAMPLES,), **overrides) -> dict:
    return preprocess(_config(inputs, **{"output.engine": engine, **overrides}), out)


def _assert_same_output(local: Path, other: Path) -> None:
    """Every file the same bytes, the manifest too but for how the run was executed."""
    files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file() and ".work" not in p.parts)
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file() and ".work" not in p.parts)
    for rel in files:
        if rel.name == "manifest.json":
            ours, theirs = (json.loads((d / rel).read_text()) for d in (local, other))
            for manifest in (ours, theirs):
                del manifest["config"]["output"]["engine"], manifest["config"]["output"]["workers"]
            assert ours == theirs
        else:
            assert (local / rel).read_bytes() == (other / rel).read_bytes(), rel


@pytest.mark.slow
def test_the_ray_engine_writes_the_local_engines_bytes_on_real_corpora(tmp_path):
    corpora = shared_path("corpora")
    tokenizer = shared_path("tokenizers", "qwen2.5")
    inputs = [p for p in sorted(corpora.rglob("*.json*")) if p.name != "dataset_info.json"]
    settings = {"render.tokenizer": str(tokenizer), "mask.append_eos": False, "output.rows_per_shard": 500,
                "source.format": "auto"}
    from pipeline.errors import InputError
    from pipeline.stages.ingest import detect_format
    from schemas.sources import SourceConfig

    def readable(path):
        try:
            return detect_format(path, SourceConfig()) != "empty"
        except InputError:
            return False

    inputs = [p for p in inputs if readable(p)]
    local = _run("local", tmp_path / "local", inputs, **settings)
    _run("ray", tmp_path / "ray", inputs, **settings, **{"output.workers": 2})
    assert local["accounting"]["read"] > 500
    _assert_same_output(tmp_path / "local", tmp_path / "ray")


class DiesMidChunk(ChunkWorker):
    """Kills its own process once, in the middle of chunk 1, after a batch of it has been written."""

    def __init__(self, config, paths, work: str, cwd: str):
        super().__init__(config, paths, work, cwd)
        self.marker = Path(work).parent.parent / "killed"
        run = self.run

        def run_then_die(batches):
            return run(self._die_on_second_batch(batches))

        self.run = run_then_die

    def __call__(self, batch):
        self.chunk_index = json.loads(str(batch["chunk"][0]))["index"]
        return super().__call__(batch)

    def _die_on_second_batch(self, batches):
        for k, batch in enumerate(batches):
            if self.chunk_index == 1 and k == 1 and not self.marker.exists():
                self.marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch


@pytest.mark.slow
def test_a_killed_ray_worker_is_replaced_and_the_bytes_are_the_same(tmp_path, monkeypatch):
    settings = {"output.rows_per_shard": 6, "output.batch_size": 2}
    local = _run("local", tmp_path / "local", **settings)
    monkeypatch.setattr(ray_engine, "ChunkWorker", DiesMidChunk)
    ours = _run("ray", tmp_path / "ray", **settings, **{"output.workers": 2})
    assert (tmp_path / "killed").exists(), "the worker was not killed"
    assert len(local["splits"]["train"]["shards"]) > 2 and ours["config"]["output"]["engine"] == "ray"
    _assert_same_output(tmp_path / "local", tmp_path / "ray")


@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_same_bytes(tmp_path, local_ray, monkeypatch):
    settings = {"output.rows_per_shard": 1}
    _run("local", tmp_path / "local", **settings)
    out = tmp_path / "ray"
    command = [sys.executable, "-m", "pipeline", "preprocess", str(SAMPLES), "--tokenizer", str(DEMO_TOKENIZER),
               "--eval-split", "0.1", "--append-eos", "--rows-per-shard", "1", "--engine", "ray", "--workers", "2",
               "--ray-address", local_ray, "--out", str(out)]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / ".work").glob("chunk-*.json")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, driver.stderr.read().decode()
    assert not (out / "manifest.json").exists()
    journaled = len(list((out / ".work").glob("chunk-*.json")))
    assert journaled >= 1

    planned = []
    real_from_items = ray.data.from_items
    monkeypatch.setattr(ray.data, "from_items", lambda items, **kw: (planned.append(len(items)), real_from_items(items, **kw))[1])
    manifest = _run("ray", out, **settings, **{"output.workers": 2})
    assert planned == [manifest["accounting"]["read"] - journaled]  # the journaled chunks were not run again
    _assert_same_output(tmp_path / "local", out)


def _sources(tmp_path: Path, rules: list[dict]) -> list[dict]:
    """Three sources with their own settings: a CSV with its own column map, ShareGPT JSON Lines with a bad line and
    a default system message, and OpenAI JSON Lines; each with its rule."""
    csv = tmp_path / "qa.csv"
    csv.write_text("prompt,answer\n" + "".join(f'"Q{k}\nand more?",A{k}.\n' for k in range(4)), encoding="utf-8")
    sharegpt = tmp_path / "sg.jsonl"
    sharegpt.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": f"Hi {k}"},
                                                              {"from": "gpt", "value": f"Hello {k}"}]}) + "\n"
                                for k in range(5)) + "{broken\n", encoding="utf-8")
    openai = tmp_path / "oa.jsonl"
    openai.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {k} + 1?"},
                                                       {"role": "assistant", "content": f"It is {k + 1}."}]}) + "\n"
                              for k in range(9)), encoding="utf-8")
    specs = [{"path": str(csv), "csv_map": {"user": "prompt", "assistant": "answer"}},
             {"path": str(sharegpt), "format": "sharegpt", "default_system": "Be kind."},
             {"path": str(openai)}]
    return [{**spec, **rule} for spec, rule in zip(specs, rules)]


@pytest.mark.slow
@pytest.mark.parametrize("rules, mixture", [
    ([{"epochs": 2.5}, {"max_rows": 4}, {"epochs": 0.5}], None),
    ([{"weight": 0.2}, {"weight": 0.5}, {"weight": 0.3}], {"total_rows": 31, "seed": 3}),
    ([{"weight": 0.3}, {"weight": 0.3}, {"weight": 0.4}], {"total_tokens": 900, "seed": 7}),
], ids=["epochs-and-max-rows", "row-weights", "token-weights"])
def test_a_mixture_on_ray_writes_the_local_engines_bytes(tmp_path, rules, mixture):
    settings = {"sources": _sources(tmp_path, rules), **({"mixture": mixture} if mixture else {}), **DEMO,
                "output.rows_per_shard": 7, "output.batch_size": 3}
    manifests = {engine: preprocess(load_config(None, {**settings, "output.engine": engine, "output.workers": 2}),
                                    tmp_path / engine) for engine in ("local", "ray")}
    local = manifests["local"]
    assert len(local["splits"]["train"]["shards"]) > 2 and local["accounting"]["rejected"] >= 1
    assert max(entry["drawn"] / entry["read"] for entry in local["sources"]) > 1  # a source is repeated
    _assert_same_output(tmp_path / "local", tmp_path / "ray")
