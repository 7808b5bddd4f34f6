"""Synthetic scenes and the programmatic chain writer, checked against the scenes' ground truth.

Everything a chain claims is recomputed here from the instances' attributes and boxes with
this file's own relations (not the writer's functions): the anchor's description matches
one instance of the whole scene; each link, given its anchor, matches exactly one instance
(the next in the chain) and, without it, two or more; the answer is the final instance's
digit, dots or colour count; the variants name their instance uniquely and keep the answer.
"""

import collections
import json
import random

import pytest
from PIL import Image

from rlvr.synth.programmatic import write_chains
from rlvr.synth.records import ImageRecord, Instance, to_1000
from rlvr.synth.scenes import COLOURS, SIZE, render_scenes

N_SCENES = 12


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return render_scenes(str(tmp_path_factory.mktemp("scenes")), N_SCENES, seed=7)


@pytest.fixture(scope="module")
def chains(scenes):
    out = []
    for _, record in scenes:
        for q in write_chains(record, random.Random(f"t-{record.image}")):
            out.append((record, q))
    return out


# ---------------------------------------------------------------- the test's own truth


def _attrs(inst):
    a = inst.attributes
    return a["colour"], a["shape"], a["text"], a["parts"]


def _fits(inst, spec):
    colour, shape, text, parts = _attrs(inst)
    return all({"colour": colour, "shape": shape, "text": text, "parts": parts}[k] == v for k, v in spec.items())


def _beside(template, a, b):
    """Gap from a to b in the template's direction if b shares a's row/column there, else None."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    same_row = not (by1 <= ay0 or by0 >= ay1)
    same_col = not (bx1 <= ax0 or bx0 >= ax1)
    gap = {"right": bx0 - ax1, "left": ax0 - bx1, "below": by0 - ay1, "above": ay0 - by1}[template]
    ok = same_row if template in ("left", "right") else same_col
    return gap if ok and gap > 0 else None


def _relation(template, a, scene):
    """Instances the link's description denotes from anchor a (with the value read on a)."""
    colour, shape, text, parts = _attrs(a)
    others = [b for b in scene if b.id != a.id]
    if template in ("right", "left", "above", "below"):
        gaps = {b.id: _beside(template, a, b) for b in others}
        gaps = {k: g for k, g in gaps.items() if g is not None}
        return {k for k, g in gaps.items() if g == min(gaps.values())}
    if template == "same_colour":
        return {b.id for b in others if b.attributes["colour"] == colour}
    if template == "same_shape":
        return {b.id for b in others if b.attributes["shape"] == shape}
    if template == "dots_for_digit":
        return {b.id for b in others if text and text.isdigit() and b.attributes["parts"] == int(text)}
    if template == "digit_for_dots":
        return {b.id for b in others if parts and b.attributes["text"] == str(parts)}
    raise AssertionError(template)


def _unanchored(template, scene):
    """What the description could denote without knowing the anchor (any anchor, any value)."""
    if template == "dots_for_digit":
        return {b.id for b in scene if b.attributes["parts"]}
    if template == "digit_for_dots":
        return {b.id for b in scene if b.attributes["text"] and b.attributes["text"].isdigit()}
    return set().union(*(_relation(template, a, scene) for a in scene))


def _truth(final, inst, scene):
    colour, _, text, parts = _attrs(inst)
    if final == "colour_count":
        return sum(b.attributes["colour"] == colour for b in scene)
    return int(text) if final == "digit" else parts


# ---------------------------------------------------------------- scenes


def test_scenes_are_deterministic_and_match_their_annotations(tmp_path, scenes):
    again = render_scenes(str(tmp_path), N_SCENES, seed=7)
    for (p1, r1), (p2, r2) in zip(scenes, again):
        assert r1 == r2 and open(p1, "rb").read() == open(p2, "rb").read()
    assert render_scenes(str(tmp_path / "other"), 1, seed=8)[0][1] != scenes[0][1]
    coco = json.load(open(tmp_path / "annotations.json"))
    assert len(coco["images"]) == N_SCENES and coco["images"][0] == {"id": 1, "file_name": "scene_00000.png",
                                                                     "width": SIZE, "height": SIZE}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image = collections.defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    for k, (path, rec) in enumerate(again, 1):
        assert Image.open(path).size == (SIZE, SIZE) and 4 <= len(rec.instances) <= 8
        anns = by_image[k]
        assert [names[a["category_id"]] for a in anns] == [i.category for i in rec.instances]
        for ann, inst in zip(anns, rec.instances):
            x, y, w, h = ann["bbox"]
            assert (x, y, x + w, y + h) == pytest.approx(inst.box, abs=0.02)
            assert ann["area"] == pytest.approx(w * h, abs=0.1) and ann["iscrowd"] == 0
            assert ann["attributes"] == inst.attributes and inst.box_1000 == to_1000(inst.box, SIZE, SIZE)
            assert inst.attributes["colour"] in COLOURS
            assert (inst.attributes["text"] is None) != (inst.attributes["parts"] == 0)  # one mark each


def test_scene_objects_do_not_overlap_and_show_their_colour(scenes):
    for path, rec in scenes:
        image = Image.open(path).convert("RGB")
        for a in rec.instances:
            for b in rec.instances:
                if a.id < b.id:
                    ax0, ay0, ax1, ay1 = a.box
                    bx0, by0, bx1, by1 = b.box
                    assert bx1 <= ax0 or bx0 >= ax1 or by1 <= ay0 or by0 >= ay1, (path, a.id, b.id)
            # the shape fills much of its box in its colour, and its box holds no other shape's colour
            crop = image.crop(tuple(round(v) for v in a.box))
            share = sum(n for n, px in crop.getcolors(1 << 16) if px == COLOURS[a.attributes["colour"]]) / (
                crop.width * crop.height)
            assert 0.3 < share < 0.99, (path, a.id, share)
            others = {COLOURS[c] for c in COLOURS} - {COLOURS[a.attributes["colour"]]}
            assert not [px for _, px in crop.getcolors(1 << 16) if px in others], (path, a.id)


# ---------------------------------------------------------------- chains


def test_every_answer_is_the_scenes_ground_truth(chains):
    assert len(chains) >= 2 * N_SCENES
    finals = collections.Counter()
    for record, q in chains:
        p = q.provenance["queries"]
        scene = {i.id: i for i in record.instances}
        # walk the chain with this file's relations, from the anchor description alone
        start = [i.id for i in record.instances if _fits(i, p["anchor"])]
        assert start == [q.instances[0]], (q.id, p["anchor"])
        at = start[0]
        for link in p["links"]:
            assert link["from"] == at
            found = _relation(link["template"], scene[at], record.instances)
            assert found == {link["to"]}, (q.id, link, found)
            at = link["to"]
        assert at == q.instances[-1] == p["final_instance"]
        assert q.answer == str(_truth(p["final"], scene[at], record.instances)), q.id
        assert q.writer == "programmatic" and q.hops[-1].answer == q.answer
        finals[p["final"]] += 1
    assert set(finals) == {"digit", "dots", "colour_count"}


def test_every_hop_is_reachable_only_through_the_previous_ones(chains):
    for record, q in chains:
        p = q.provenance["queries"]
        assert 3 <= len(q.instances) <= 6 and len(set(q.instances)) == len(q.instances)
        assert sum(_fits(i, p["anchor"]) for i in record.instances) == 1
        for link in p["links"]:
            assert len(_unanchored(link["template"], record.instances)) >= 2, (q.id, link)
        levels = [h.level for h in q.hops]
        assert levels[0] == "single" and all(a != b for a, b in zip(levels, levels[1:])), levels
        assert len(q.hops) >= 5 and len(q.hops) == 2 * len(q.instances) - (p["final"] != "colour_count")
        used = {i for h in q.hops for i in h.instances}
        assert set(q.instances) <= used
        for h, nxt in zip(q.hops, q.hops[1:]):  # a link starts where the previous hop looked
            if nxt.level == "multi" and len(nxt.instances) == 2 and nxt is not q.hops[-1]:
                assert nxt.instances[0] == h.instances[-1]
        text = q.question.lower()
        assert not any(w in text for w in ("box", "coordinate", "pixel", "1000")), q.question


def test_intermediate_answers_are_the_attributes_read(chains):
    for record, q in chains:
        scene = {i.id: i for i in record.instances}
        for h in q.hops[:-1]:
            colour, shape, text, parts = _attrs(scene[h.instances[-1]])
            if h.level == "multi":
                assert h.answer == f"{colour} {shape}"
            elif "colour" in h.text:
                assert h.answer == colour
            elif "kind of shape" in h.text:
                assert h.answer == shape
            elif "digit" in h.text:
                assert h.answer == text
            else:
                assert "dots" in h.text and h.answer == str(parts)


def test_variants_name_their_instance_uniquely_and_keep_the_answer(chains):
    for record, q in chains:
        p = q.provenance["queries"]
        scene = {i.id: i for i in record.instances}
        last = [i.id for i in record.instances if _fits(i, p["variant_specs"]["last_hop"])]
        assert last == [q.instances[-1]], q.id
        assert q.answer == str(_truth(p["final"], scene[last[0]], record.instances))
        assert q.variants["last_hop"] != q.question and q.variants["last_hop"].rstrip("?").split()[-1] in q.question
        half = [i.id for i in record.instances if _fits(i, p["variant_specs"]["second_half"])]
        assert len(half) == 1 and half[0] in q.instances[1:], q.id
        # from the named instance, the chain's remaining links reach the same final instance
        at = half[0]
        for link in p["links"][q.instances.index(at):]:
            (at,) = _relation(link["template"], scene[at], record.instances)
        assert at == q.instances[-1]
        assert q.variants["second_half"].endswith(q.hops[-1].text) and len(q.variants["second_half"]) < len(q.question)


def test_descriptions_never_give_away_what_their_hop_reads(chains):
    for record, q in chains:
        p = q.provenance["queries"]
        reads = p["reads"]
        first = reads[0]
        assert not ({"colour": {"colour"}, "shape": {"shape"}}.get(first, {"text", "parts"}) & set(p["anchor"]))
        if p["final"] in ("digit", "dots"):
            assert not {"text", "parts"} & set(p["variant_specs"]["last_hop"])
        else:
            assert "colour" not in p["variant_specs"]["last_hop"]


def test_same_seed_same_chains_and_too_small_scenes_are_counted(scenes):
    record = scenes[0][1]
    a = write_chains(record, random.Random(1))
    b = write_chains(record, random.Random(1))
    assert a == b and len({q.id for q in a}) == len(a) <= 4
    dropped = collections.Counter()
    small = ImageRecord(image="x.png", width=10, height=10, instances=record.instances[:2])
    assert write_chains(small, random.Random(0), dropped=dropped) == [] and dropped == {"too_few_instances": 1}
    bare = [Instance(id=f"person-{k}", category="person", box=(k * 20.0, 0.0, k * 20 + 10.0, 10.0),
                     box_1000=(0, 0, 0, 0)) for k in range(4)]  # boxes only: no number to end on
    assert write_chains(ImageRecord("y.png", 100, 10, ["person"], bare), random.Random(0), dropped=dropped) == []
    assert dropped["no_chain"] == 1
    with pytest.raises(ValueError, match="min_instances"):
        write_chains(record, random.Random(0), min_instances=4, max_instances=3)
