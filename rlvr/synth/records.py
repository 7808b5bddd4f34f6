"""The records the synthesis stages pass on, each a JSON object on disk (one file per image and stage).

Boxes are kept two ways: in pixels of the original image (``box``: x0, y0, x1, y1, floats)
and in the 0-1000 integer coordinates HopChain's prompts use (``box_1000``: each coordinate
divided by the image's width or height, times 1000, rounded; ``to_1000``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def to_1000(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box -> HopChain's 0-1000 integer box (clamped to the image)."""
    x0, y0, x1, y1 = box
    scale = (1000 / width, 1000 / height, 1000 / width, 1000 / height)
    return tuple(int(min(1000, max(0, round(v * s)))) for v, s in zip((x0, y0, x1, y1), scale))  # type: ignore[return-value]


def from_1000(box: tuple[int, int, int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """HopChain's 0-1000 box -> pixels (the inverse of ``to_1000`` up to its rounding)."""
    x0, y0, x1, y1 = box
    return (x0 * width / 1000, y0 * height / 1000, x1 * width / 1000, y1 * height / 1000)


@dataclass
class Instance:
    """One object instance in an image."""

    id: str  # unique within the image, e.g. "cup-2"
    category: str  # normalised category name
    box: tuple[float, float, float, float]  # pixels: x0, y0, x1, y1
    box_1000: tuple[int, int, int, int]  # HopChain's 0-1000 integer coordinates
    score: float = 1.0  # the segmenter's or detector's confidence; 1.0 for given annotations
    crop: str | None = None  # path of the instance's crop, relative to the run's output folder
    mask: dict | None = None  # run-length encoded mask {"size": [h, w], "counts": [...]}, if any
    attributes: dict[str, Any] = field(default_factory=dict)  # known facts (colour, text, count, ...)


@dataclass
class ImageRecord:
    """An image and what stages 1-2 found in it."""

    image: str  # path as given in the image list (absolute, or relative to the images folder)
    width: int
    height: int
    categories: list[str] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)


@dataclass
class Hop:
    """One step of a chain: what it asks, the instances it looks at, and its perception level."""

    text: str
    instances: list[str]  # Instance ids
    level: str = "single"  # "single" (one object: text, colour, parts) | "multi" (relations, comparisons, counts)
    answer: str | None = None  # the hop's own intermediate answer, when known


@dataclass
class Query:
    """A multi-hop question about one image with one numeric answer."""

    id: str
    image: str
    question: str
    answer: str  # a number rlvr's verifier accepts as a gold
    hops: list[Hop]
    instances: list[str]  # the combination's instance ids; every one plays a role
    writer: str  # "programmatic" | "vlm:<model>"
    # The paper's ablations of the same chain: "last_hop" (only the final hop, its instance
    # named directly) and "second_half" (from the middle hop on); absent when not written.
    variants: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # per stage: backend, model, settings, verdicts


def to_dict(record) -> dict:
    return dataclasses.asdict(record)


def instance_from_dict(d: dict) -> Instance:
    return Instance(**{**d, "box": tuple(d["box"]), "box_1000": tuple(d["box_1000"])})


def image_from_dict(d: dict) -> ImageRecord:
    return ImageRecord(**{**d, "instances": [instance_from_dict(i) for i in d.get("instances", [])]})


def query_from_dict(d: dict) -> Query:
    return Query(**{**d, "hops": [Hop(**h) for h in d["hops"]]})
