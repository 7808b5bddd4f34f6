"""What the synthesis hands a user: training JSONL per variant, a page to look at, a report of counts.

    paths = write_dataset(queries, "out", images_root="images", records=records)
    write_page(queries, records, "out/samples.html", images_root="images")
    text, summary = report(counts, queries)

JSONL rows are the trainer's format (README "Data": question, answer, images relative to the
JSONL file, id, source="hopchain") plus the chain's metadata as extra columns: ``hops``
(text, instances, level, answer), ``instances`` (the combination's ids), ``boxes``
({id: {"box": pixels, "box_1000": ...}}, when ``records`` are given), ``writer``,
``provenance``, ``variant``. One file per variant of the same chains: ``train.jsonl`` (the
full chain), ``train_last_hop.jsonl`` and ``train_second_half.jsonl`` (the paper's ablation;
a query without that variant is left out of that file only). Same ids across the files.

``counts`` for ``report`` (what the pipeline collects, a plain JSON-able dict):

    {"stages": {"categories": {"kept": 40, "dropped": {"no_categories": 2}},
                "instances": {"kept": 38, "dropped": {"too_few_instances": 2}},
                "queries": {"kept": 120, "dropped": {"no_chain": 3, "too_few_hops": 1}},
                "verify": {"kept": 100, "dropped": {"not_unanimous": 15}},
                "difficulty": {"kept": 90, "dropped": {"always_solved": 10}}},
     "hops": {"5": 30, ...}, "answers": {"2": 12, ...}}        # optional; from ``queries`` if given

Stages are reported in the dict's order; "kept" counts what a stage passed on (images for
stages 1-2, queries after), "dropped" what it removed, by reason.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rlvr.files import atomic_write, write_jsonl
from rlvr.synth.records import ImageRecord, Query, to_dict

VARIANT_FILES = {"chain": "train.jsonl", "last_hop": "train_last_hop.jsonl", "second_half": "train_second_half.jsonl"}
SOURCE = "hopchain"
PAGE_PIXELS = 448  # long side of the images drawn on the page
BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def _image_path(image: str, images_root: str) -> str:
    return image if os.path.isabs(image) else os.path.join(images_root, image)


def _by_image(records: Mapping[str, ImageRecord] | Iterable[ImageRecord] | None) -> dict[str, ImageRecord]:
    if records is None:
        return {}
    if isinstance(records, Mapping):
        return dict(records)
    return {r.image: r for r in records}


def dataset_row(query: Query, question: str, variant: str, image_ref: str, record: ImageRecord | None) -> dict:
    """One JSONL row: the trainer's columns, then the chain's metadata."""
    boxes = {}
    if record is not None:
        by_id = {i.id: i for i in record.instances}
        used = {i for h in query.hops for i in h.instances} | set(query.instances)
        boxes = {i: {"box": list(by_id[i].box), "box_1000": list(by_id[i].box_1000)} for i in sorted(used) if i in by_id}
    return {"id": query.id, "question": question, "answer": query.answer, "images": [image_ref], "source": SOURCE,
            "variant": variant, "hops": [to_dict(h) for h in query.hops], "instances": list(query.instances),
            "boxes": boxes, "writer": query.writer, "provenance": query.provenance}


def write_dataset(queries: Sequence[Query], out_dir: str, images_root: str,
                  records: Mapping[str, ImageRecord] | Iterable[ImageRecord] | None = None) -> dict[str, str]:
    """Write one JSONL per variant into ``out_dir``; returns {variant: path} (``chain`` is train.jsonl).

    ``Query.image`` is read relative to ``images_root`` (unless absolute) and written relative
    to ``out_dir``, so the folder can move with its images. ``records`` (by image, or a list)
    add the instances' boxes.
    """
    os.makedirs(out_dir, exist_ok=True)
    by_image = _by_image(records)
    rows: dict[str, list[dict]] = {v: [] for v in VARIANT_FILES}
    for q in queries:
        ref = os.path.relpath(os.path.abspath(_image_path(q.image, images_root)), os.path.abspath(out_dir))
        ref = ref.replace(os.sep, "/")
        for variant in VARIANT_FILES:
            question = q.question if variant == "chain" else q.variants.get(variant)
            if question:
                rows[variant].append(dataset_row(q, question, variant, ref, by_image.get(q.image)))
    paths = {}
    for variant, name in VARIANT_FILES.items():
        paths[variant] = os.path.join(out_dir, name)
        write_jsonl(paths[variant], rows[variant])
    return paths


# --------------------------------------------------------------------------- page


_PAGE_CSS = """
.hops { margin: 4px 0 0; padding-left: 22px; }
.hops li { margin: 2px 0; }
.level { font-size: 11px; padding: 0 6px; border-radius: 8px; border: 1px solid var(--line); color: var(--muted); }
.hop-answer { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: var(--ok); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
.images { flex-basis: 360px; }
"""


def draw_instances(image_path: str, query: Query, record: ImageRecord | None) -> str:
    """The image with the chain's instances boxed and numbered in chain order, as a PNG data URL."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(image_path) as im:
        image = im.convert("RGB")
    scale = min(1.0, PAGE_PIXELS / max(image.size))
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=18)
    by_id = {i.id: i for i in record.instances} if record is not None else {}
    for k, inst_id in enumerate(query.instances):
        if inst_id not in by_id:
            continue
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        x0, y0, x1, y1 = (v * scale for v in by_id[inst_id].box)
        draw.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), outline="white", width=6)  # visible on any fill
        draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=colour, width=3)
        label = str(k + 1)  # the number only: ids are in the legend beside the image
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        draw.rectangle((x0, y0, x0 + right - left + 8, y0 + bottom - top + 6), fill=colour, outline="white")
        draw.text((x0 + 4 - left, y0 + 3 - top), label, fill="white", font=font)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _hop_answer(answer: str | None) -> str:
    return "" if answer is None else f' &rarr; <span class="hop-answer">{html.escape(answer)}</span>'


def _query_html(query: Query, image_path: str, record: ImageRecord | None) -> str:
    esc = html.escape
    try:
        figure = f'<figure><img src="{draw_instances(image_path, query, record)}" alt="{esc(query.image)}">' \
                 f'<figcaption>{esc(query.image)}</figcaption></figure>'
    except Exception as e:  # noqa: BLE001 - a page with a hole beats no page
        figure = f'<div class="missing">image could not be read: {esc(image_path)} ({esc(type(e).__name__)}: {esc(str(e))})</div>'
    legend = " ".join(f'<span class="badge"><span class="swatch" style="background:{BOX_COLOURS[k % len(BOX_COLOURS)]}">'
                      f'</span>{k + 1}: {esc(i)}</span>' for k, i in enumerate(query.instances))
    hops = "".join(f'<li><span class="level">{esc(h.level)}</span> {esc(h.text)} '
                   f'<span class="fade">[{esc(", ".join(h.instances))}]</span>{_hop_answer(h.answer)}</li>'
                   for h in query.hops)
    variants = "".join(f"<dt>{esc(name)}</dt><dd>{esc(text)}</dd>" for name, text in query.variants.items())
    return (f'<article class="sample rewarded"><div class="images">{figure}</div><div class="body">'
            f'<div class="badges"><span class="badge">{esc(query.id)}</span><span class="badge">{len(query.hops)} hops'
            f'</span><span class="badge">writer {esc(query.writer)}</span>{legend}</div>'
            f'<h2>Question</h2><p class="question">{esc(query.question)}</p>'
            f'<dl><dt>Answer</dt><dd class="gold">{esc(query.answer)}</dd></dl>'
            f'<h2>Hops</h2><ol class="hops">{hops}</ol>'
            f'{"<h2>Variants (same answer)</h2><dl>" + variants + "</dl>" if variants else ""}</div></article>')


def write_page(queries: Sequence[Query], records: Mapping[str, ImageRecord] | Iterable[ImageRecord] | None,
               path: str, n: int = 24, images_root: str = "", title: str = "HopChain samples") -> str:
    """A self-contained HTML page of the first ``n`` queries: the image with the chain's instances
    drawn and numbered, the question, every hop with its level, instances and intermediate
    answer, the answer, and the variants. Images are embedded; nothing else is loaded."""
    from rlvr.sample_pages import _CSS  # one look for every page the project writes

    by_image = _by_image(records)
    shown = list(queries)[:n]
    body = "\n".join(_query_html(q, _image_path(q.image, images_root), by_image.get(q.image)) for q in shown)
    subtitle = f"{len(shown)} of {len(queries)} queries; boxes numbered in chain order"
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><style>{_CSS}{_PAGE_CSS}</style></head>\n<body><header>'
            f'<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>\n'
            f'<main>\n{body or "<p class=empty>No queries.</p>"}\n</main></body></html>\n')
    atomic_write(path, page)
    return path


# --------------------------------------------------------------------------- report


def histograms(queries: Iterable[Query]) -> dict[str, dict[str, int]]:
    """{"hops": {hop count: n}, "answers": {answer: n}}, keys as strings, sorted numerically."""
    queries = list(queries)
    hops = collections.Counter(str(len(q.hops)) for q in queries)
    answers = collections.Counter(q.answer for q in queries)

    def order(counter: collections.Counter) -> dict[str, int]:
        def key(k: str) -> tuple[int, float, str]:
            try:
                return (0, float(k), k)
            except ValueError:
                return (1, 0.0, k)
        return {k: counter[k] for k in sorted(counter, key=key)}

    return {"hops": order(hops), "answers": order(answers)}


def report(counts: Mapping[str, Any], queries: Iterable[Query] | None = None) -> tuple[str, dict]:
    """(text for a person, the same as a dict) from ``counts`` (format in the module docstring).

    With ``queries``, the hop-count and answer histograms are computed from them.
    """
    stages = {}
    for name, s in (counts.get("stages") or {}).items():
        dropped = {r: int(v) for r, v in (s.get("dropped") or {}).items()}
        stages[name] = {**s, "kept": int(s.get("kept", 0)), "dropped": dropped}  # other keys (unit, in) kept
    hist = histograms(queries) if queries is not None else \
        {"hops": dict(counts.get("hops") or {}), "answers": dict(counts.get("answers") or {})}
    summary = {"stages": stages, **hist}
    lines = [f"{'stage':<12} {'unit':<8} {'in':>6} {'kept':>6} {'dropped':>7}  by reason"]
    for name, s in stages.items():
        reasons = ", ".join(f"{r} {v}" for r, v in sorted(s["dropped"].items(), key=lambda kv: (-kv[1], kv[0])))
        n_in = s.get("in", s["kept"] + sum(s["dropped"].values()))
        lines.append(f"{name:<12} {s.get('unit', ''):<8} {n_in:>6} {s['kept']:>6} {sum(s['dropped'].values()):>7}  "
                     f"{reasons}".rstrip())
    for title, key in (("hops per query", "hops"), ("answers", "answers")):
        total = sum(hist[key].values())
        lines.append(f"{title} ({total} queries):")
        for value, n in hist[key].items():
            lines.append(f"  {value:>6}  {n:>5}  {'#' * max(1, round(40 * n / total)) if total else ''}")
    return "\n".join(lines) + "\n", summary
