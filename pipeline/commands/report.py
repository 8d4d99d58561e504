"""A self-contained HTML report of a `check` run: inline CSS, inline SVG charts drawn here, no scripts, no assets.

Sections: the check table, a length histogram against the limit, the trained share per role (per split when the
tokenizer has no role tokens), the rows and tokens per source (for a run of `sources`), what was rejected or dropped
and why, and a few samples with trained tokens marked.
"""
from __future__ import annotations

import itertools
import json
from html import escape
from pathlib import Path

import numpy as np

from pipeline.commands.check import CheckReport, format_value
from pipeline.commands.show import token_pieces
from pipeline.outputs import write_atomic
from pipeline.shards.format import IGNORE_INDEX
from pipeline.shards.reader import RowSample
from pipeline.tokenizer import special_token_ids

REJECT_EXAMPLES = 10
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#1f2328;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.muted{color:#59636e}.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;color:#fff}
.pass{background:#1a7f37}.fail{background:#cf222e}.skip{background:#8c959f}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.sample{font:12.5px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word;
border:1px solid #d0d7de;border-radius:6px;padding:10px;background:#fbfbfc}
.t{background:#ccf2d4;color:#0a3d18}.sp{color:#8250df;font-weight:600}.t.sp{background:#b6e8c2}
svg text{font:11px system-ui,sans-serif;fill:#1f2328}
"""


def render_report(report: CheckReport) -> str:
    """The whole HTML document as a string."""
    status = "pass" if report.passed else "fail"
    manifest = report.output.manifest
    body = [
        f"<h1>chatshard check <span class='badge {status}'>{status.upper()}</span></h1>",
        f"<p class='muted'>{escape(report.directory)} &middot; tool {escape(manifest.tool.version)}"
        f" &middot; preset {escape(report.output.preset)} &middot; limit {report.output.limit}</p>",
        "<h2>Checks</h2>", _check_table(report),
        "<h2>Text the chat template added</h2>", _injected_section(report),
        "<h2>Length distribution</h2>", _length_section(report),
        "<h2>Trained share</h2>", _trained_section(report),
        *(["<h2>Sources</h2>", _sources_section(report)] if manifest.sources is not None else []),
        "<h2>Rejects and drops</h2>", _rejects_section(report),
        "<h2>Samples</h2>", _samples_section(report),
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>chatshard check: {status}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(report: CheckReport, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), render_report(report).encode("utf-8"))


def _check_table(report: CheckReport) -> str:
    rows = "".join(
        f"<tr><td>{escape(r.name)}</td><td><span class='badge {r.status}'>{r.status}</span></td>"
        f"<td class='num'>{escape(format_value(r.value))}</td><td>{escape(r.threshold)}</td><td>{escape(r.detail)}</td></tr>"
        for r in report.results
    )
    return f"<table><tr><th>check</th><th>status</th><th>value</th><th>threshold</th><th>detail</th></tr>{rows}</table>"


def _injected_section(report: CheckReport) -> str:
    """Rows whose rendering holds text that is neither the data nor the template's markup (see
    `pipeline/stages/injected.py`): the model trains with it and will expect it at inference."""
    manifest = report.output.manifest
    rows = manifest.accounting.notes.get("injected_text", 0)
    tokens = manifest.accounting.note_tokens.get("injected_text", 0)
    injects = manifest.chat_template.injects
    html = (f"<p>{rows} of {manifest.accounting.written} written rows hold {tokens} tokens of text that the chat "
            "template wrote and the data does not hold (a default system prompt, a date line).</p>")
    if injects:
        html += (f"<p class='muted'>To a conversation of one user turn and one reply it adds:</p>"
                 f"<div class='sample'>{escape(injects)}</div>")
    return html


def _length_section(report: CheckReport) -> str:
    lengths = report.scan.all_lengths
    if not len(lengths):
        return "<p class='muted'>no rows</p>"
    p50, p95 = (int(np.percentile(lengths, q, method="nearest")) for q in (50, 95))
    caption = f"<p class='muted'>{len(lengths)} rows &middot; p50 {p50} &middot; p95 {p95} &middot; max {int(lengths.max())}"
    caption += f" &middot; limit {report.output.limit}</p>" if report.output.limit else "</p>"
    return caption + histogram_svg(lengths, limit=report.output.limit)


def histogram_svg(values: np.ndarray, *, limit: int | None = None, bins: int = 40, width: int = 1000,
                  height: int = 220) -> str:
    """Bars of a histogram, with x and y ticks and a dashed line at `limit` (noted, not drawn, when it lies far to the
    right of every value: the bars would all crowd into the first bins)."""
    longest = max(int(values.max()), 1)
    if limit and limit > 1.5 * longest:
        limit, note = None, f"limit {limit}: off the chart, right of every row"
    else:
        note = ""
    top = max(longest, limit or 0)
    counts, edges = np.histogram(values, bins=bins, range=(0, top))
    left, bottom, plot_w, plot_h = 50, height - 30, width - 70, height - 50
    peak = max(int(counts.max()), 1)
    x = lambda v: left + plot_w * v / top  # noqa: E731
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='length histogram'>",
             f"<line x1='{left}' y1='{bottom}' x2='{left + plot_w}' y2='{bottom}' stroke='#8c959f'/>"]
    for count, lo, hi in zip(counts, edges[:-1], edges[1:]):
        h = plot_h * count / peak
        parts.append(f"<rect x='{x(lo):.1f}' y='{bottom - h:.1f}' width='{max(x(hi) - x(lo) - 1, 1):.1f}' "
                     f"height='{h:.1f}' fill='#54aeff'><title>{int(lo)}-{int(hi)} tokens: {count} rows</title></rect>")
    for tick in round_ticks(top):
        parts.append(f"<text x='{x(tick):.1f}' y='{bottom + 16}' text-anchor='middle'>{int(tick)}</text>")
    for tick in (0, peak // 2, peak):
        y = bottom - plot_h * tick / peak
        parts.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>{tick}</text>")
    parts.append(f"<text x='{left + plot_w / 2}' y='{height - 2}' text-anchor='middle'>tokens per row</text>")
    if limit:
        parts.append(f"<line x1='{x(limit):.1f}' y1='{bottom - plot_h}' x2='{x(limit):.1f}' y2='{bottom}' "
                     f"stroke='#cf222e' stroke-dasharray='5,4'/><text x='{x(limit) - 4:.1f}' y='{bottom - plot_h + 10}' "
                     f"text-anchor='end' fill='#cf222e'>limit {limit}</text>")
    if note:
        parts.append(f"<text x='{left + plot_w}' y='{bottom - plot_h + 10}' text-anchor='end' fill='#cf222e'>{note}</text>")
    return "".join(parts) + "</svg>"


def round_ticks(top: float, *, most: int = 8) -> list[int]:
    """Ticks from 0 to at most `top`, at multiples of the smallest step of 1, 2 or 5 times a power of ten that
    gives no more than `most` of them: 0, 500, 1000, ..., not 0, 409.6, 819.2."""
    step = next(m * 10**e for e in itertools.count() for m in (1, 2, 5) if top // (m * 10**e) + 1 <= most)
    return list(range(0, int(top) + 1, step))


def share_bars_svg(items: list[tuple[str, int, int]], *, width: int = 1000) -> str:
    """One horizontal bar per (label, trained, total): the trained share, with the counts written beside it."""
    row, left, bar_w = 26, 130, width - 380
    height = row * len(items) + 10
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='trained share'>"]
    for k, (label, trained, total) in enumerate(items):
        y, share = 5 + k * row, trained / total if total else 0.0
        parts += [
            f"<text x='{left - 8}' y='{y + 15}' text-anchor='end'>{escape(label)}</text>",
            f"<rect x='{left}' y='{y}' width='{bar_w}' height='{row - 8}' fill='#eaeef2'/>",
            f"<rect x='{left}' y='{y}' width='{bar_w * share:.1f}' height='{row - 8}' fill='#2da44e'/>",
            f"<text x='{left + bar_w + 8}' y='{y + 15}'>{share:.1%} ({trained} of {total} tokens)</text>",
        ]
    return "".join(parts) + "</svg>"


def _trained_section(report: CheckReport) -> str:
    scan = report.scan
    splits = [(s, scan.trained[s], scan.tokens[s]) for s in scan.tokens]
    html = "<p class='muted'>per split</p>" + share_bars_svg(splits)
    if scan.role_tokens:
        roles = [(r, scan.role_trained[r], n) for r, n in sorted(scan.role_tokens.items(), key=lambda kv: -kv[1])]
        html = ("<p class='muted'>per role (a role runs from the token after its role token to the next role token, so "
                "an end-of-turn role token counts for the turn it ends)</p>" + share_bars_svg(roles) + html)
    return html


def _sources_section(report: CheckReport) -> str:
    """One row per entry of the config's `sources`: rows held, drawn, and what became of them; tokens written."""
    sources = report.output.manifest.sources
    of_tokens = any(s.token_share is not None for s in sources)
    names = ("source", "read", "drawn", "written", "rejected", "filtered", *(("token share",) if of_tokens else ()),
             "tokens", "trained tokens")
    head = "".join(f"<th>{name}</th>" for name in names)
    rows = "".join(
        f"<tr><td>{escape(s.path)}</td>" + "".join(f"<td class='num'>{n}</td>" for n in (
            s.read, s.drawn, s.written, s.rejected, s.filtered, *((s.token_share,) if of_tokens else ()), s.tokens))
        + f"<td class='num'>{s.trained_tokens} ({s.trained_tokens / s.tokens if s.tokens else 0:.1%})</td></tr>"
        for s in sources)
    share = "; token share: the tokens a mixture of total_tokens asked of the source" if of_tokens else ""
    return ("<p class='muted'>read: rows the source holds; drawn: rows the mixture took (repeats included) = written "
            f"+ rejected + filtered{share}</p><table><tr>{head}</tr>{rows}</table>")


def _rejects_section(report: CheckReport) -> str:
    acc = report.output.manifest.accounting
    rows = [(kind, reason, count) for kind, counts in (("rejected", acc.rejected_reasons),
                                                      ("filtered", acc.filtered_reasons), ("note", acc.notes))
            for reason, count in counts.items()]
    html = (f"<p>read {acc.read} &middot; written {acc.written} &middot; rejected {acc.rejected} &middot; "
            f"filtered {acc.filtered}</p>")
    if not rows:
        return html + "<p class='muted'>nothing rejected, dropped or cut</p>"
    html += "<table><tr><th>kind</th><th>reason</th><th>rows</th></tr>" + "".join(
        f"<tr><td>{kind}</td><td>{escape(reason)}</td><td class='num'>{count}</td></tr>" for kind, reason, count in rows
    ) + "</table>"
    examples = _reject_examples(report.output.path / "rejects.jsonl")
    if examples:
        html += f"<p class='muted'>first {len(examples)} lines of rejects.jsonl</p><table><tr><th>where</th>" \
                "<th>reason</th><th>field</th><th>message</th><th>raw (start)</th></tr>" + "".join(
                    f"<tr><td>{escape(str(e.get('source')))}:{escape(str(e.get('row')))}</td><td>{escape(str(e.get('reason')))}</td>"
                    f"<td>{escape(str(e.get('field') or ''))}</td><td>{escape(str(e.get('message')))}</td>"
                    f"<td><code>{escape(_raw_start(e.get('raw')))}</code></td></tr>"
                    for e in examples) + "</table>"
    return html


def _raw_start(raw, limit: int = 120) -> str:
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


def _reject_examples(path: Path) -> list[dict]:
    examples = []
    if not path.is_file():
        return examples
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                examples.append(json.loads(line))
            except ValueError:
                examples.append({"reason": "(unreadable line)", "message": line[:200]})
            if len(examples) == REJECT_EXAMPLES:
                break
    return examples


def _samples_section(report: CheckReport) -> str:
    if not report.scan.samples:
        return "<p class='muted'>no samples</p>"
    tokenizer = report.output.tokenizer
    special = set(special_token_ids(tokenizer).tolist())
    html = ["<p class='muted'><span class='t'>green</span> = trained (label = token), "
            "<span class='sp'>purple</span> = special token; hover a token for its id and label</p>"]
    for sample in report.scan.samples:
        html.append(f"<h3>{escape(sample.split)}[{sample.index}] <span class='muted'>{escape(sample.id)} from "
                    f"{escape(sample.origin)}</span></h3>")
        html.append(f"<div class='sample'>{sample_html(tokenizer, sample, special=special)}</div>")
    return "\n".join(html)


def sample_html(tokenizer, sample: RowSample, *, special: set[int]) -> str:
    """One sample decoded token by token, each token a span; trained tokens highlighted. Text is escaped."""
    ids = sample.input_ids.tolist()
    spans = []
    for token, label, piece in zip(ids, sample.labels.tolist(), token_pieces(tokenizer, ids)):
        if not piece:
            continue  # the first bytes of a character; the character is shown with its last token
        classes = " ".join(c for c, on in (("t", label != IGNORE_INDEX), ("sp", token in special)) if on)
        spans.append(f"<span class='{classes}' title='id {token}, label {label}'>{escape(piece)}</span>"
                     if classes else f"<span title='id {token}, label {label}'>{escape(piece)}</span>")
    return "".join(spans)
