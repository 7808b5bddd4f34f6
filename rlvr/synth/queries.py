"""Stage 3 with a VLM writer: combinations of instances, the writer's prompt, and its reply parsed or rejected.

    combos = combinations(record.instances, per_image=4, rng=random.Random(seed))
    requests = [writer_request(image, record, combo) for combo in combos]
    replies = client.complete(requests)                       # rlvr.synth.client
    results = [parse_query(r[0], record, combo, f"{image_id}-q{i}", "vlm:<model>") for ...]
    # each a Query, or a Rejection(reason, detail) counted by reason

The prompt states HopChain's rules (see WRITER_RULES). ``parse_query`` rejects, by reason
(REJECTIONS): a reply with no JSON object (unparseable), a required field missing or of the
wrong type (missing_field), fewer than 3 hops (too_few_hops), a final answer rlvr's gold parser
refuses (answer_not_a_number: the rule training applies to golds), a hop naming an instance
outside the combination (unknown_instance), a combination instance no hop names
(unused_instance), a question or variant that points at the prompt's drawing aids instead
of the objects (low_level_cue: ``low_level_cue`` gives the exact rule; hop texts are metadata
and not checked), and two consecutive hops at the same
perception level (level_not_alternating).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from rlvr.rewards.gold import GoldParseError, parse_gold
from rlvr.synth.client import ChatRequest
from rlvr.synth.records import Hop, ImageRecord, Instance, Query

REJECTIONS = ("unparseable", "missing_field", "too_few_hops", "answer_not_a_number", "unknown_instance",
              "unused_instance", "low_level_cue", "level_not_alternating")
MIN_HOPS = 3
_ENUMERATE_LIMIT = 5000  # up to this many combinations of one size, draw from the full list (exact, no retries)


@dataclass(frozen=True)
class Rejection:
    """Why a writer's reply did not become a Query: ``reason`` (one of REJECTIONS) and a sentence."""

    reason: str
    detail: str


# -- combinations --------------------------------------------------------------------------
def combinations(instances: Sequence[Instance], min_k: int = 3, max_k: int = 6, per_image: int = 4,
                 rng: random.Random | None = None) -> list[list[Instance]]:
    """Up to ``per_image`` distinct combinations of ``min_k``..``max_k`` instances.

    Sizes take turns (3, 4, 5, 6, 3, ...; only sizes the image has instances for), so the
    chains spread over lengths; a size whose combinations are all taken drops out. Each
    combination keeps the instances' order in ``instances``; no two are the same set. The same
    ``rng`` state gives the same combinations. Fewer than ``min_k`` instances: none.
    """
    if not 1 <= min_k <= max_k:
        raise ValueError(f"combinations need 1 <= min_k <= max_k; got min_k={min_k}, max_k={max_k}")
    rng = rng if rng is not None else random.Random(0)
    n = len(instances)
    sizes = list(range(min_k, min(max_k, n) + 1))
    taken: set[frozenset[int]] = set()
    out: list[list[Instance]] = []
    turn = 0
    while sizes and len(out) < per_image:
        k = sizes[turn % len(sizes)]
        pick = _new_combination(n, k, taken, rng)
        if pick is None:  # every combination of this size is taken
            sizes.remove(k)
            continue
        taken.add(frozenset(pick))
        out.append([instances[i] for i in sorted(pick)])
        turn += 1
    return out


def _new_combination(n: int, k: int, taken: set[frozenset[int]], rng: random.Random) -> tuple[int, ...] | None:
    """A k-subset of range(n) not in ``taken``, drawn uniformly; None when there is none left."""
    if math.comb(n, k) <= _ENUMERATE_LIMIT:
        free = [c for c in itertools.combinations(range(n), k) if frozenset(c) not in taken]
        return rng.choice(free) if free else None
    for _ in range(100):  # collisions are rare among more than 5000 combinations
        pick = tuple(sorted(rng.sample(range(n), k)))
        if frozenset(pick) not in taken:
            return pick
    return None


# -- the writer's prompt -------------------------------------------------------------------
WRITER_RULES = """\
You write one multi-hop question about an image for training a vision-language model. The question must be \
answerable only by looking at the image several times, and its answer must be one specific number.

Rules:
1. Chain of instances. The question is a chain of hops. Each hop involves one or more of the instances listed \
below, and the instance a hop is about can only be identified through the answers of the hops before it (for \
example: "the object directly left of the mug with the word on it" only works after the mug's word is read). \
No hop may be answerable without the hops before it, except the first.
2. Alternating perception levels. Hops alternate between single-object perception ("single": read the text on \
one object, tell its colour, count its parts) and multi-object perception ("multi": the spatial relation between \
objects, a comparison of sizes or positions, a count over several objects). No two consecutive hops have the \
same level. Write at least 3 hops.
3. Every instance listed below is used by at least one hop, and a hop names only instances from this list.
4. Unambiguous wording: each description picks out exactly one object in the image, and the question has \
exactly one correct answer.
5. Describe objects only by what a person sees in the image. Never mention the boxes, their coordinates, the \
crops, pixels, or the instance ids given here; those are only to show you which objects are meant.
6. The final answer is one specific number (an integer, a decimal, or a fraction), with no units or words.

Reply with one JSON object and nothing else, in exactly this form:
{"question": "the full multi-hop question, one self-contained text",
 "hops": [{"text": "what this hop asks", "instances": ["<instance id>", ...], "level": "single" or "multi",
           "answer": "this hop's answer"}, ...],
 "answer": "the final number",
 "last_hop_question": "the final hop alone, as a question that names its object directly",
 "second_half_question": "the question from the middle hop on, naming the object the first half leads to"}"""


def writer_request(image: Image.Image | str, record: ImageRecord, combo: Sequence[Instance],
                   crops: Sequence[Image.Image | str] | None = None, *, temperature: float = 0.7,
                   max_tokens: int = 2048, seed: int | None = None) -> ChatRequest:
    """The writer's request: the rules, the image, each instance's crop, category and 0-1000 box.

    ``crops``: one image (or path) per instance of ``combo``; by default each is cut from
    ``image`` with the instance's pixel box.
    """
    if crops is None:
        full = Image.open(image) if isinstance(image, str) else image
        crops = [full.crop(_pixel_box(inst.box)) for inst in combo]
    if len(crops) != len(combo):
        raise ValueError(f"writer_request: {len(crops)} crops for {len(combo)} instances of {record.image}")
    content: list[dict[str, Any]] = [
        {"type": "text", "text": f"The image ({record.width}x{record.height} pixels):"},
        {"type": "image", "image": image},
        {"type": "text", "text": f"The {len(combo)} instances to chain (boxes are x0, y0, x1, y1 in 0-1000 "
                                 "coordinates of the image's width and height), each with its crop:"},
    ]
    for inst, crop in zip(combo, crops):
        content.append({"type": "text", "text": f"- id {inst.id}: a {inst.category}, box {list(inst.box_1000)}"})
        content.append({"type": "image", "image": crop})
    content.append({"type": "text", "text": "Write the question now, as the JSON object described."})
    messages = [{"role": "system", "content": [{"type": "text", "text": WRITER_RULES}]},
                {"role": "user", "content": content}]
    return ChatRequest(messages=messages, n=1, temperature=temperature, max_tokens=max_tokens, seed=seed)


def _pixel_box(box: Sequence[float]) -> tuple[int, int, int, int]:
    """A crop box in whole pixels, at least 1x1 (a sliver of a box still shows something)."""
    x0, y0, x1, y1 = (round(v) for v in box)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


# -- parsing the reply ---------------------------------------------------------------------
_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def _json_object(text: str) -> dict | None:
    """The reply's JSON object: a fenced block's, else the first object in the text that
    has a "question" key, else the first object at all."""
    for block in _FENCE_RE.findall(text):
        try:
            obj = json.loads(block)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    decoder, first = json.JSONDecoder(), None
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            if "question" in obj:
                return obj
            first = first if first is not None else obj
    return first


def _answer_text(value: Any) -> str | None:
    """A JSON answer as text: strings stripped, numbers written out; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _hops(raw: Any) -> list[Hop] | Rejection:
    if not isinstance(raw, list):
        return Rejection("missing_field", f"'hops' is not a list (got {type(raw).__name__})")
    hops = []
    for i, h in enumerate(raw, 1):
        if not isinstance(h, dict):
            return Rejection("missing_field", f"hop {i} is not an object")
        text, ids, level = h.get("text"), h.get("instances"), h.get("level")
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(text, str) or not text.strip():
            return Rejection("missing_field", f"hop {i} has no 'text'")
        if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
            return Rejection("missing_field", f"hop {i}: 'instances' must be a non-empty list of instance ids")
        if not isinstance(level, str) or level.strip().lower() not in ("single", "multi"):
            return Rejection("missing_field", f"hop {i}: 'level' must be \"single\" or \"multi\", got {level!r:.40}")
        answer = h.get("answer")
        hops.append(Hop(text=text.strip(), instances=[x.strip() for x in ids], level=level.strip().lower(),
                        answer=None if answer is None else (_answer_text(answer) or str(answer))))
    return hops


def parse_query(text: str | None, record: ImageRecord, combo: Sequence[Instance], query_id: str,
                writer: str, *, require_alternation: bool = True) -> Query | Rejection:
    """The writer's reply as a Query, or the Rejection saying why not (reasons in REJECTIONS).

    A fenced ```json block and text around the object are fine. "question", "hops" (each with
    "text", "instances", "level") and "answer" are required; "last_hop_question" and
    "second_half_question" become the "last_hop" / "second_half" variants when present.
    """
    if not isinstance(text, str) or not text.strip():
        return Rejection("unparseable", "the writer returned no text")
    obj = _json_object(text)
    if obj is None:
        return Rejection("unparseable", f"no JSON object in the reply {text.strip()!r:.120}")
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        return Rejection("missing_field", "no 'question' text")
    if "hops" not in obj:
        return Rejection("missing_field", "no 'hops' list")
    answer = _answer_text(obj.get("answer"))
    if answer is None:
        return Rejection("missing_field", f"no 'answer' (got {obj.get('answer')!r:.40})")
    hops = _hops(obj["hops"])
    if isinstance(hops, Rejection):
        return hops
    if len(hops) < MIN_HOPS:
        return Rejection("too_few_hops", f"{len(hops)} hop(s); a chain needs at least {MIN_HOPS}")
    try:
        parse_gold(answer)
    except GoldParseError as e:
        return Rejection("answer_not_a_number", str(e))
    variants = {name: obj[key].strip() for name, key in (("last_hop", "last_hop_question"),
                                                         ("second_half", "second_half_question"))
                if isinstance(obj.get(key), str) and obj[key].strip()}
    rejection = _check_chain(hops, combo, require_alternation)
    # only the texts a model will be trained on; hop texts are metadata and may name ids
    rejection = rejection or _first_cue([question.strip(), *variants.values()], combo)
    if rejection is not None:
        return rejection
    return Query(id=query_id, image=record.image, question=question.strip(), answer=answer, hops=hops,
                 instances=[inst.id for inst in combo], writer=writer, variants=variants)


def _check_chain(hops: list[Hop], combo: Sequence[Instance], require_alternation: bool) -> Rejection | None:
    ids = [inst.id for inst in combo]
    for i, hop in enumerate(hops, 1):
        unknown = [x for x in hop.instances if x not in ids]
        if unknown:
            return Rejection("unknown_instance", f"hop {i} names {unknown}, not in the combination {ids}")
    used = {x for hop in hops for x in hop.instances}
    unused = [x for x in ids if x not in used]
    if unused:
        return Rejection("unused_instance", f"no hop uses {unused} of the combination {ids}")
    if require_alternation:
        for i in range(1, len(hops)):
            if hops[i].level == hops[i - 1].level:
                return Rejection("level_not_alternating",
                                 f"hops {i} and {i + 1} are both '{hops[i].level}'-object perception")
    return None


# -- low-level cues ------------------------------------------------------------------------
_COLOURS = "red|green|blue|yellow|orange|purple|pink|cyan|magenta|black|white|gr[ae]y|brown"
_DRAWN = "box|boxes|outline|outlines|border|borders|frame|frames|rectangle|rectangles|marker|markers"
_COLOURED_DRAWING_RE = re.compile(rf"\b(?:{_COLOURS})[- ](?:bounding[- ])?({_DRAWN})\b", re.IGNORECASE)
_CUE_RES = [
    (re.compile(r"\bbounding[- ]?box(es)?\b|\bbbox(es)?\b", re.IGNORECASE), "a bounding box"),
    (re.compile(r"\bcoordinates?\b|\bpixels?\b|\b0\s*[-\u2013]\s*1000\b", re.IGNORECASE), "coordinates or pixels"),
    (re.compile(r"\bcropped\b|\bcrops?\s+(?:image|shown|provided|given|above|below)\b"
                r"|\b(?:given|provided|highlighted|marked|annotated)\s+(?:crops?|regions?|boxes|box|instances?)\b",
                re.IGNORECASE), "the prompt's crops or marked regions"),
    (re.compile(r"\binstance\s+id\b|\bid\s+[\w-]+-\d+\b", re.IGNORECASE), "an instance id"),
    (re.compile(r"[\[(]\s*\d{1,4}\s*,\s*\d{1,4}\s*(?:,\s*\d{1,4}\s*,\s*\d{1,4}\s*)?[\])]"), "a coordinate tuple"),
    (re.compile(r"(?<![\w])[xy]\s*[=:]\s*\d", re.IGNORECASE), "an x/y coordinate"),
]


def low_level_cue(text: str, combo: Sequence[Instance]) -> str | None:
    """What in ``text`` points at the prompt's drawing aids rather than at the objects, or None.

    The rule, exactly: a cue is (1) "bounding box"/"bbox"; (2) "coordinate(s)", "pixel(s)",
    "0-1000"; (3) "cropped", "crop(s) image/shown/provided/given/above/below", or
    "given/provided/highlighted/marked/annotated crop/region/box/instance"; (4) "instance id"
    or "id <name>-<number>", and any of the combination's own ids ("cup-2") as a word;
    (5) a bracketed or parenthesised pair or quadruple of integers up to 4 digits ("(120, 340)",
    "[12, 40, 300, 560]"); (6) "x=", "y:" followed by a digit; (7) a colour followed by a drawn
    shape ("red box", "green outline", "blue bounding box"), unless that shape's word is part of
    a combination instance's category (a real "box" or "picture frame" may have a colour).
    """
    for pattern, what in _CUE_RES:
        m = pattern.search(text)
        if m:
            return f"mentions {m.group(0)!r} ({what})"
    for inst in combo:
        if re.search(rf"(?<![\w-]){re.escape(inst.id)}(?![\w-])", text, re.IGNORECASE):
            return f"mentions the instance id {inst.id!r}"
    category_words = {w.lower() for inst in combo for w in re.findall(r"[A-Za-z]+", inst.category)}
    for m in _COLOURED_DRAWING_RE.finditer(text):
        noun = m.group(1).lower()
        singular = noun[:-2] if noun.endswith("xes") else noun.rstrip("s")
        if noun not in category_words and singular not in category_words:
            return f"mentions {m.group(0)!r} (a drawn box's colour; no instance in the combination is a {singular})"
    return None


def _first_cue(texts: list[str], combo: Sequence[Instance]) -> Rejection | None:
    for text in texts:
        cue = low_level_cue(text, combo)
        if cue:
            return Rejection("low_level_cue", f"{cue} in {text!r:.120}")
    return None
