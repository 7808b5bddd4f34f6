"""The programmatic query writer: verified multi-hop chains from known instances, no model needed.

    queries = write_chains(record, random.Random(0))   # list[Query], answers exact

A chain visits 3-6 instances i1 -> i2 -> ... -> ik. Its hops alternate the paper's two
perception levels:

- single (one object): i1 is found by a description that matches it alone in the whole
  scene, and one of its attributes is read (colour, shape, the digit written on it, its dots);
- multi (several objects): the next instance is found from the current one and what was
  just read: the nearest shape to its right/left in the same row, above/below in the same
  column; the other shape of that colour / that shape; the shape with as many dots as the
  digit read; the shape whose digit equals the dots counted;
- ... and so on; the final hop reads a number on ik (its digit or dots, single) or counts
  the shapes sharing ik's colour (multi). That number is the answer.

Every link is checked against the whole scene: given its anchor it matches exactly one
instance, not yet in the chain; without the anchor (any anchor or value) it would match
two or more, so the hop can only be resolved through the ones before it. Descriptions
never name what their hop reads, nor boxes or coordinates.

Variants of the same chain, same answer (the paper's ablation): ``last_hop`` (the final hop
alone, ik named by a unique description) and ``second_half`` (from the first single hop at or
after the middle on, its instance named directly). ``Query.provenance["queries"]`` keeps the
templates and the chain (anchor spec, each hop's template, instance and link source), so a
checker can recompute everything from the attributes.

Instances without attributes (COCO boxes) still chain spatially and by category; a chain
needs a final number, so such records mostly yield nothing (counted as ``no_chain``).
"""

from __future__ import annotations

import collections
import os
import random

from rlvr.synth.records import Hop, ImageRecord, Instance, Query

SPATIAL = ("right", "left", "above", "below")
# link template -> what the single hop before it reads (the value the link needs)
LINK_READS = {"same_colour": "colour", "same_shape": "shape", "dots_for_digit": "digit", "digit_for_dots": "dots",
              **{d: "checkpoint" for d in SPATIAL}}
READ_TEXT = {"colour": "Note its colour.", "shape": "Note what kind of {noun} it is.",
             "digit": "Read the digit written on it.", "dots": "Count the dots on it."}
LINK_TEXT = {"right": "Then find the nearest {noun} to its right in the same row.",
             "left": "Then find the nearest {noun} to its left in the same row.",
             "above": "Then find the nearest {noun} above it in the same column.",
             "below": "Then find the nearest {noun} below it in the same column.",
             "same_colour": "Then find the other {noun} of that colour.",
             "same_shape": "Then find the other {noun} of the same kind.",
             "dots_for_digit": "Then find the {noun} with exactly that many dots.",
             "digit_for_dots": "Then find the {noun} with that number written on it as a digit."}
FINAL_TEXT = {"digit": "What digit is written on it?", "dots": "How many dots does it have?",
              "colour_count": "How many {noun}s in the image have that colour, itself included?"}
# what a description must not name, per thing read (else it gives the read away)
AVOID = {"colour": {"colour"}, "shape": {"shape"}, "digit": {"text", "parts"}, "dots": {"text", "parts"},
         "colour_count": {"colour"}}


def colour(inst: Instance) -> str | None:
    return inst.attributes.get("colour")


def shape(inst: Instance) -> str:
    return inst.attributes.get("shape", inst.category)


def digit(inst: Instance) -> int | None:
    text = inst.attributes.get("text")
    return int(text) if isinstance(text, str) and len(text) == 1 and text.isdigit() else None


def dots(inst: Instance) -> int:
    return int(inst.attributes.get("parts") or 0)


def _spatial(direction: str, x: Instance, instances: list[Instance]) -> list[Instance]:
    """The nearest instances in ``direction`` whose boxes share x's row (column); ties all returned."""
    x0, y0, x1, y1 = x.box
    found = []
    for y in instances:
        b0, c0, b1, c1 = y.box
        if y is x:
            continue
        if direction in ("left", "right"):
            aligned, gap = min(y1, c1) - max(y0, c0) > 0, (b0 - x1 if direction == "right" else x0 - b1)
        else:
            aligned, gap = min(x1, b1) - max(x0, b0) > 0, (c0 - y1 if direction == "below" else y0 - c1)
        if aligned and gap > 0:
            found.append((gap, y))
    return [y for gap, y in found if gap == min(g for g, _ in found)]


def link_candidates(template: str, x: Instance, instances: list[Instance]) -> list[Instance]:
    """What the link's description matches given its anchor ``x`` (and the value read on x)."""
    if template in SPATIAL:
        return _spatial(template, x, instances)
    others = [y for y in instances if y is not x]
    if template == "same_colour":
        return [y for y in others if colour(x) is not None and colour(y) == colour(x)]
    if template == "same_shape":
        return [y for y in others if shape(y) == shape(x)]
    if template == "dots_for_digit":
        return [y for y in others if digit(x) and dots(y) == digit(x)]
    if template == "digit_for_dots":
        return [y for y in others if dots(x) and digit(y) == dots(x)]
    raise ValueError(f"unknown link template {template!r}")


def without_anchor(template: str, instances: list[Instance]) -> set[str]:
    """Ids the link's description could denote for an unknown anchor: any anchor of the scene."""
    return {y.id for a in instances for y in link_candidates(template, a, instances)}


def _specs(inst: Instance) -> list[dict]:
    """Attribute constraints that could name ``inst``, most natural first."""
    specs = []
    text = inst.attributes.get("text")
    if isinstance(text, str) and not text.isdigit():
        specs.append({"text": text})
    if colour(inst) is not None:
        specs += [{"colour": colour(inst), "shape": shape(inst)}, {"colour": colour(inst)}]
    specs.append({"shape": shape(inst)})
    if digit(inst) is not None:
        specs.append({"text": str(digit(inst))})
    if dots(inst):
        specs.append({"parts": dots(inst)})
    return specs


def matches(inst: Instance, spec: dict) -> bool:
    values = {"colour": colour(inst), "shape": shape(inst), "text": inst.attributes.get("text"), "parts": dots(inst)}
    return all(values[k] == v for k, v in spec.items())


def spec_text(spec: dict, noun: str) -> str:
    if "text" in spec:
        what = f"the digit {spec['text']}" if spec["text"].isdigit() else f'the word "{spec["text"]}"'
        return f"the {noun} with {what} written on it"
    if "parts" in spec:
        return f"the {noun} with exactly {spec['parts']} dot{'s' if spec['parts'] != 1 else ''}"
    if "colour" in spec and "shape" in spec:
        return f"the {spec['colour']} {spec['shape']}"
    if "shape" in spec:
        return f"the only {spec['shape']}"
    return f"the only {spec['colour']} {noun}"


def describe(inst: Instance, instances: list[Instance], avoid: set[str], rng: random.Random) -> dict | None:
    """A spec matching ``inst`` alone in the scene and naming none of ``avoid``; None if there is none."""
    fits = [s for s in _specs(inst) if not avoid & set(s) and sum(matches(y, s) for y in instances) == 1]
    return rng.choice(fits[:2]) if fits else None  # one of the two most natural


def _finals(x: Instance, instances: list[Instance]) -> list[str]:
    out = [name for name, ok in (("digit", digit(x) is not None), ("dots", dots(x) > 0)) if ok]
    if colour(x) is not None and sum(colour(y) == colour(x) for y in instances) >= 2:
        out.append("colour_count")
    return out


def final_answer(final: str, x: Instance, instances: list[Instance]) -> int:
    if final == "colour_count":
        return sum(colour(y) == colour(x) for y in instances)
    return digit(x) if final == "digit" else dots(x)  # type: ignore[return-value]


def _walk(record: ImageRecord, k: int, rng: random.Random) -> tuple[list[Instance], list[str]] | None:
    """k distinct instances linked by templates whose links are unique and anchor-dependent."""
    insts = record.instances
    dependent = [t for t in LINK_READS if len(without_anchor(t, insts)) >= 2]
    chain, links = [rng.choice(insts)], []
    while len(chain) < k:
        options = []
        for t in dependent:
            found = link_candidates(t, chain[-1], insts)
            if len(found) == 1 and found[0] not in chain:
                options.append((t, found[0]))
        if not options:
            return None
        by_value = [o for o in options if o[0] not in SPATIAL]  # value links read more: prefer them
        t, y = rng.choice(by_value if by_value and rng.random() < 0.6 else options)
        links.append(t)
        chain.append(y)
    return chain, links


def _hops(chain: list[Instance], links: list[str], reads: list[str], final: str, anchor_text: str,
          insts: list[Instance], noun: str) -> list[Hop]:
    """The chain as hops: single (read), multi (link), ..., the final hop."""
    def read_answer(read: str, x: Instance) -> str:
        return {"colour": colour(x), "shape": shape(x), "digit": str(digit(x)), "dots": str(dots(x))}[read]

    hops = []
    for j, x in enumerate(chain):
        if j:
            prev = chain[j - 1]
            hops.append(Hop(LINK_TEXT[links[j - 1]].format(noun=noun), [prev.id, x.id], "multi",
                            f"{colour(x) + ' ' if colour(x) else ''}{shape(x)}"))
        lead = f"Find {anchor_text}. " if j == 0 else ""
        if j < len(chain) - 1 or final == "colour_count":
            read = reads[j] if j < len(chain) - 1 else "colour"
            hops.append(Hop(lead + READ_TEXT[read].format(noun=noun), [x.id], "single", read_answer(read, x)))
    x = chain[-1]
    answer = str(final_answer(final, x, insts))
    if final == "colour_count":
        same = [y.id for y in insts if colour(y) == colour(x)]
        hops.append(Hop(FINAL_TEXT[final].format(noun=noun), [x.id] + [i for i in same if i != x.id], "multi", answer))
    else:
        lead = f"Find {anchor_text}. " if len(chain) == 1 else ""
        hops.append(Hop(lead + FINAL_TEXT[final], [x.id], "single", answer))
    return hops


def _variants(chain, hops, reads, final, insts, noun, rng) -> tuple[dict[str, str], dict[str, dict]] | None:
    """The last-hop and second-half questions, their instances named directly; None if one cannot be named."""
    x = chain[-1]
    spec = describe(x, insts, AVOID[final], rng)
    if spec is None:
        return None
    if final == "colour_count":
        last = f"How many {noun}s in the image have the same colour as {spec_text(spec, noun)}, itself included?"
    else:
        last = f"Find {spec_text(spec, noun)}. {FINAL_TEXT[final]}"
    start = next(i for i in range(len(hops) // 2, len(hops)) if hops[i].level == "single")
    y = next(c for c in chain if c.id == hops[start].instances[0])
    read = reads[chain.index(y)] if y is not chain[-1] else ("colour" if final == "colour_count" else final)
    half_spec = describe(y, insts, AVOID[read], rng)
    if half_spec is None:
        return None
    half = " ".join([f"Find {spec_text(half_spec, noun)}. {hops[start].text}"] + [h.text for h in hops[start + 1:]])
    return {"last_hop": last, "second_half": half}, {"last_hop": spec, "second_half": half_spec}


def _query(record: ImageRecord, chain: list[Instance], links: list[str], rng: random.Random, qid: str) -> Query | None:
    insts = record.instances
    noun = "shape" if all("shape" in i.attributes for i in insts) else "object"
    finals = _finals(chain[-1], insts)
    if not finals:
        return None
    final = rng.choice(finals)
    reads = [LINK_READS[t] if LINK_READS[t] != "checkpoint" else rng.choice(("colour", "shape") if colour(x) else ("shape",))
             for t, x in zip(links, chain)]
    first_read = reads[0] if reads else ("colour" if final == "colour_count" else final)
    anchor = describe(chain[0], insts, AVOID[first_read], rng)
    if anchor is None:
        return None
    hops = _hops(chain, links, reads, final, spec_text(anchor, noun), insts, noun)
    named = _variants(chain, hops, reads, final, insts, noun, rng)
    if named is None:
        return None
    variants, specs = named
    templates = [f"anchor:{'+'.join(sorted(anchor))}"] + [f"read:{r}" for r in reads] + \
                [f"link:{t}" for t in links] + [f"final:{final}"]
    provenance = {"queries": {"writer": "programmatic", "templates": templates, "anchor": anchor,
                              "links": [{"template": t, "from": a.id, "to": b.id} for t, a, b in zip(links, chain, chain[1:])],
                              "reads": reads, "final": final, "final_instance": chain[-1].id, "variant_specs": specs}}
    return Query(id=qid, image=record.image, question=" ".join(h.text for h in hops), answer=hops[-1].answer or "",
                 hops=hops, instances=[c.id for c in chain], writer="programmatic", variants=variants,
                 provenance=provenance)


def write_chains(record: ImageRecord, rng: random.Random, min_instances: int = 3, max_instances: int = 6,
                 max_queries: int = 4, dropped: collections.Counter | None = None) -> list[Query]:
    """Up to ``max_queries`` distinct chains over ``min_instances``..``max_instances`` instances of ``record``.

    ``dropped`` (if given) counts images that yield nothing: ``too_few_instances``, ``no_chain``.
    Query ids are ``<image path without extension, / as _>-p<k>``.
    """
    if min_instances < 2 or max_instances < min_instances:
        raise ValueError(f"write_chains: need 2 <= min_instances <= max_instances, got {min_instances}, {max_instances}")
    dropped = dropped if dropped is not None else collections.Counter()
    if len(record.instances) < min_instances:
        dropped["too_few_instances"] += 1
        return []
    stem = os.path.splitext(record.image)[0].replace("/", "_").replace("\\", "_")
    queries: list[Query] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(50 * max_queries):
        if len(queries) >= max_queries:
            break
        walk = _walk(record, rng.randint(min_instances, min(max_instances, len(record.instances))), rng)
        if walk is None or tuple(c.id for c in walk[0]) in seen:
            continue
        seen.add(tuple(c.id for c in walk[0]))
        query = _query(record, walk[0], walk[1], rng, f"{stem}-p{len(queries)}")
        if query is not None:
            queries.append(query)
    if not queries:
        dropped["no_chain"] += 1
    return queries
