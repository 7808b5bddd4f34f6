"""What the synthesis writes: training JSONL per variant (read back by the trainer's own loader),
the HTML page, and the report of counts."""

import base64
import html
import io
import json
import os
import random
import re
from html.parser import HTMLParser

import pytest
from PIL import Image, ImageColor

from rlvr.config.schema import DataConfig
from rlvr.data import load_examples
from rlvr.synth.output import BOX_COLOURS, histograms, report, write_dataset, write_page
from rlvr.synth.programmatic import write_chains
from rlvr.synth.records import Hop, Query
from rlvr.synth.scenes import render_scenes


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    pairs = render_scenes(str(root / "images"), 4, seed=3)
    records = [r for _, r in pairs]
    queries = [q for r in records for q in write_chains(r, random.Random(r.image), max_queries=2)]
    return root, records, queries


def _query(qid, n_hops, answer, variants=None):
    hops = [Hop(f"hop {k}", ["a-1"], "single" if k % 2 == 0 else "multi", str(k)) for k in range(n_hops)]
    return Query(id=qid, image="x.png", question="q", answer=answer, hops=hops, instances=["a-1"],
                 writer="programmatic", variants=variants or {})


def test_every_variant_file_loads_with_the_trainers_loader_without_skips(made):
    root, records, queries = made
    paths = write_dataset(queries, str(root / "data"), str(root / "images"), records=records)
    assert {k: os.path.basename(v) for k, v in paths.items()} == {
        "chain": "train.jsonl", "last_hop": "train_last_hop.jsonl", "second_half": "train_second_half.jsonl"}
    answers = {}
    for variant, path in paths.items():
        examples, skips = load_examples([path], DataConfig(), processor=None)
        assert skips.skipped == 0 and len(examples) == len(queries), skips.summary()
        for ex, q in zip(examples, queries):
            assert ex.id == q.id and ex.answer == q.answer and ex.source == "hopchain"
            assert ex.question == (q.question if variant == "chain" else q.variants[variant])
            assert os.path.samefile(ex.images[0], root / "images" / q.image)
            assert ex.columns["variant"] == variant and ex.columns["writer"] == "programmatic"
            answers.setdefault(q.id, set()).add(ex.answer)
    assert all(len(a) == 1 for a in answers.values())  # the variants keep the answer
    row = json.loads(open(paths["chain"]).readline())
    assert row["images"] == [f"../images/{queries[0].image}"]  # relative to the JSONL file
    q, rec = queries[0], next(r for r in records if r.image == queries[0].image)
    inst = {i.id: i for i in rec.instances}
    assert set(row["boxes"]) == {i for h in q.hops for i in h.instances}
    for iid, b in row["boxes"].items():
        assert b == {"box": list(inst[iid].box), "box_1000": list(inst[iid].box_1000)}
    assert [h["text"] for h in row["hops"]] == [h.text for h in q.hops] and row["instances"] == q.instances
    assert row["provenance"]["queries"]["templates"] == q.provenance["queries"]["templates"]


def test_a_query_without_a_variant_is_left_out_of_that_file_only(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    queries = [_query("a", 3, "1", {"last_hop": "only the last"}), _query("b", 3, "2")]
    paths = write_dataset(queries, str(tmp_path / "out"), str(tmp_path))
    lines = {v: [json.loads(line) for line in open(p)] for v, p in paths.items()}
    assert [r["id"] for r in lines["chain"]] == ["a", "b"]
    assert [(r["id"], r["question"]) for r in lines["last_hop"]] == [("a", "only the last")]
    assert lines["second_half"] == [] and lines["chain"][0]["boxes"] == {}


class _Checker(HTMLParser):
    """Tag balance (void elements aside) and every image source."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_the_page_is_valid_html_with_the_images_and_hops(made):
    root, records, queries = made
    path = write_page(queries, records, str(root / "page.html"), n=3, images_root=str(root / "images"))
    text = open(path, encoding="utf-8").read()
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert text.startswith("<!doctype html>") and not checker.errors and checker.stack == []
    assert len(checker.images) == 3 and all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    drawn = Image.open(io.BytesIO(base64.b64decode(checker.images[0].split(",", 1)[1]))).convert("RGB")
    original = Image.open(root / "images" / queries[0].image).convert("RGB")
    assert drawn.size == original.size and drawn.tobytes() != original.tobytes()
    record = next(r for r in records if r.image == queries[0].image)
    for k, iid in enumerate(queries[0].instances):  # each chain instance boxed in its colour, in chain order
        x0, y0, x1, y1 = next(i.box for i in record.instances if i.id == iid)
        edge = {drawn.getpixel((x, round((y0 + y1) / 2))) for x in range(int(x0) - 2, int(x0) + 3)}
        assert ImageColor.getrgb(BOX_COLOURS[k]) in edge, (iid, edge)
    for q in queries[:3]:
        assert html.escape(q.question) in text and html.escape(q.variants["last_hop"]) in text
        for h in q.hops:
            assert html.escape(h.text) in text and f'<span class="hop-answer">{html.escape(h.answer)}</span>' in text
    assert html.escape(queries[3].question) not in text
    assert "3 of" in text


def test_a_missing_image_leaves_a_hole_not_an_exception(tmp_path):
    path = write_page([_query("a", 3, "1")], [], str(tmp_path / "p.html"), images_root=str(tmp_path))
    assert "image could not be read" in open(path).read()


def test_report_counts_per_stage_and_reason_and_histograms():
    counts = {"stages": {"instances": {"kept": 8, "dropped": {"too_few_instances": 2}},
                         "queries": {"kept": 5, "dropped": {"no_chain": 1, "unparseable": 3}}}}
    queries = [_query("a", 5, "10"), _query("b", 3, "2"), _query("c", 5, "9"), _query("d", 12, "2"), _query("e", 3, "-1")]
    text, summary = report(counts, queries)
    assert summary["stages"] == {"instances": {"kept": 8, "dropped": {"too_few_instances": 2}},
                                 "queries": {"kept": 5, "dropped": {"no_chain": 1, "unparseable": 3}}}
    assert summary["hops"] == {"3": 2, "5": 2, "12": 1} and list(summary["hops"]) == ["3", "5", "12"]
    assert list(summary["answers"].items()) == [("-1", 1), ("2", 2), ("9", 1), ("10", 1)]
    lines = text.splitlines()
    assert re.match(r"instances\s+10\s+8\s+2\s+too_few_instances 2$", lines[1]), lines[1]
    assert re.match(r"queries\s+9\s+5\s+4\s+unparseable 3, no_chain 1$", lines[2]), lines[2]
    assert "hops per query (5 queries):" in text and re.search(r"^\s+12\s+1\s+#+$", text, re.M)
    # without queries, the histograms come from counts; extra stage keys (unit, in) pass through
    text, summary = report({"stages": {"verify": {"unit": "queries", "in": 7, "kept": 7, "dropped": {}}},
                            "hops": {"5": 3}, "answers": {"4": 3}})
    assert summary["hops"] == {"5": 3} and re.match(r"verify\s+queries\s+7\s+7\s+0$", text.splitlines()[1])
    assert histograms([]) == {"hops": {}, "answers": {}}
