"""What each stage does to one image, built from a ``SynthConfig``: the pipeline's ``Backends``.

    backends = build_backends(cfg, images_dir, out_dir)

Stage 1 (categories: the prompt and the name normalisation) is here; the other stages call
their modules: rlvr.synth.segment (SAM3, detector, COCO), programmatic / queries (writers),
verify (solvers, annotators, difficulty). Models and clients are built once, on first use,
so a resumed run whose stages are done loads none of them.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import random
import re

from rlvr.synth.config import ORACLE, ClientConfig, SynthConfig
from rlvr.synth.pipeline import Backends, Skip, SynthError

CATEGORY_PROMPT = (
    "List the categories of the distinct physical objects visible in this image, most prominent first. "
    "Name each category once, as a short lowercase noun (e.g. \"cup\", \"traffic light\"), without counts, "
    "colours or positions. Answer with a JSON list of strings and nothing else."
)
_ARTICLES = re.compile(r"^(?:a|an|the|some|\d+)\s+")


def parse_categories(text: str, limit: int = 20) -> list[str]:
    """A VLM's category list (JSON list, or one per line / comma-separated) -> normalised unique names.

    No articles or counts in front ("2 dogs" -> "dog"), then rlvr.synth.segment's
    normalize_category (lower case, single spaces, the last word singular), so stage 1 names
    categories the way stage 2 and COCO files do; first mention wins.
    """
    from rlvr.synth.segment import normalize_category

    found = re.search(r"\[.*\]", text, flags=re.S)
    try:
        items = json.loads(found.group(0)) if found else None
    except ValueError:
        items = None
    if not isinstance(items, list):
        items = re.split(r"[\n,;]", text)
    names = []
    for item in items:
        name = re.sub(r"[^a-z0-9 \-]", " ", str(item).lower())
        name = normalize_category(_ARTICLES.sub("", re.sub(r"\s+", " ", name).strip()).strip(" -"))
        if name and len(name) <= 40 and name not in names:
            names.append(name)
    return names[:limit]


class _Oracle:
    """A scripted solver that answers each query with its writer's answer: stage 4 plumbed without a model."""

    def __init__(self):
        self.known: dict[str, str] = {}  # question text -> answer, filled before each call

    def __call__(self, request) -> list[str]:
        text = " ".join(part.get("text", "") for m in request.messages for part in _parts(m))
        answer = next((a for q, a in self.known.items() if q in text), "unknown")
        return [f"\\boxed{{{answer}}}"] * request.n


def _parts(message: dict) -> list[dict]:
    content = message.get("content", "")
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def make_client(cc: ClientConfig, oracle: _Oracle | None = None):
    """The VLM client a ``clients`` entry describes (rlvr.synth.client)."""
    from rlvr.synth import client

    if cc.backend == "openai":
        api_key = None
        if cc.api_key_env:
            api_key = os.environ.get(cc.api_key_env)
            if not api_key:
                raise SynthError(f"clients[{cc.name}].api_key_env={cc.api_key_env}: that environment variable is "
                                 "not set; export it (the key never goes in the recipe).")
        return client.OpenAIClient(cc.base_url, cc.model, api_key=api_key, concurrency=cc.concurrency,
                                   retries=cc.retries, timeout_s=cc.timeout_s, cache_dir=cc.cache_dir)
    if cc.backend == "engine":
        return client.EngineClient(cc.model, engine=cc.engine, seed=cc.seed, overrides=cc.overrides)
    if cc.script == ORACLE:
        return client.ScriptedClient(oracle or _Oracle())
    try:
        with open(cc.script, encoding="utf-8") as f:
            replies = json.load(f)
    except (OSError, ValueError) as e:
        raise SynthError(f"clients[{cc.name}].script={cc.script!r}: not 'oracle' and not a readable JSON list "
                         f"of replies ({e}).") from None
    return client.ScriptedClient(replies)


class _Clients:
    """The config's clients by name, each built on first use."""

    def __init__(self, cfg: SynthConfig):
        self.cfg, self.built, self.oracle = cfg, {}, _Oracle()

    def __getitem__(self, name: str):
        if name not in self.built:
            try:
                self.built[name] = make_client(self.cfg.client(name), self.oracle)
            except (OSError, ValueError) as e:  # a model folder that is not one, a bad URL
                raise SynthError(f"clients[{name}]: {e}") from None
        return self.built[name]


def _user(image, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def _categorize(cfg: SynthConfig, clients: _Clients, annotations, image, record) -> list[str]:
    if cfg.categories.backend == "annotations":
        return sorted({i.category for i in annotations(record.image).instances})
    from rlvr.synth.client import ChatRequest

    (texts,) = clients[cfg.categories.client].complete([ChatRequest(messages=_user(image, CATEGORY_PROMPT))])
    if not texts or texts[0] is None:
        raise Skip("categories_client_failed")
    return parse_categories(texts[0], cfg.categories.max_categories)


def _segment(cfg: SynthConfig, segmenter, annotations, out_dir: str, image, record, image_id: str) -> list:
    from rlvr.synth import segment

    ic = cfg.instances
    found = annotations(record.image).instances if ic.backend == "annotations" else \
        segmenter().segment(image, record.categories)
    found = [i for i in found if i.score >= ic.score_threshold]
    for inst in found:
        inst.crop = os.path.join("crops", image_id, f"{inst.id}.png")
        os.makedirs(os.path.dirname(os.path.join(out_dir, inst.crop)), exist_ok=True)
        segment.save_crop(image, inst, os.path.join(out_dir, inst.crop))
    return found


def _write(cfg: SynthConfig, clients: _Clients, image, record, image_id: str):
    qc, rng = cfg.queries, random.Random(f"{cfg.seed}:{image_id}")
    rejected: collections.Counter = collections.Counter()
    if qc.writer == "programmatic":
        from rlvr.synth.programmatic import write_chains

        queries = write_chains(record, rng, min_instances=qc.min_k, max_instances=qc.max_k,
                               max_queries=qc.per_image, dropped=rejected)
    else:
        from rlvr.synth import queries as vlm_writer

        combos = vlm_writer.combinations(record.instances, qc.min_k, qc.max_k, qc.per_image, rng)
        max_tokens = cfg.client(qc.client).max_tokens
        requests = [vlm_writer.writer_request(image, record, c, temperature=qc.temperature, max_tokens=max_tokens)
                    for c in combos]
        client = clients[qc.client]
        queries = []
        for k, (combo, texts) in enumerate(zip(combos, client.complete(requests))):
            if not texts or texts[0] is None:
                rejected["writer_failed"] += 1
                continue
            got = vlm_writer.parse_query(texts[0], record, combo, f"{image_id}-q{k}", f"vlm:{client.name}")
            if isinstance(got, vlm_writer.Rejection):
                rejected[got.reason] += 1
            else:
                queries.append(got)
    for k, q in enumerate(queries):
        q.id, q.image = f"{image_id}-q{k}", record.image
        q.provenance.setdefault("queries", {"writer": q.writer, "seed": cfg.seed})
    return queries, rejected


def _verify(cfg: SynthConfig, clients: _Clients, verifier, humans, images_dir: str, image, record, queries):
    """K solvers (and/or annotators' answers) must all agree with the writer; then the difficulty filter."""
    from rlvr.synth import verify

    vc, dc, dropped = cfg.verify, cfg.difficulty, collections.Counter()
    kept = list(queries)
    clients.oracle.known.update({q.question: q.answer for q in queries})
    if vc.enabled:
        answers = {q.id: list(humans().get(q.id) or []) for q in queries}
        if vc.client:
            solved = verify.solve(queries, clients[vc.client], samples=vc.k, temperature=vc.temperature,
                                  images_dir=images_dir, max_tokens=cfg.client(vc.client).max_tokens)
            for qid, replies in solved.items():
                answers[qid] += replies
        kept, lost = verify.keep_unanimous(queries, answers, verifier())
        dropped.update(reason for _, reason in lost)
    if dc.enabled and kept:
        kept, lost = verify.difficulty_filter(kept, clients[dc.client], dc.n, verifier(), temperature=dc.temperature,
                                              images_dir=images_dir, max_tokens=cfg.client(dc.client).max_tokens)
        dropped.update(reason for _, reason in lost)
    return kept, dropped


def attach_attributes(records: dict, annotations_json: str) -> dict:
    """Give each instance the ``attributes`` object of its COCO row (matched by image, category, box).

    Not COCO proper: the renderer's JSON (and any dataset with known facts per object) carries
    one per annotation, and the programmatic writer needs them. Instances that have attributes
    already, or whose row has none, are left as they are.
    """
    with open(annotations_json, encoding="utf-8") as f:
        data = json.load(f)
    files = {row.get("id"): row.get("file_name") for row in data.get("images", []) if isinstance(row, dict)}
    names = {row.get("id"): row.get("name") for row in data.get("categories", []) if isinstance(row, dict)}
    facts = collections.defaultdict(list)  # file name -> [(box, category name, attributes)]
    for row in data.get("annotations", []):
        if isinstance(row, dict) and isinstance(row.get("attributes"), dict) and len(row.get("bbox") or ()) == 4:
            x, y, w, h = row["bbox"]
            facts[files.get(row.get("image_id"))].append(((x, y, x + w, y + h), names.get(row.get("category_id")),
                                                          row["attributes"]))
    for name, record in records.items():
        for inst in record.instances:
            if inst.attributes:
                continue
            near = [a for box, cat, a in facts.get(name, ())
                    if max(abs(u - v) for u, v in zip(box, inst.box)) <= 1.0 and str(cat).lower() in inst.category]
            if len(near) == 1:
                inst.attributes = dict(near[0])
    return records


def build_backends(cfg: SynthConfig, images_dir: str, out_dir: str) -> Backends:
    """The stages' callables for ``cfg``; models, clients and annotation files load on first use."""
    clients = _Clients(cfg)

    @functools.lru_cache(maxsize=None)
    def coco():
        from rlvr.synth.segment import load_coco

        path = cfg.instances.annotations
        if not os.path.isfile(path):
            raise SynthError(f"instances.annotations={path!r}: no such file.")
        try:
            return attach_attributes(load_coco(path, images_dir), path)
        except (OSError, ValueError) as e:
            raise SynthError(f"instances.annotations={path!r}: {e}") from None

    def annotations(image: str):
        record = coco().get(image)
        if record is None:
            raise Skip("not_in_annotations", image)
        return record

    @functools.lru_cache(maxsize=None)
    def segmenter():
        from rlvr.synth import segment

        ic = cfg.instances
        if ic.backend == "sam3":
            return segment.Sam3Segmenter(ic.model, score_threshold=ic.score_threshold,
                                         mask_threshold=ic.mask_threshold, device=ic.device)
        return segment.DetectorSegmenter(ic.model, score_threshold=ic.score_threshold)

    @functools.lru_cache(maxsize=None)
    def verifier():
        from rlvr.rewards import Verifier

        return Verifier(num_workers=1)

    @functools.lru_cache(maxsize=None)
    def humans() -> dict:
        if not cfg.verify.import_file:
            return {}
        from rlvr.synth.verify import import_annotations

        return import_annotations(cfg.verify.import_file)

    def export(queries) -> None:
        """Stage 3's queries for human annotators; stop here until their answers exist."""
        vc = cfg.verify
        filled_in = vc.import_file and os.path.exists(vc.import_file)
        if vc.enabled and vc.export_file and not (filled_in and vc.import_file == vc.export_file):
            from rlvr.synth.verify import export_for_annotators

            export_for_annotators(queries, vc.export_file, annotators=vc.k, images_dir=images_dir)
        if vc.enabled and vc.import_file and not filled_in:
            where = vc.export_file or "(nowhere: set verify.export_file)"
            raise SynthError(f"exported {len(queries)} queries for annotators to {where}; stages 1-3 are saved. "
                             f"Once their answers are in {vc.import_file}, rerun the same command: "
                             "verification resumes from there.")

    return Backends(
        categorize=functools.partial(_categorize, cfg, clients, annotations),
        segment=functools.partial(_segment, cfg, segmenter, annotations, out_dir),
        write=functools.partial(_write, cfg, clients),
        verify=functools.partial(_verify, cfg, clients, verifier, humans, images_dir),
        min_instances=cfg.instances.min_instances, finish_queries=export)
