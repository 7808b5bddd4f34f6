"""The four HopChain stages over a folder of images, one JSON file per image and stage, resumable.

    run(images_dir, out_dir, backends, shard=(0, 1))   # stage by stage, a progress bar each
    totals(out_dir)                                    # counts kept / dropped per stage and reason

Each stage writes ``OUT/stages/<stage>/<image id>.json`` atomically once an image is done, so a
killed run resumes where it stopped: a rerun reads the files that exist and processes only the
images without one. An image id is its path relative to the images folder, sanitised
(``a/b c.png`` -> ``a__b_c.png``), so ids are the same in every run, shard and merge.

A stage file holds ``{"id", "image", "record", "queries", "dropped": {reason: n}}``:
stages 1-2 count images (an image dropped there has ``record: null``), stages 3-4 count
queries. The counts in the report are summed from these files, so they are exact after a
resume or a merge of shards.

The models live behind ``Backends``: four callables built from the config by
``rlvr.synth.hopchain.build_backends`` (tests pass stand-ins).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from rlvr.files import atomic_write
from rlvr.synth.records import ImageRecord, Query, image_from_dict, query_from_dict, to_dict

log = logging.getLogger(__name__)

STAGES = ("categories", "instances", "queries", "verify")
UNITS = {"categories": "images", "instances": "images", "queries": "queries", "verify": "queries"}
DIFFICULTY_REASONS = ("always_solved",)  # stage 4's drops by the weaker model, reported as "difficulty"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class SynthError(Exception):
    """A problem with the user's input (folder, shard, config); the message says what to change."""


class Skip(Exception):
    """Raised by a backend to drop the image at this stage, counted under ``reason``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Backends:
    """What each stage does to one image; the pipeline handles files, order, resumption and counts.

    categorize(image, record) -> category names (stage 1)
    segment(image, record, image_id) -> instances, crops saved (stage 2)
    write(image, record, image_id) -> (queries, Counter of rejection reasons) (stage 3)
    verify(image, record, queries) -> (kept queries, Counter of drop reasons) (stage 4)
    """

    categorize: Callable[[Any, ImageRecord], list[str]]
    segment: Callable[[Any, ImageRecord, str], list]
    write: Callable[[Any, ImageRecord, str], tuple[list[Query], collections.Counter]]
    verify: Callable[[Any, ImageRecord, list[Query]], tuple[list[Query], collections.Counter]]
    min_instances: int = 3
    finish_queries: Callable[[list[Query]], None] | None = None  # after stage 3, before 4 (annotator export)


# ---------------------------------------------------------------- images, ids, shards


def list_images(images_dir: str) -> list[str]:
    """Image paths relative to ``images_dir``, sorted; a missing folder or no images is a SynthError."""
    if not os.path.isdir(images_dir):
        raise SynthError(f"--images {images_dir}: no such folder.")
    found = []
    for folder, dirs, files in os.walk(images_dir):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), images_dir))
    if not found:
        raise SynthError(f"--images {images_dir}: no images in it (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                         "in subfolders too).")
    return sorted(found)


def image_ids(paths: list[str]) -> dict[str, str]:
    """Relative path -> a file-name-safe id, stable across runs; clashes get a hash of the path."""
    def clean(p: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", p.replace(os.sep, "__").replace("/", "__"))

    seen = collections.Counter(clean(p) for p in paths)
    return {p: clean(p) if seen[clean(p)] == 1 else f"{clean(p)}-{hashlib.sha1(p.encode()).hexdigest()[:8]}"
            for p in paths}


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' -> (i, N): shard i (0-based) of N takes every N-th image of the sorted list from the i-th."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not int(m.group(2)) >= 1 or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise SynthError(f"--shard {text!r}: expected i/N with 0 <= i < N (0-based), e.g. --shard 0/4 ... 3/4.")
    return int(m.group(1)), int(m.group(2))


def take_shard(paths: list[str], shard: tuple[int, int]) -> list[str]:
    i, n = shard
    return paths[i::n]


# ---------------------------------------------------------------- stage files


def stage_path(out_dir: str, stage: str, image_id: str) -> str:
    return os.path.join(out_dir, "stages", stage, f"{image_id}.json")


def read_stage(out_dir: str, stage: str, image_id: str) -> dict | None:
    """The stage's result for one image, or None if it has not run (or its file is unreadable: rerun it)."""
    path = stage_path(out_dir, stage, image_id)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); this image's %s stage runs again", path, e, stage)
        return None


def _result(image_id: str, rel: str, record: ImageRecord | None, queries: list[Query] | None = None,
            dropped: collections.Counter | dict | None = None) -> dict:
    return {"id": image_id, "image": rel, "record": to_dict(record) if record is not None else None,
            "queries": [to_dict(q) for q in queries or []], "dropped": dict(dropped or {})}


def _open_image(images_dir: str, rel: str):
    """The image as RGB, or None (and a warning) if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(os.path.join(images_dir, rel)) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("%s: cannot read the image (%s); skipped, counted as unreadable_image", rel, e)
        return None


# ---------------------------------------------------------------- the stages


def _categories(backends: Backends, image, rel: str, image_id: str, prev: dict | None) -> dict:
    if image is None:
        return _result(image_id, rel, None, dropped={"unreadable_image": 1})
    record = ImageRecord(image=rel, width=image.width, height=image.height)
    record.categories = backends.categorize(image, record)
    if not record.categories:
        return _result(image_id, rel, None, dropped={"no_categories": 1})
    return _result(image_id, rel, record)


def _instances(backends: Backends, image, rel: str, image_id: str, prev: dict) -> dict:
    record = image_from_dict(prev["record"])
    record.instances = backends.segment(image, record, image_id)
    if len(record.instances) < backends.min_instances:
        return _result(image_id, rel, None, dropped={"too_few_instances": 1})
    return _result(image_id, rel, record)


def _queries(backends: Backends, image, rel: str, image_id: str, prev: dict) -> dict:
    record = image_from_dict(prev["record"])
    queries, rejected = backends.write(image, record, image_id)
    return _result(image_id, rel, record, queries, rejected)


def _verify(backends: Backends, image, rel: str, image_id: str, prev: dict) -> dict:
    record = image_from_dict(prev["record"])
    queries = [query_from_dict(q) for q in prev["queries"]]
    kept, dropped = backends.verify(image, record, queries) if queries else ([], collections.Counter())
    return _result(image_id, rel, record, kept, dropped)


STAGE_FUNCTIONS = {"categories": _categories, "instances": _instances, "queries": _queries, "verify": _verify}


def _passes(prev: dict | None, stage: str) -> bool:
    """Whether an image goes on to ``stage`` given the previous stage's result."""
    if stage == "categories":
        return True
    if prev is None or prev["record"] is None:
        return False
    return stage != "verify" or bool(prev["queries"])


def run_stage(stage: str, images_dir: str, out_dir: str, paths: list[str], ids: dict[str, str],
              backends: Backends, progress: bool = True) -> int:
    """Run one stage over ``paths``, skipping images with a stage file; returns how many it processed."""
    from tqdm import tqdm

    previous = STAGES[STAGES.index(stage) - 1] if stage != "categories" else None
    os.makedirs(os.path.join(out_dir, "stages", stage), exist_ok=True)
    done = 0
    for rel in tqdm(paths, desc=f"{STAGES.index(stage) + 1}/4 {stage}", unit="image", disable=not progress):
        image_id = ids[rel]
        if os.path.exists(stage_path(out_dir, stage, image_id)):
            continue  # done by an earlier run: resume after it
        prev = read_stage(out_dir, previous, image_id) if previous else None
        if not _passes(prev, stage):
            continue
        image = _open_image(images_dir, rel)
        if image is None and stage != "categories":
            continue  # it was readable in stage 1; moved or deleted since: rerun after restoring it
        try:
            result = STAGE_FUNCTIONS[stage](backends, image, rel, image_id, prev)
        except Skip as e:
            log.info("%s: dropped at %s (%s)", rel, stage, e)
            record = None if UNITS[stage] == "images" else image_from_dict(prev["record"])
            lost = len(prev["queries"]) if stage == "verify" else 1
            result = _result(image_id, rel, record, dropped={e.reason: lost})
        atomic_write(stage_path(out_dir, stage, image_id), json.dumps(result))
        done += 1
    return done


def run(images_dir: str, out_dir: str, backends: Backends, shard: tuple[int, int] = (0, 1),
        progress: bool = True) -> dict[str, int]:
    """Every stage over this shard's images; returns images processed per stage (0 = all resumed)."""
    paths = take_shard(list_images(images_dir), shard)
    ids = image_ids(list_images(images_dir))  # over the full list, so a shard's ids equal the unsharded run's
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, "run.json"), json.dumps(
        {"images_dir": os.path.abspath(images_dir), "shard": list(shard), "images": len(paths)}))
    processed = {}
    for stage in STAGES:
        if stage == "verify" and backends.finish_queries is not None:
            backends.finish_queries(final_queries(out_dir, "queries"))
        processed[stage] = run_stage(stage, images_dir, out_dir, paths, ids, backends, progress)
    return processed


# ---------------------------------------------------------------- reading the results back


def stage_results(out_dir: str, stage: str) -> list[dict]:
    """Every image's result for ``stage``, sorted by image id."""
    folder = os.path.join(out_dir, "stages", stage)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []
    results = (read_stage(out_dir, stage, n[: -len(".json")]) for n in names)
    return [r for r in results if r is not None]


def final_queries(out_dir: str, stage: str = "verify") -> list[Query]:
    return [query_from_dict(q) for r in stage_results(out_dir, stage) for q in r["queries"]]


def final_records(out_dir: str) -> dict[str, ImageRecord]:
    """Image path -> its record after stage 2 (for the page's drawn instances)."""
    return {r["image"]: image_from_dict(r["record"]) for r in stage_results(out_dir, "instances") if r["record"]}


def totals(out_dir: str) -> dict[str, dict]:
    """Per stage: {"unit", "in", "kept", "dropped": {reason: n}}, summed over the stage files.

    Stage 4's file holds both filters; the report shows the difficulty filter (reasons in
    DIFFICULTY_REASONS) as its own row after "verify".
    """
    out = {}
    for stage in STAGES:
        kept, dropped = 0, collections.Counter()
        for r in stage_results(out_dir, stage):
            dropped.update(r["dropped"])
            kept += (r["record"] is not None) if UNITS[stage] == "images" else len(r["queries"])
        out[stage] = _row(stage, kept, dropped)
    final, both = out["verify"]["kept"], collections.Counter(out["verify"]["dropped"])
    hard = collections.Counter({r: n for r, n in both.items() if r in DIFFICULTY_REASONS})
    out["verify"] = _row("verify", final + sum(hard.values()), both - hard)  # passed on to the difficulty filter
    out["difficulty"] = _row("verify", final, hard)
    return out


def _row(stage: str, kept: int, dropped: collections.Counter) -> dict:
    return {"unit": UNITS[stage], "in": kept + sum(dropped.values()), "kept": kept,
            "dropped": dict(sorted(dropped.items()))}
