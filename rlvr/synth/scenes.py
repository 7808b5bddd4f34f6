"""Synthetic scenes whose contents are known exactly: the demo's and the tests' images.

    pairs = render_scenes("out/scenes", n=24, seed=0)   # [(png path, ImageRecord), ...]

Each scene is a 448x448 PNG with 4-8 flat shapes (circle, square, triangle, star, hexagon,
diamond) in named colours, one per cell of a 4x4 grid, jittered inside its cell, so shapes
never overlap and shapes in one row (column) overlap vertically (horizontally) while
neighbouring rows never do. Each shape carries one mark: a digit (1-6, the range of the dots,
so digits and dots can point at each other) or a short word written on it, or 1-5 dots (countable parts). ``Instance.attributes`` holds the truth:
``{"shape", "colour", "text" (str or None), "parts" (dots, 0 if none)}``.

Beside the images, ``annotations.json`` holds the same scenes in COCO's format (images;
annotations with ``bbox`` [x, y, w, h], ``area``, ``iscrowd``, a polygon ``segmentation``,
plus an ``attributes`` object; categories), the input of the bring-your-own-annotations path.
Everything is deterministic per (seed, scene index).
"""

from __future__ import annotations

import json
import math
import os
import random

from PIL import Image, ImageDraw, ImageFont

from rlvr.files import atomic_write
from rlvr.synth.records import ImageRecord, Instance, to_1000

SIZE = 448  # image side, pixels
GRID = 4  # cells per side
CELL = SIZE // GRID
MARGIN = 6  # pixels kept free inside each cell, so neighbouring rows and columns never overlap
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond")
COLOURS = {"red": (214, 39, 40), "blue": (31, 119, 220), "green": (44, 160, 44), "yellow": (240, 200, 20),
           "purple": (148, 80, 189), "orange": (245, 127, 14)}
DARK_MARKS = ("yellow", "orange")  # colours on which marks are drawn black, not white
WORDS = ("SUN", "CAT", "CUP", "SKY", "MAP", "OWL")  # none a word the checks flag ("box")
BACKGROUND = (236, 236, 232)
# Dot layouts (dice-like), offsets in units of the dot spacing.
_DOTS = {1: [(0, 0)], 2: [(-1, -1), (1, 1)], 3: [(-1, -1), (0, 0), (1, 1)],
         4: [(-1, -1), (1, -1), (-1, 1), (1, 1)], 5: [(-1, -1), (1, -1), (0, 0), (-1, 1), (1, 1)]}


def shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """The outline of ``shape`` inscribed in the square ``box`` (a circle as 32 points)."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "hexagon":
        return [(cx + r * math.cos(math.pi / 3 * k), cy + r * math.sin(math.pi / 3 * k)) for k in range(6)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.5) * math.sin(math.pi / 5 * k),
                 cy - (r if k % 2 == 0 else r * 0.5) * math.cos(math.pi / 5 * k)) for k in range(10)]
    return [(cx + r * math.cos(2 * math.pi * k / 32), cy + r * math.sin(2 * math.pi * k / 32)) for k in range(32)]


def _mark_centre(shape: str, box: tuple[float, float, float, float]) -> tuple[float, float]:
    x0, y0, x1, y1 = box
    cy = (y0 + y1) / 2
    if shape == "triangle":  # the widest part is low
        cy = y0 + (y1 - y0) * 0.64
    elif shape == "star":
        cy = y0 + (y1 - y0) * 0.55
    return (x0 + x1) / 2, cy


def _draw_object(draw: ImageDraw.ImageDraw, inst: Instance, square: tuple[float, float, float, float]) -> None:
    a = inst.attributes
    draw.polygon(shape_polygon(a["shape"], square), fill=COLOURS[a["colour"]], outline=(40, 40, 40))
    ink = (0, 0, 0) if a["colour"] in DARK_MARKS else (255, 255, 255)
    cx, cy = _mark_centre(a["shape"], square)
    if a["text"] is not None:
        size = 30 if len(a["text"]) == 1 else 18
        font = ImageFont.load_default(size=size)
        draw.text((cx, cy), a["text"], fill=ink, font=font, anchor="mm")
    spacing, radius = 9, 3.5
    for dx, dy in _DOTS.get(a["parts"], []):
        x, y = cx + dx * spacing, cy + dy * spacing
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)


def _scene(rng: random.Random) -> list[tuple[str, str, str | None, int, tuple[float, float, float, float]]]:
    """(shape, colour, text, parts, the square the shape is inscribed in) for one scene."""
    n = rng.randint(4, 8)
    cells = rng.sample(range(GRID * GRID), n)
    palette = rng.sample(sorted(COLOURS), rng.randint(3, 5))  # few colours: some repeat, some do not
    objects = []
    for cell in cells:
        row, col = divmod(cell, GRID)
        side = rng.randint(72, 88)
        slack = (CELL - side) / 2 - MARGIN
        x0 = col * CELL + (CELL - side) / 2 + rng.uniform(-slack, slack)
        y0 = row * CELL + (CELL - side) / 2 + rng.uniform(-slack, slack)
        square = (round(x0, 1), round(y0, 1), round(x0 + side, 1), round(y0 + side, 1))
        shape = rng.choice(SHAPES)
        mark = rng.choices(("digit", "dots", "word"), weights=(4, 4, 2))[0]
        if mark == "word" and shape in ("star", "triangle"):  # too narrow for a word
            mark = "digit"
        text = str(rng.randint(1, 6)) if mark == "digit" else rng.choice(WORDS) if mark == "word" else None
        parts = rng.randint(1, 5) if mark == "dots" else 0
        objects.append((shape, rng.choice(palette), text, parts, square))
    return objects


def render_scene(rng: random.Random, name: str) -> tuple[Image.Image, ImageRecord]:
    """One scene drawn, and its record (ids ``<shape>-<k>``, k from 1 per shape, left to right, top to bottom)."""
    objects = sorted(_scene(rng), key=lambda o: (o[4][1] // CELL, o[4][0]))
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    seen: dict[str, int] = {}
    instances = []
    for shape, colour, text, parts, square in objects:
        seen[shape] = seen.get(shape, 0) + 1
        xs, ys = zip(*shape_polygon(shape, square))
        box = (round(min(xs), 1), round(min(ys), 1), round(max(xs), 1), round(max(ys), 1))  # tight around the outline
        inst = Instance(id=f"{shape}-{seen[shape]}", category=shape, box=box, box_1000=to_1000(box, SIZE, SIZE),
                        attributes={"shape": shape, "colour": colour, "text": text, "parts": parts})
        _draw_object(draw, inst, square)
        instances.append(inst)
    record = ImageRecord(image=name, width=SIZE, height=SIZE, categories=sorted(seen), instances=instances)
    return image, record


def _outline(inst: Instance) -> list[tuple[float, float]]:
    """The shape's outline again, from its tight box (the inscribing square is not kept)."""
    x0, y0, x1, y1 = inst.box
    side = x1 - x0
    if inst.category == "star":  # the star's box is narrower than its square and shorter below
        side = (x1 - x0) / math.sin(math.radians(72))
    cx = (x0 + x1) / 2
    cy = y0 + side / 2 if inst.category == "star" else (y0 + y1) / 2
    return shape_polygon(inst.category, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))


def coco_annotations(records: list[ImageRecord]) -> dict:
    """``records`` in COCO's format (category ids follow ``SHAPES``; image ids from 1)."""
    cat_ids = {shape: k for k, shape in enumerate(SHAPES, 1)}
    images, annotations = [], []
    for image_id, rec in enumerate(records, 1):
        images.append({"id": image_id, "file_name": rec.image, "width": rec.width, "height": rec.height})
        for inst in rec.instances:
            x0, y0, x1, y1 = inst.box
            polygon = [round(v, 2) for point in _outline(inst) for v in point]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[inst.category],
                                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                                "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0, "segmentation": [polygon],
                                "attributes": dict(inst.attributes)})
    categories = [{"id": k, "name": shape, "supercategory": "shape"} for shape, k in cat_ids.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def render_scenes(out_dir: str, n: int, seed: int) -> list[tuple[str, ImageRecord]]:
    """Write ``n`` scenes as ``scene_00000.png``... and ``annotations.json`` into ``out_dir``.

    Returns (path of the PNG, its ImageRecord) pairs; ``ImageRecord.image`` is the file name,
    relative to ``out_dir`` (the images folder).
    """
    if n < 0:
        raise ValueError(f"render_scenes: n must be >= 0, got {n}")
    os.makedirs(out_dir, exist_ok=True)
    pairs = []
    for k in range(n):
        name = f"scene_{k:05d}.png"
        image, record = render_scene(random.Random(f"scenes-{seed}-{k}"), name)
        path = os.path.join(out_dir, name)
        image.save(path + ".tmp.png")
        os.replace(path + ".tmp.png", path)
        pairs.append((path, record))
    atomic_write(os.path.join(out_dir, "annotations.json"), json.dumps(coco_annotations([r for _, r in pairs]), indent=1))
    return pairs
