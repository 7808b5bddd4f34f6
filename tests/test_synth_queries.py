"""Stage 3's VLM writer: combinations, the writer's request, and replies parsed or rejected by reason."""

import json
import random

import pytest
from PIL import Image

from rlvr.synth.queries import REJECTIONS, Rejection, combinations, low_level_cue, parse_query, writer_request
from rlvr.synth.records import ImageRecord, Instance, Query, to_1000


def _inst(id_, category, box, size=(200, 100)):
    return Instance(id=id_, category=category, box=box, box_1000=to_1000(box, *size))


MUG = _inst("mug-1", "mug", (10, 10, 50, 50))  # box_1000 (50, 100, 250, 500)
SIGN = _inst("sign-1", "sign", (60, 10, 100, 40))
BOOK = _inst("book-1", "book", (120, 50, 180, 90))
CAT = _inst("cat-1", "cat", (0, 60, 40, 100))
RECORD = ImageRecord(image="kitchen.png", width=200, height=100, categories=["mug", "sign", "book", "cat"],
                     instances=[MUG, SIGN, BOOK, CAT])
COMBO = [MUG, SIGN, BOOK]


def _reply(**changes):
    obj = {
        "question": "Read the number on the sign above the mug; how many books are right of that sign, "
                    "plus the number of stripes on the book that is furthest right?",
        "hops": [
            {"text": "Which sign is above the mug?", "instances": ["mug-1", "sign-1"], "level": "multi", "answer": "the left sign"},
            {"text": "What number is on that sign?", "instances": ["sign-1"], "level": "single", "answer": "4"},
            {"text": "Which book is furthest right of the sign?", "instances": ["sign-1", "book-1"], "level": "multi"},
            {"text": "How many stripes does it have?", "instances": ["book-1"], "level": "single", "answer": 3},
        ],
        "answer": "7",
        "last_hop_question": "How many stripes does the rightmost book have, plus 4?",
        "second_half_question": "How many stripes does the book furthest right of the sign showing 4 have, plus 4?",
    }
    obj.update(changes)
    return obj


def _parse(text):
    return parse_query(text, RECORD, COMBO, "kitchen-q0", "vlm:test")


def test_a_fenced_reply_with_text_around_it_parses_into_a_query():
    text = "Sure! Here is the query:\n```json\n" + json.dumps(_reply(), indent=1) + "\n```\nHope this helps {:)}"
    q = _parse(text)
    assert isinstance(q, Query), q
    assert (q.id, q.image, q.answer, q.writer) == ("kitchen-q0", "kitchen.png", "7", "vlm:test")
    assert q.instances == ["mug-1", "sign-1", "book-1"]
    assert [h.level for h in q.hops] == ["multi", "single", "multi", "single"]
    assert [h.answer for h in q.hops] == ["the left sign", "4", None, "3"]
    assert q.hops[0].instances == ["mug-1", "sign-1"]
    assert q.variants == {"last_hop": _reply()["last_hop_question"], "second_half": _reply()["second_half_question"]}


def test_an_unfenced_object_after_a_braced_aside_parses_and_numbers_and_variants_are_optional():
    obj = _reply(answer=2.5)
    del obj["last_hop_question"]
    # an example object before the reply's own: the one with a "question" is taken
    q = _parse('Thinking {briefly}, format {"hops": []}. ' + json.dumps(obj) + " Done.")
    assert isinstance(q, Query), q
    assert q.answer == "2.5" and q.variants == {"second_half": obj["second_half_question"]}


def _hops(levels_ids):
    return [{"text": f"hop {i}", "instances": ids, "level": level} for i, (level, ids) in enumerate(levels_ids)]


@pytest.mark.parametrize("text, reason", [
    (None, "unparseable"),
    ("I cannot write a question for this image.", "unparseable"),
    ("```json\n{\"question\": \"x\", \"hops\": [\n```", "unparseable"),
    (json.dumps(_reply(question="")), "missing_field"),
    (json.dumps({k: v for k, v in _reply().items() if k != "hops"}), "missing_field"),
    (json.dumps(_reply(answer=None)), "missing_field"),
    (json.dumps(_reply(answer=True)), "missing_field"),
    (json.dumps(_reply(hops="first the mug, then the sign")), "missing_field"),
    (json.dumps(_reply(hops=_hops([("single", ["mug-1"]), ("multi", []), ("single", ["book-1"])]))), "missing_field"),
    (json.dumps(_reply(hops=_hops([("single", ["mug-1"]), ("both", ["sign-1"]), ("single", ["book-1"])]))), "missing_field"),
    (json.dumps(_reply(hops=_reply()["hops"][:2])), "too_few_hops"),
    (json.dumps(_reply(answer="seven")), "answer_not_a_number"),
    (json.dumps(_reply(answer="3 or 4")), "answer_not_a_number"),
    (json.dumps(_reply(answer="x + 1")), "answer_not_a_number"),
    (json.dumps(_reply(hops=_hops([("single", ["mug-1"]), ("multi", ["sign-1", "cat-1"]), ("single", ["book-1"])]))),
     "unknown_instance"),
    (json.dumps(_reply(hops=_hops([("single", ["mug-1"]), ("multi", ["sign-1", "mug-1"]), ("single", ["sign-1"])]))),
     "unused_instance"),
    (json.dumps(_reply(question="How many books are right of the red box around the mug?")), "low_level_cue"),
    (json.dumps(_reply(hops=_hops([("single", ["mug-1"]), ("multi", ["sign-1", "mug-1"]), ("multi", ["book-1"])]))),
     "level_not_alternating"),
])
def test_every_rejection_reason(text, reason):
    result = _parse(text)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.reason in REJECTIONS and result.detail


def test_the_answer_rule_is_the_gold_rule():
    # accepted by rlvr.rewards.parse_gold, so accepted here: fractions, thousands separators, percent
    for answer in ("3/4", "7,425", "50%", "\\frac{1}{2}"):
        assert isinstance(_parse(json.dumps(_reply(answer=answer))), Query), answer


def test_alternation_can_be_switched_off():
    text = json.dumps(_reply(hops=_hops([("single", ["mug-1"]), ("multi", ["sign-1", "mug-1"]), ("multi", ["book-1"])])))
    assert isinstance(parse_query(text, RECORD, COMBO, "q", "vlm:test", require_alternation=False), Query)


@pytest.mark.parametrize("text, cue", [
    ("the mug inside the green bounding box", True),
    ("the object in the bbox", True),
    ("the mug at coordinates near the top", True),
    ("the sign 40 pixels right of the mug", True),
    ("in the cropped image of the mug", True),
    ("the highlighted region on the left", True),
    ("the object at (120, 340)", True),
    ("the book in [600, 500, 900, 900]", True),
    ("the object at x=120", True),
    ("what number is on mug-1?", True),
    ("the blue outline around the cat", True),
    ("the red boxes on the table", True),
    ("what number is on the mug?", False),
    ("how many of the 3 books are right of the cat?", False),
    ("the sign reading 250 above the 1000 ml jug", False),
    ("the white mug left of the black cat", False),
    ("the crops in the field", False),
])
def test_low_level_cue_rule(text, cue):
    assert (low_level_cue(text, COMBO) is not None) is cue, low_level_cue(text, COMBO)


def test_a_coloured_box_is_fine_when_a_combination_instance_is_a_box():
    box = _inst("box-1", "cardboard box", (20, 20, 60, 60))
    assert low_level_cue("the red box left of the mug", [MUG, box]) is None
    assert low_level_cue("the red box left of the mug", [MUG, SIGN]) is not None
    assert low_level_cue("the red boxes left of the mug", [MUG, box]) is None


def test_combinations_by_hand():
    a, b, c, d, e, f = (_inst(f"o-{i}", "o", (i, i, i + 1, i + 1)) for i in range(6))
    assert combinations([a, b], rng=random.Random(0)) == []
    # 3 instances: one combination of 3, however many are asked for
    assert combinations([a, b, c], per_image=4, rng=random.Random(0)) == [[a, b, c]]
    # 4 instances: C(4,3) + C(4,4) = 5 combinations exist; asking for 10 gives all 5, sizes 3, 4, 3, 3, 3
    five = combinations([a, b, c, d], per_image=10, rng=random.Random(1))
    assert [len(x) for x in five] == [3, 4, 3, 3, 3]
    assert len({frozenset(i.id for i in x) for x in five}) == 5
    # 6 instances, 4 asked: one of each size 3..6, each in the instances' order
    four = combinations([a, b, c, d, e, f], per_image=4, rng=random.Random(2))
    assert [len(x) for x in four] == [3, 4, 5, 6]
    assert all(x == sorted(x, key=[a, b, c, d, e, f].index) for x in four)
    assert four[3] == [a, b, c, d, e, f]
    # max_k and min_k bound the sizes; the same seed gives the same combinations
    assert [len(x) for x in combinations([a, b, c, d, e, f], min_k=4, max_k=5, per_image=5, rng=random.Random(3))] == [4, 5, 4, 5, 4]
    assert combinations([a, b, c, d, e, f], per_image=8, rng=random.Random(7)) == \
        combinations([a, b, c, d, e, f], per_image=8, rng=random.Random(7))
    with pytest.raises(ValueError, match="min_k"):
        combinations([a, b, c], min_k=4, max_k=3)


def test_writer_request_shows_the_image_each_crop_and_its_0_1000_box():
    image = Image.new("RGB", (200, 100), "white")
    req = writer_request(image, RECORD, COMBO, temperature=0.5, seed=3)
    assert (req.n, req.temperature, req.seed) == (1, 0.5, 3)
    system, user = req.messages
    rules = system["content"][0]["text"]
    for phrase in ("can only be identified through", "alternate", "single", "multi", "Every instance",
                   "Unambiguous", "Never mention the boxes", "one specific number", "last_hop_question",
                   "second_half_question"):
        assert phrase in rules, phrase
    images = [p["image"] for p in user["content"] if p["type"] == "image"]
    assert images[0] is image and [im.size for im in images[1:]] == [(40, 40), (40, 30), (60, 40)]
    texts = " ".join(p["text"] for p in user["content"] if p["type"] == "text")
    assert "id mug-1: a mug, box [50, 100, 250, 500]" in texts
    assert "id book-1: a book, box [600, 500, 900, 900]" in texts
    sliver = _inst("pen-1", "pen", (70.2, 20.4, 70.4, 20.6))
    assert writer_request(image, RECORD, [sliver]).messages[1]["content"][4]["image"].size == (1, 1)
    given = writer_request("kitchen.png", RECORD, COMBO, crops=["c1.png", "c2.png", "c3.png"])
    assert [p["image"] for p in given.messages[1]["content"] if p["type"] == "image"] == ["kitchen.png", "c1.png", "c2.png", "c3.png"]
    with pytest.raises(ValueError, match="2 crops for 3 instances"):
        writer_request(image, RECORD, COMBO, crops=["c1.png", "c2.png"])


def test_a_writer_round_through_the_scripted_client():
    from rlvr.synth.client import ScriptedClient

    image = Image.new("RGB", (200, 100), "white")
    combos = combinations(RECORD.instances, per_image=2, rng=random.Random(0))
    client = ScriptedClient(["```json\n" + json.dumps(_reply()) + "\n```", "no JSON today"])
    replies = client.complete([writer_request(image, RECORD, combo) for combo in combos])
    assert client.failures == {}  # the requests are well-formed for every backend (chat.normalise)
    results = [parse_query(r[0], RECORD, COMBO, f"kitchen-q{i}", "vlm:scripted") for i, r in enumerate(replies)]
    assert isinstance(results[0], Query) and results[1] == Rejection("unparseable", "no JSON object in the reply 'no JSON today'")


def test_a_fenced_block_wins_over_an_object_in_the_surrounding_text():
    text = 'The format was {"question": "...", "hops": []}; mine:\n```json\n' + json.dumps(_reply()) + "\n```"
    assert isinstance(_parse(text), Query)


def test_cues_count_in_the_question_and_its_variants_not_in_hop_texts():
    hops = _reply()["hops"]
    named = [{**hops[0], "text": "Which sign (sign-1) is above mug-1?"}, *hops[1:]]
    assert isinstance(_parse(json.dumps(_reply(hops=named))), Query)
    cued = _parse(json.dumps(_reply(second_half_question="How many stripes does book-1 have?")))
    assert isinstance(cued, Rejection) and cued.reason == "low_level_cue" and "book-1" in cued.detail
