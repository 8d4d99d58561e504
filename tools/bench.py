"""`make bench`: the pipeline's start-up and throughput against the tokenizer ceiling and the reference approaches.

Generates a corpus of multi-turn conversations (Chinese and English, some with tools), then measures on the same
texts: the whole preprocess stage (read, validate, render, tokenize, mask, write), the raw `tokenizer(texts)` batch
call on the rendered texts (the ceiling), TRL's `apply_chat_template(return_assistant_tokens_mask=True)` path and
GLM-4's per-message `process_batch` path, with the ratios between them and each run's peak memory.
Uses the real tokenizers in ../shared/tokenizers when present, else the demo tokenizer. First, a start-up table: a
one-row `preprocess` and a `check` of its output, each as a command, beside the one-liner that loads the same
tokenizer with AutoTokenizer (and the first `preprocess` on each tokenizer, which fills the tokenizer cache).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CHATSHARD_SHARED", REPO.parent / "shared"))

_ZH = "数据预处理把对话渲染成文本再切分成词元训练模型需要准确的掩码和截断策略以及可复现的输出"
_EN = ("the pipeline renders each conversation once tokenizes it in large batches and maps character spans to "
       "token masks so that every trained token is exactly what the model will see at inference time").split()


def _sentence(rng: random.Random, words: int) -> str:
    if rng.random() < 0.5:
        return "".join(rng.choice(_ZH) for _ in range(words * 2)) + "。"
    return " ".join(rng.choice(_EN) for _ in range(words)).capitalize() + "."


def generate_corpus(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Deterministic multi-turn GLM-4-style conversations, about 600 tokens each."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        messages = [{"role": "system", "content": _sentence(rng, 12)}]
        for _ in range(rng.randint(2, 5)):
            messages.append({"role": "user", "content": " ".join(_sentence(rng, rng.randint(8, 30)) for _ in range(2))})
            messages.append({"role": "assistant", "content": "\n".join(_sentence(rng, rng.randint(10, 40)) for _ in range(rng.randint(1, 4)))})
        rows.append({"messages": messages})
    return rows


def _in_fresh_process(function: "_Job") -> tuple:
    """Run a step in a fresh process: what the step returns (its tokens, the seconds of its measured part, ...),
    then its peak RSS in MiB."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_with_peak, args=(function, send))  # not a Pool: the step may start workers
    process.start()
    send.close()  # the child holds the only sending end now: if it dies, recv() ends instead of waiting forever
    try:
        result = receive.recv()
    except EOFError:
        process.join()
        raise click.ClickException(f"benchmark step '{function.kind}' failed (exit code {process.exitcode}); "
                                   "its error is printed above") from None
    process.join()
    return result


def _with_peak(function: Callable[[], tuple], send) -> None:
    send.send((*function(), peak_rss_mib()))


def peak_rss_mib() -> float:
    """This process's peak RSS. On Linux from VmHWM, which starts afresh at exec; ru_maxrss would also count the
    parent's memory copied at fork, before the spawned interpreter replaced it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Job:
    """A picklable benchmark step (spawned processes need module-level callables)."""

    def __init__(self, kind: str, **kwargs: Any):
        self.kind, self.kwargs = kind, kwargs

    def __call__(self) -> Any:
        return getattr(self, f"_{self.kind}")(**self.kwargs)

    @staticmethod
    def _pipeline(data: str, tokenizer: str, out: str, workers: int, encoder: str,
                  rows_per_shard: int = 20_000, engine: str = "local") -> tuple[int, float]:
        """The whole preprocess stage, timed from before its imports: start-up included (with `engine` ray, that
        of a local Ray too)."""
        start = time.perf_counter()
        from pipeline.run import preprocess
        from schemas.config import load_config

        config = load_config(None, {"inputs": [data], "render.tokenizer": tokenizer, "truncation.max_length": 1_000_000,
                                    "output.workers": workers, "render.encoder": encoder,
                                    "output.rows_per_shard": rows_per_shard, "output.engine": engine})
        manifest = preprocess(config, Path(out))
        return sum(s["tokens"] for s in manifest["splits"].values()), time.perf_counter() - start

    @staticmethod
    def _scaling_run(data: str, tokenizer: str, out: str, workers: int, encoder: str,
                     engine: str) -> tuple[int, int, float, float, float]:
        """One preprocess run for the scaling table, in chunks of 500 rows, each worker encoding on one thread (so
        one worker is one core): its tokens and rows, its wall seconds (start-up included: `scaling_table` takes
        the difference of two runs), and the CPU seconds of this process and of its child processes (the local
        engine's workers; Ray's are not ours)."""
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        from pipeline.run import preprocess
        from schemas.config import load_config

        start, cpu = time.perf_counter(), time.process_time()
        config = load_config(None, {"inputs": [data], "render.tokenizer": tokenizer, "truncation.max_length": 1_000_000,
                                    "output.workers": workers, "render.encoder": encoder, "output.rows_per_shard": 500,
                                    "output.engine": engine})
        manifest = preprocess(config, Path(out))
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (sum(s["tokens"] for s in manifest["splits"].values()), manifest["accounting"]["read"],
                time.perf_counter() - start, time.process_time() - cpu, children.ru_utime + children.ru_stime)

    @staticmethod
    def _ceiling(texts_file: str, tokenizer: str, encoder: str = "hf") -> tuple[int, float, float]:
        """The bare encoder on the rendered texts: HF's `tokenizer(texts)`, or the pipeline's proven tiktoken.
        Timed after the tokenizer has loaded; the seconds of that start-up (imports, load) are returned too."""
        loading = time.perf_counter()
        from transformers import AutoTokenizer

        from pipeline.encoders.choose import make_encoder

        texts = json.loads(Path(texts_file).read_text())
        tok = AutoTokenizer.from_pretrained(tokenizer)
        encode = (lambda batch: tok(batch, add_special_tokens=False)["input_ids"]) if encoder == "hf" else (
            lambda batch, fast=make_encoder(tok, "tiktoken")[0]: fast.encoding.encode_batch(batch, allowed_special="all"))
        start = time.perf_counter()
        total = 0
        for k in range(0, len(texts), 1000):
            total += sum(len(ids) for ids in encode(texts[k : k + 1000]))
        return total, time.perf_counter() - start, start - loading

    @staticmethod
    def _trl(data: str, tokenizer: str, template: str) -> tuple[int, float]:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        start, total = time.perf_counter(), 0
        for line in Path(data).read_text().splitlines():
            out = tok.apply_chat_template(json.loads(line)["messages"], chat_template=template, tokenize=True,
                                          return_dict=True, return_assistant_tokens_mask=True)
            total += len(out["input_ids"])
        return total, time.perf_counter() - start

    @staticmethod
    def _glm4(data: str, tokenizer: str) -> tuple[int, float]:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        start, total = time.perf_counter(), 0
        for line in Path(data).read_text().splitlines():
            ids, mask = [151331, 151333], [False, False]
            for message in json.loads(line)["messages"]:
                new = tok.apply_chat_template([message], tokenize=True, return_dict=False)[2:]
                ids += new
                mask += [message["role"] not in ("system", "user", "observation")] * len(new)
            ids.append(tok.eos_token_id)
            total += len(ids)
        return total, time.perf_counter() - start


def _render_texts(rows: list[dict], tokenizer_dir: str) -> tuple[list[str], list[str]]:
    """The rendered texts, and the encoders the pipeline can use with this tokenizer (tiktoken: byte-level BPE)."""
    from transformers import AutoTokenizer

    from pipeline.encoders.choose import make_encoder

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    encoders = ["hf"] + (["tiktoken"] if make_encoder(tok, "auto")[0].name == "tiktoken" else [])
    return [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows], encoders


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _line(name: str, tokens: int, seconds: float, peak: float, ceiling: float, steady: float | None = None,
          peak_ratio: float | None = None) -> str:
    rate = tokens / seconds
    steady_cell = f"{steady / ceiling:5.2f}x" if steady else "-"
    ratio_cell = f"{peak_ratio:.2f}" if peak_ratio else "-"
    return (f"| {name:<44} | {tokens:>11,} | {seconds:7.2f} | {rate:>11,.0f} | {rate / ceiling:5.2f}x | {steady_cell:>7} "
            f"| {peak:8.0f} | {ratio_cell:>5} |")


def _seconds(command: list[str], env: dict[str, str] | None = None) -> float:
    """Wall-clock seconds of one command run to its end; a run that fails stops the benchmark with its output."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # check exits 1 when a threshold fails: still a complete run
        raise click.ClickException(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return seconds


def startup_table(name: str, tokenizer_dir: Path, tmp: Path, runs: int) -> list[str]:
    """Median seconds of the AutoTokenizer one-liner, a one-row `preprocess` and a `check` of its output, run in
    turn so that the machine's load weighs on all three alike, and each one's ratio to the one-liner. The commands
    use a fresh tokenizer cache: the first `preprocess` loads the tokenizer with transformers and fills it (shown on
    its own row), the measured ones read it, as every run after a tokenizer's first does."""
    one_row = write_jsonl(tmp / f"{name}.one-row.jsonl", generate_corpus(1))
    env = {**os.environ, "CHATSHARD_CACHE": str(tmp / f"{name}.cache")}
    preprocess = [sys.executable, "-m", "pipeline", "preprocess", str(one_row), "--tokenizer", str(tokenizer_dir), "--out"]
    auto = [sys.executable, "-c", f"from transformers import AutoTokenizer; AutoTokenizer.from_pretrained({str(tokenizer_dir)!r})"]
    times: dict[str, list[float]] = {"auto": [], "first": [_seconds([*preprocess, str(tmp / f"{name}.first")], env)],
                                     "preprocess": [], "check": []}
    for run in range(runs):
        out = tmp / f"{name}.one-row.{run}"
        times["auto"].append(_seconds(auto, env))
        times["preprocess"].append(_seconds([*preprocess, str(out)], env))
        times["check"].append(_seconds([sys.executable, "-m", "pipeline", "check", str(out)], env))
    median = {kind: statistics.median(seconds) for kind, seconds in times.items()}
    rows = [("python -c 'AutoTokenizer.from_pretrained(DIR)'", "auto"),
            ("preprocess, one row, first run on the tokenizer", "first"), ("preprocess, one row", "preprocess"),
            ("check of its output", "check")]
    return [f"| {name:<20} | {label:<48} | {median[kind]:7.2f} | {median[kind] / median['auto']:5.2f}x |"
            for label, kind in rows]


def worker_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to `cores`, and `cores` itself."""
    counts = [1]
    while counts[-1] * 2 <= cores:
        counts.append(counts[-1] * 2)
    return counts if counts[-1] == cores else [*counts, cores]


def scaling_table(name: str, tokenizer_dir: Path, data: Path, small: Path, tmp: Path, encoders: list[str],
                  cores: int) -> list[str]:
    """Throughput against the number of workers, for each engine and encoder, with the speed-up over one worker and
    the parallel efficiency (speed-up / workers). Each point is two fresh runs, on `data` and on `small` (a fifth of
    it): the difference in tokens over the difference in seconds, so start-up (imports, the tokenizer, each
    worker's, Ray's) cancels out. Likewise the CPU seconds per 1,000 rows of the parent process and, with the local
    engine's worker processes, of the workers, and the most workers the parent can keep busy: (workers + parent) /
    parent."""
    lines = []
    for engine in ("local", "ray"):
        for encoder in encoders:
            single = None
            for workers in worker_counts(cores):
                runs = [_in_fresh_process(_Job(
                    "scaling_run", data=str(path), tokenizer=str(tokenizer_dir), workers=workers, encoder=encoder,
                    out=str(tmp / f"scaling-{name}-{engine}-{encoder}-{workers}-{path.stem}"), engine=engine))
                    for path in (small, data)]
                tokens, rows, seconds, parent, children = (b - a for a, b in zip(runs[0][:5], runs[1][:5]))
                rate = tokens / seconds
                single = single or rate
                parent, children = parent / rows * 1000, children / rows * 1000
                costs = (f"{parent:10.3f} | {children:11.3f} | {(children + parent) / parent:6.0f}x"
                         if engine == "local" and workers > 1 else f"{parent:10.3f} |           - |       -")
                lines.append(f"| {engine:<5} | {encoder:<8} | {workers:>7} | {rate:>11,.0f} | {rate / single:5.2f}x "
                             f"| {rate / single / workers:10.2f} | {costs} |")
    return lines


# Families measured when ../shared/tokenizers has them: two byte-level BPE tokenizers (tiktoken applies) and one
# SentencePiece-style tokenizer (it does not: `auto` takes the HF tokenizer).
FAMILIES = ("qwen2.5", "glm4", "openhermes-mistral")


@click.command()
@click.option("--conversations", default=20_000, show_default=True, help="Generated conversations.")
@click.option("--reference-sample", default=2_000, show_default=True, help="Conversations for the slow reference paths.")
@click.option("--workers", default=os.cpu_count() or 1, show_default="the cores", help="Worker processes for the pipeline's second run.")
@click.option("--startup-runs", default=5, show_default=True, help="Runs of each start-up command (the median is shown).")
@click.option("--startup-only", is_flag=True, help="Measure only the start-up table.")
@click.option("--scaling-only", is_flag=True, help="Measure only the scaling table (throughput against workers).")
def main(conversations: int, reference_sample: int, workers: int, startup_runs: int, startup_only: bool,
         scaling_only: bool) -> None:
    """Benchmark start-up against loading the tokenizer with AutoTokenizer, and preprocess against the tokenizer
    ceiling, TRL's and GLM-4's paths (tokens/s, ratios, peak RSS)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    families = [(n, SHARED / "tokenizers" / n) for n in FAMILIES if (SHARED / "tokenizers" / n).exists()]
    with tempfile.TemporaryDirectory() as tmp:
        if scaling_only:
            _echo_scaling(families, conversations, Path(tmp))
            return
        click.echo(f"### start-up (median of {startup_runs} runs; ratio to the AutoTokenizer one-liner)\n")
        click.echo("| tokenizer | command | seconds | ratio |\n|---|---|---:|---:|")
        for name, tokenizer_dir in [("demo", REPO / "data" / "tokenizer"), *families]:
            click.echo("\n".join(startup_table(name, tokenizer_dir, Path(tmp), startup_runs)))
        if startup_only:
            return
        if not families:
            families = [("demo", REPO / "data" / "tokenizer")]
        rows = generate_corpus(conversations)
        click.echo()
        data = write_jsonl(Path(tmp, "corpus.jsonl"), rows)
        small = write_jsonl(Path(tmp, "small.jsonl"), rows[: len(rows) // 10])
        sample = write_jsonl(Path(tmp, "sample.jsonl"), rows[:reference_sample])
        click.echo(f"{conversations:,} generated conversations (the 1x runs: the first {len(rows) // 10:,}); reference "
                   f"paths on the first {reference_sample:,}; {os.cpu_count()} cores")
        for name, tokenizer_dir in families:
            texts_file = Path(tmp, f"{name}.texts.json")
            texts, encoders = _render_texts(rows, str(tokenizer_dir))
            texts_file.write_text(json.dumps(texts))
            ceiling_tokens, ceiling_s, ceiling_start, ceiling_peak = _in_fresh_process(
                _Job("ceiling", texts_file=str(texts_file), tokenizer=str(tokenizer_dir)))
            ceiling = ceiling_tokens / ceiling_s
            click.echo(f"\n### {name} ({tokenizer_dir})\n")
            click.echo("| path | tokens | seconds | tokens/s | vs ceiling | steady state | peak MiB | 10x/1x |")
            click.echo("|---|---:|---:|---:|---:|---:|---:|---:|")
            click.echo(_line("HF tokenizer(texts) on rendered texts (ceiling)", ceiling_tokens, ceiling_s, ceiling_peak,
                             ceiling))
            click.echo(_line("the same with its start-up (import, load)", ceiling_tokens, ceiling_s + ceiling_start,
                             ceiling_peak, ceiling))
            if "tiktoken" in encoders:
                job = _Job("ceiling", texts_file=str(texts_file), tokenizer=str(tokenizer_dir), encoder="tiktoken")
                tokens, seconds, _, peak = _in_fresh_process(job)
                click.echo(_line("tiktoken encode_batch on the same texts", tokens, seconds, peak, ceiling))
            for encoder, w in [(e, w) for e in encoders for w in dict.fromkeys((1, workers))]:
                runs = [_in_fresh_process(_Job("pipeline", data=str(path), tokenizer=str(tokenizer_dir),
                                               out=str(Path(tmp, f"{name}-{encoder}-{w}-{size}")), workers=w,
                                               encoder=encoder, rows_per_shard=2_000))
                        for size, path in (("1x", small), ("10x", data))]
                (small_tokens, small_s, small_peak), (tokens, seconds, peak) = runs
                steady = (tokens - small_tokens) / (seconds - small_s)
                click.echo(_line(f"chatshard preprocess, {encoder}, {w} worker(s)", tokens, seconds, peak, ceiling,
                                 steady, peak / small_peak))
            if name == "qwen2.5":
                import trl

                template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_training.jinja").read_text()
                tokens, seconds, peak = _in_fresh_process(_Job("trl", data=str(sample), tokenizer=str(tokenizer_dir), template=template))
                click.echo(_line("TRL return_assistant_tokens_mask (per conv.)", tokens, seconds, peak, ceiling))
            if name == "glm4":
                tokens, seconds, peak = _in_fresh_process(_Job("glm4", data=str(sample), tokenizer=str(tokenizer_dir)))
                click.echo(_line("GLM-4 process_batch, per message", tokens, seconds, peak, ceiling))
        _echo_scaling(families, conversations, Path(tmp))
        click.echo("\nvs ceiling: end to end (start-up included) against the bare call, timed after its tokenizer "
                   "loaded. steady state: the 10x run minus the 1x run, so start-up cancels as in the ceiling's "
                   "timing. 10x/1x: peak RSS of the 10x run over the 1x run (main process).")


def _echo_scaling(families: list[tuple[str, Path]], conversations: int, tmp: Path) -> None:
    """The scaling table, for the first tokenizer family (a byte-level one, where both encoders apply)."""
    name, tokenizer_dir = (families or [("demo", REPO / "data" / "tokenizer")])[0]
    rows = generate_corpus(conversations)
    data = write_jsonl(tmp / "scaling.jsonl", rows)
    small = write_jsonl(tmp / "scaling-fifth.jsonl", rows[: max(1, conversations // 5)])
    _, encoders = _render_texts(rows[:10], str(tokenizer_dir))
    cores = os.cpu_count() or 1
    click.echo(f"\n### scaling with workers: {name}, {conversations:,} conversations, {cores} cores (start-up cancelled: a run on all of them minus a run on a fifth)\n")
    click.echo("| engine | encoder | workers | tokens/s | speed-up | efficiency | parent CPU s / 1k rows "
               "| workers CPU s / 1k rows | ceiling |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    click.echo("\n".join(scaling_table(name, tokenizer_dir, data, small, tmp, encoders, cores)))


if __name__ == "__main__":
    main()
