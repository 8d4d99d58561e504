"""The HTML report: self-contained (no scripts, no external assets), escaped samples, rendered by headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from pipeline.commands.check import run_checks
from pipeline.commands.report import histogram_svg, render_report, write_report
from pipeline.run import preprocess
from schemas.check_config import CheckConfig
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER

import numpy as np

TRICKY = "Use <b>bold</b> & <script>alert('x')</script> here, 谢谢."


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rows = [{"messages": [{"role": "user", "content": f"Question {k}: {TRICKY}"},
                          {"role": "assistant", "content": f"Answer {k}: {TRICKY}"}]} for k in range(6)]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + ["{broken", json.dumps({"messages": []})]
    (root / "chats.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = load_config(None, {"inputs": [str(root / "chats.jsonl")], "render.tokenizer": str(DEMO_TOKENIZER)})
    preprocess(config, root / "out")
    return run_checks(root / "out", CheckConfig(report_samples=2))


def test_self_contained_and_escaped(report):
    html = render_report(report)
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert not re.search(r"""(src|href)\s*=|url\(|@import""", html)  # no external or embedded assets to fetch
    text = re.sub(r"<span[^>]*>|</span>", "", html)  # samples are one span per token
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert html.count("<svg") == 3  # length histogram, trained share per role and per split
    for check in report.results:
        assert f"<td>{check.name}</td>" in html
    assert "invalid_json" in html and "{broken" in html  # reasons and the rejects.jsonl lines
    assert "class='t'" in html or "class='t sp'" in html  # trained tokens highlighted


def test_histogram_marks_the_limit():
    svg = histogram_svg(np.array([5, 10, 10, 80]), limit=100)
    assert svg.count("<rect") == 40 and "limit 100" in svg and "stroke-dasharray" in svg


@pytest.mark.parametrize("longest, limit", [(80, 100), (1234, 2048), (7, None), (4321, 4096), (97, 96)])
def test_histogram_ticks_fall_on_round_numbers(longest, limit):
    """The x ticks are multiples of one step of 1, 2 or 5 times a power of ten, start at 0 and reach the axis end."""
    svg = histogram_svg(np.array([1, longest // 2, longest]), limit=limit)
    ticks = [int(t) for t in re.findall(r"text-anchor='middle'>(\d+)</text>", svg)]
    step = ticks[1] - ticks[0]
    assert ticks[0] == 0 and 4 <= len(ticks) <= 11
    assert all(b - a == step for a, b in zip(ticks, ticks[1:]))
    assert re.fullmatch(r"[125]0*", str(step)), ticks
    top = max(longest, limit or 0) if not limit or limit <= 1.5 * longest else longest
    assert ticks[-1] <= top < ticks[-1] + step


def test_samples_name_their_source_file_and_row(report):
    html = render_report(report)
    for sample in report.scan.samples:
        assert f"{sample.source}:{sample.row}" in html
        assert sample.source.endswith("chats.jsonl") and sample.row >= 1


def test_chromium_renders_it(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not on PATH")
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    write_report(report, page)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60)
    assert "chatshard check" in dom.stdout and "Length distribution" in dom.stdout
    subprocess.run([chromium, *flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=60, cwd=tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_an_output_of_sources_gets_a_table_per_source_and_one_of_inputs_none(report, tmp_path):
    assert "<h2>Sources</h2>" not in render_report(report)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Q{k}"}, {"role": "assistant", "content": f"A{k}"}]}) + "\n" for k in range(4)))
    config = load_config(None, {"sources": [{"path": str(tmp_path / "a.jsonl"), "epochs": 2}],
                                "render.tokenizer": str(DEMO_TOKENIZER)})
    preprocess(config, tmp_path / "out")
    html = render_report(run_checks(tmp_path / "out"))
    table = html[html.index("<h2>Sources</h2>"):html.index("<h2>Rejects")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)
    assert cells[0].endswith("a.jsonl") and cells[1:6] == ["4", "8", "8", "0", "0"]  # read, drawn, written, ...


def test_a_mixture_of_tokens_shows_each_sources_token_share(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": f"Q{k}"}, {"role": "assistant", "content": f"A{k} " * k}]}) + "\n"
            for k in range(6)))
    config = load_config(None, {"sources": [{"path": str(tmp_path / "a.jsonl"), "weight": 1},
                                            {"path": str(tmp_path / "b.jsonl"), "weight": 3}],
                                "mixture": {"total_tokens": 200}, "render.tokenizer": str(DEMO_TOKENIZER)})
    manifest = preprocess(config, tmp_path / "out")
    html = render_report(run_checks(tmp_path / "out"))
    table = html[html.index("<h2>Sources</h2>"):html.index("<h2>Rejects")]
    assert "<th>token share</th>" in table
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)
    for row, source in zip((cells[:9], cells[9:]), manifest["sources"]):
        assert row[6:8] == [str(source["token_share"]), str(source["tokens"])]
    assert [s["token_share"] for s in manifest["sources"]] == [50, 150]
