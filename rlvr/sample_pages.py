"""Sample pages: a few rollouts as a self-contained HTML page, and the index of a run's pages.

    write_sample_page(run_dir, step, rows)   # any list of SampleRow

Pages go to ``<run_dir>/samples/step_000100.html`` with ``samples/index.html`` listing them.
A page needs nothing but itself: images are embedded (downscaled to at most
``THUMB_PIXELS`` on the long side), there is no script and no external resource, so it
opens in any browser, also from a copied folder. Long completions are folded with
``<details>``, never cut: the whole text is in the page. Everything from the data and
the model is HTML-escaped. A tool-using rollout (``SampleRow.turns``) is shown turn by turn:
the model's text, then each tool's observation with its status and images, in order.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from rlvr.files import atomic_write  # a browser refreshing a page never sees half of it

THUMB_PIXELS = 448  # long side of embedded images, pixels
FOLD_CHARS = 1200  # completions longer than this (or FOLD_LINES lines) are folded
FOLD_LINES = 24
PREVIEW_CHARS = 500  # shown above the fold
_PAGE_RE = re.compile(r"^step_(\d+)\.html$")


@dataclass
class TurnView:
    """One turn of a tool-using rollout as shown to a person (``rlvr.batch.Turn`` decoded)."""

    kind: str  # "model" (the model's text) | "observation" (a tool's response)
    text: str | None  # the model's decoded text or the observation's; None: not decoded (no tokenizer)
    tokens: int = 0
    tool: str | None = None  # observation: the tool called (None: the call could not be parsed)
    status: str | None = None  # observation: "ok", "error", "timeout", "invalid"
    images: list[Any] = field(default_factory=list)  # observation: its images (PIL); None marks a missing one


@dataclass
class SampleRow:
    """One rollout as shown to a person."""

    id: str
    question: str
    images: list[Any]  # image references (paths, bytes, PIL images), as in rlvr.data.Example
    completion: str
    extracted: str | None  # the final answer the verifier found; None = none
    gold: str
    reward: float
    outcome: str = ""  # verifier outcome: correct, wrong, no_answer, timeout, error
    source: str = ""
    response_tokens: int | None = None
    finished: bool | None = None  # False: cut at rollout.max_new_tokens
    note: str = ""  # e.g. "5/16 correct in its group"
    extra: dict[str, Any] = field(default_factory=dict)
    turns: list[TurnView] | None = None  # a tool-using rollout's turns; None: one model turn (``completion``)
    tool_calls: int | None = None
    end_reason: str | None = None  # why a tool-using rollout ended ("answer", "max_calls", ...)
    model_tokens: int | None = None  # of response_tokens, those the model wrote (the rest are observations)


# --------------------------------------------------------------------------- HTML


_CSS = """
:root { --ok: #1a7f37; --bad: #c62828; --muted: #57606a; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { padding: 16px 24px; border-bottom: 1px solid var(--line); background: var(--bg); }
header h1 { margin: 0 0 4px; font-size: 20px; }
header p { margin: 0; color: var(--muted); }
header nav { margin-top: 6px; }
a { color: #0969da; }
main { padding: 16px 24px; max-width: 1200px; }
article { display: flex; gap: 20px; padding: 16px; margin: 0 0 16px; border: 1px solid var(--line);
          border-left: 6px solid var(--muted); border-radius: 6px; }
article.rewarded { border-left-color: var(--ok); }
article.unrewarded { border-left-color: var(--bad); }
.images { flex: 0 0 224px; display: flex; flex-direction: column; gap: 8px; }
figure { margin: 0; }
figure img { display: block; width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px;
             image-rendering: auto; }
figcaption { font-size: 12px; color: var(--muted); }
.missing { padding: 24px 12px; border: 1px dashed var(--bad); color: var(--bad); font-size: 13px; overflow-wrap: anywhere; }
.body { flex: 1 1 auto; min-width: 0; }
.badges { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 8px; }
.badge { font-size: 12px; padding: 1px 8px; border-radius: 10px; background: var(--bg); border: 1px solid var(--line); }
.badge.ok { background: #dafbe1; border-color: #4ac26b; color: var(--ok); font-weight: 600; }
.badge.bad { background: #ffebe9; border-color: #ff8182; color: var(--bad); font-weight: 600; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin: 10px 0 2px; }
.question { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 6px 0; }
dt { color: var(--muted); }
dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
pre { margin: 0; padding: 10px 12px; background: var(--bg); border: 1px solid var(--line); border-radius: 4px;
      white-space: pre-wrap; overflow-wrap: anywhere; font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.empty { color: var(--muted); font-style: italic; }
details > summary { cursor: pointer; list-style: none; }
details > summary::-webkit-details-marker { display: none; }
details > summary .more { display: inline-block; margin-top: 4px; color: #0969da; font-size: 13px; }
details > summary .more::before { content: "\\25B8  "; }
details[open] > summary .preview { display: none; }
details[open] > summary .more::before { content: "\\25BE  "; }
.fade { color: var(--muted); }
.badge.warn { background: #fff8c5; border-color: #d4a72c; color: #7d4e00; font-weight: 600; }
.badge.invalid { background: #fbefff; border-color: #c297ff; color: #6639ba; font-weight: 600; }
.turn { margin: 0 0 10px; padding-left: 10px; border-left: 3px solid var(--line); }
.turn.observation { border-left-color: #54aeff; } .turn.status-error { border-left-color: var(--bad); }
.turn.status-timeout { border-left-color: #d4a72c; } .turn.status-invalid { border-left-color: #c297ff; }
.turn h3 { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 0 0 4px; font-size: 12px; color: var(--muted); }
.turn .images { flex-direction: row; flex-wrap: wrap; margin-top: 6px; } .turn figure { width: min(224px, 100%); }
table.index { border-collapse: collapse; }
table.index td, table.index th { padding: 4px 14px 4px 0; text-align: left; border-bottom: 1px solid var(--line); }
@media (max-width: 700px) { article { flex-direction: column; } .images { flex-basis: auto; max-width: 320px; } }
"""


def _image_data_uri(ref: Any) -> tuple[str, str]:
    """(data URI of a downscaled copy, caption with the original size)."""
    from PIL import Image

    from rlvr.data import open_image

    image = open_image(ref)
    width, height = image.size
    image.thumbnail((THUMB_PIXELS, THUMB_PIXELS), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    mime = "image/png"
    if buf.tell() > 200_000:  # photographs: JPEG is a fraction of the size
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}", f"{width}\u00d7{height} px"


def _figures(refs: Sequence[Any], whose: str) -> list[str]:
    """One ``<figure>`` per image (an embedded copy, its original size), or a note where one cannot be shown."""
    parts = []
    for k, ref in enumerate(refs, 1):
        if ref is None:
            parts.append(f'<div class="missing">image {k} of {len(refs)} is missing from the response</div>')
            continue
        name = ref if isinstance(ref, str) else f"<{type(ref).__name__}>"
        try:
            uri, caption = _image_data_uri(ref)
        except Exception as e:  # noqa: BLE001 - a page with a hole beats no page
            parts.append(f'<div class="missing">image {k} could not be read: {html.escape(str(name))} '
                         f'({html.escape(type(e).__name__)})</div>')
            continue
        alt = f"image {k} of {len(refs)} {whose}"
        label = f"{caption}" + (f" \u00b7 {k}/{len(refs)}" if len(refs) > 1 else "")
        parts.append(f'<figure><img src="{uri}" alt="{html.escape(alt)}" title="{html.escape(str(name))}">'
                     f'<figcaption>{html.escape(label)}</figcaption></figure>')
    return parts


def _images_html(row: SampleRow) -> str:
    if not row.images:
        return '<div class="images"><div class="missing" style="border-color:#d0d7de;color:#57606a">text only</div></div>'
    return '<div class="images">' + "".join(_figures(row.images, f"for {row.id}")) + "</div>"


def _completion_html(text: str) -> str:
    if not text:
        return '<pre class="completion empty">(empty completion)</pre>'
    lines = text.count("\n") + 1
    if len(text) <= FOLD_CHARS and lines <= FOLD_LINES:
        return f'<pre class="completion">{html.escape(text)}</pre>'
    preview = text[:PREVIEW_CHARS]
    preview = "\n".join(preview.split("\n")[:FOLD_LINES // 2])
    return (f'<details class="fold"><summary><pre class="preview">{html.escape(preview)}<span class="fade">'
            f' \u2026</span></pre><span class="more">show the whole completion ({len(text):,} characters, '
            f'{lines:,} lines)</span></summary><pre class="completion">{html.escape(text)}</pre></details>')


_STATUS_BADGE = {"ok": "ok", "error": "bad", "timeout": "warn", "invalid": "invalid"}  # colour of each status


def _turn_html(turn: TurnView, number: int, row_id: str) -> str:
    """A model turn (its text, folded like a completion) or an observation (tool, status, text, images)."""
    if turn.kind == "model":
        body = (_completion_html(turn.text) if turn.text is not None else
                f'<pre class="completion empty">({turn.tokens} tokens, not decoded: no tokenizer was given)</pre>')
        return f'<div class="turn model"><h3>model turn {number} \u00b7 {turn.tokens} tokens</h3>{body}</div>'
    status = turn.status or "unknown"
    tool = f"tool {html.escape(turn.tool)}" if turn.tool else "no tool (the call could not be read)"
    n = len(turn.images)
    head = (f'<h3>observation {number} \u00b7 <span class="badge">{tool}</span><span class="badge '
            f'{_STATUS_BADGE.get(status, "")} status">{html.escape(status)}</span>'
            f'{n} image{"s" * (n != 1)} \u00b7 {turn.tokens} tokens</h3>')
    text = (f'<pre class="observation">{html.escape(turn.text)}</pre>' if turn.text
            else '<pre class="observation empty">(no text)</pre>')
    images = ('<div class="images">' + "".join(_figures(turn.images, f"of observation {number} for {row_id}")) +
              "</div>") if turn.images else ""
    return f'<div class="turn observation status-{html.escape(status)}">{head}{text}{images}</div>'


def _conversation_html(row: SampleRow) -> str:
    numbers = {"model": 0, "observation": 0}
    parts = []
    for turn in row.turns or []:
        numbers[turn.kind] = numbers.get(turn.kind, 0) + 1
        parts.append(_turn_html(turn, numbers[turn.kind], str(row.id)))
    return f'<h2>Conversation</h2><div class="turns">{"".join(parts)}</div>'


def _tool_badges(row: SampleRow) -> list[str]:
    badges = []
    if row.tool_calls is not None:
        failed = sum(t.kind == "observation" and t.status != "ok" for t in row.turns or [])
        badges.append(f'<span class="badge{" warn" if failed else ""}">{row.tool_calls} tool call'
                      f'{"s" * (row.tool_calls != 1)}' + (f" \u00b7 {failed} failed" if failed else "") + "</span>")
    if row.end_reason is not None:
        badges.append(f'<span class="badge{"" if row.end_reason == "answer" else " warn"}">ended: '
                      f'{html.escape(row.end_reason)}</span>')
    return badges


def _row_html(row: SampleRow) -> str:
    rewarded = row.reward > 0
    badge = "ok" if rewarded else "bad"
    badges = [f'<span class="badge {badge}">reward {row.reward:.2f}' + (f" \u00b7 {html.escape(row.outcome)}"
                                                                          if row.outcome else "") + "</span>"]
    badges.append(f'<span class="badge">id {html.escape(str(row.id))}</span>')
    if row.source:
        badges.append(f'<span class="badge">source {html.escape(row.source)}</span>')
    if row.response_tokens is not None:
        cut = " \u00b7 cut at the token limit" if row.finished is False else ""
        own = f" ({row.model_tokens} by the model)" if row.model_tokens is not None else ""
        badges.append(f'<span class="badge">{row.response_tokens} tokens{own}{cut}</span>')
    badges += _tool_badges(row)
    if row.note:
        badges.append(f'<span class="badge">{html.escape(row.note)}</span>')
    extracted = ('<span class="empty">(no final answer found)</span>' if row.extracted is None
                 else html.escape(row.extracted))
    text = _conversation_html(row) if row.turns is not None else f"<h2>Completion</h2>{_completion_html(row.completion)}"
    return (
        f'<article class="sample {"rewarded" if rewarded else "unrewarded"}">{_images_html(row)}<div class="body">'
        f'<div class="badges">{"".join(badges)}</div>'
        f'<h2>Question</h2><p class="question">{html.escape(row.question)}</p>'
        f'<dl><dt>Gold answer</dt><dd class="gold">{html.escape(row.gold)}</dd>'
        f'<dt>Extracted answer</dt><dd class="extracted">{extracted}</dd></dl>'
        f'{text}</div></article>'
    )


def render_page(title: str, subtitle_html: str, rows: Sequence[SampleRow], nav_html: str = "",
                summary: dict[str, Any] | None = None) -> str:
    """A complete, self-contained HTML document showing ``rows``.

    ``nav_html`` goes between ``<!--nav-->`` markers (so neighbouring pages can be relinked
    later); ``summary`` is stored as JSON in a ``<meta name="rlvr-samples">`` tag near the top,
    where ``write_index`` reads it back.
    """
    body = "\n".join(_row_html(r) for r in rows) or '<p class="empty">No rollouts.</p>'
    meta = (f'<meta name="rlvr-samples" content="{html.escape(json.dumps(summary))}">' if summary is not None else "")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{meta}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body><header>'
            f'<h1>{html.escape(title)}</h1><p>{subtitle_html}</p>{_NAV_START}{nav_html}{_NAV_END}</header>\n'
            f'<main>\n{body}\n</main></body></html>\n')


_NAV_START, _NAV_END = "<!--nav-->", "<!--/nav-->"
_NAV_RE = re.compile(re.escape(_NAV_START) + ".*?" + re.escape(_NAV_END), re.S)


def _pages(folder: str) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir(folder):
        match = _PAGE_RE.match(name)
        if match:
            found.append((int(match.group(1)), name))
    return sorted(found)


def page_summary(rows: Sequence[SampleRow], step: int, batch_rewards: Sequence[float] | None = None) -> dict[str, Any]:
    """The figures a page and the index show: the rollouts shown, and the whole step's when given."""
    shown = [float(r.reward) for r in rows]
    summary: dict[str, Any] = {"step": step, "shown": len(shown), "shown_rewarded": sum(r > 0 for r in shown),
                               "shown_mean": sum(shown) / len(shown) if shown else None}
    if batch_rewards is not None:
        batch = [float(r) for r in batch_rewards]
        summary.update(batch=len(batch), batch_rewarded=sum(r > 0 for r in batch),
                       batch_mean=sum(batch) / len(batch) if batch else None)
    return summary


def read_page_summary(path: str) -> dict[str, Any] | None:
    """The summary stored in a page written by ``write_sample_page``; None for older or foreign pages."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return None
    match = re.search(r'<meta name="rlvr-samples" content="([^"]*)">', head)
    if not match:
        return None
    try:
        summary = json.loads(html.unescape(match.group(1)))
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


def _mean(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "\u2013"


def _nav_html(pages: list[tuple[int, str]], step: int) -> str:
    """Links to the index and to the pages before and after ``step``."""
    earlier = [(s, n) for s, n in pages if s < step]
    later = [(s, n) for s, n in pages if s > step]
    links = ['<a href="index.html">all steps</a>']
    links.append(f'<a href="{earlier[-1][1]}" rel="prev">\u2190 step {earlier[-1][0]}</a>' if earlier
                 else '<span class="fade">\u2190 (first page)</span>')
    links.append(f'<a href="{later[0][1]}" rel="next">step {later[0][0]} \u2192</a>' if later
                 else '<span class="fade">(latest page) \u2192</span>')
    return '<nav class="pages">' + " \u00b7 ".join(links) + "</nav>"


def _relink(folder: str, pages: list[tuple[int, str]], step: int) -> None:
    """Rewrite the navigation of the page of ``step`` (its previous/next links), if it exists."""
    name = dict(pages).get(step)
    if name is None:
        return
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return
    new = _NAV_RE.sub(lambda _: _NAV_START + _nav_html(pages, step) + _NAV_END, text, count=1)
    if new != text:
        atomic_write(path, new)


def write_index(folder: str, run_name: str) -> str:
    """(Re)write ``folder/index.html``: a table of every ``step_*.html`` page with its figures."""
    pages = _pages(folder)
    rows = []
    for step, name in pages:
        s = read_page_summary(os.path.join(folder, name)) or {}
        if "batch" in s:
            batch = f'{s["batch_rewarded"]} of {s["batch"]}</td><td>{_mean(s["batch_mean"])}'
        else:
            batch = "\u2013</td><td>\u2013"
        shown = f'{s["shown_rewarded"]} of {s["shown"]}' if "shown" in s else "\u2013"
        rows.append(f'<tr><td><a href="{name}">step {step}</a></td><td>{batch}</td><td>{shown}</td>'
                    f'<td>{_mean(s.get("shown_mean"))}</td></tr>')
    doc = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(run_name)}: samples'
           f'</title><style>{_CSS}</style></head><body><header><h1>{html.escape(run_name)}: rollout samples</h1>'
           f'<p>{len(pages)} page{"s" * (len(pages) != 1)}, one per logged step. "Step\'s rollouts": every rollout '
           f'of the step that this process sampled; "shown": those on the page. Rewarded: reward &gt; 0.</p>'
           f'</header><main><table class="index"><tr><th>page</th><th>step\'s rollouts rewarded</th>'
           f'<th>step\'s mean reward</th><th>shown rewarded</th><th>shown mean reward</th></tr>{"".join(rows)}'
           f'</table></main></body></html>\n')
    path = os.path.join(folder, "index.html")
    atomic_write(path, doc)
    return path


def write_sample_page(run_dir: str, step: int, rows: Sequence[SampleRow], title: str | None = None,
                      batch_rewards: Sequence[float] | None = None) -> str:
    """Write ``<run_dir>/samples/step_<step>.html``, relink its neighbours and refresh ``index.html``.

    ``batch_rewards``: the rewards of every rollout of the step (this process's), for the
    step's figures on the page and in the index. Returns the page's path.
    """
    folder = os.path.join(run_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    run_name = os.path.basename(os.path.abspath(run_dir))
    name = f"step_{step:06d}.html"
    pages = sorted({**dict(_pages(folder)), step: name}.items())
    summary = page_summary(rows, step, batch_rewards)
    parts = [f"run {html.escape(run_name)}"]
    if "batch" in summary:
        parts.append(f"the step's {summary['batch']} rollouts on this process: {summary['batch_rewarded']} rewarded, "
                     f"mean reward {_mean(summary['batch_mean'])}")
    parts.append(f"shown: {summary['shown']}, {summary['shown_rewarded']} rewarded, mean reward "
                 f"{_mean(summary['shown_mean'])}")
    parts.append(f"written {time.strftime('%Y-%m-%d %H:%M:%S')}")
    path = os.path.join(folder, name)
    atomic_write(path, render_page(title or f"{run_name} \u00b7 step {step}", " \u00b7 ".join(parts), rows,
                                    _nav_html(pages, step), summary))
    position = [s for s, _ in pages].index(step)
    for neighbour in pages[max(0, position - 1):position] + pages[position + 1:position + 2]:
        _relink(folder, pages, neighbour[0])
    write_index(folder, run_name)
    return path
