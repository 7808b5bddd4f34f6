"""Write the tools demo task: four tiny colour squares on grey noise; the answer needs a zoom.

    python -m rlvr.devtools.make_tools_demo_data --out runs/tools-demo-assets/data

Each image is SIZE x SIZE (448) pixels of per-pixel random grey noise with four squares of
side SQUARE (16) pixels, centred in the four quadrants (centres at 112 and 336 pixels), each
the colour of a different digit (``make_demo_data.COLOURS``, jittered as that demo does). The
question names one quadrant ("... the square in the top-left ..."); the answer is the digit
whose colour that square has.

Why a tool is needed: the tools recipe shrinks images to data.max_pixels = 112*112, so a
square becomes 4x4 pixels of a 112x112 image, blurred into the noise (under 3% of the 28x28
pixels one merged image token sees). ``zoom_in`` on the row's ``target_box`` (the square
plus a ``--margin``-pixel frame, MARGIN by default, in the 0-1000 coordinates of
``rlvr.agent.tools``) by 4 returns a 96x96 image two thirds the square's colour; with
``--margin 0`` (``make demo-tools``) a 64x64 image of the square's colour alone.

The cold start's tasks can differ from the RL prompts: ``--sft-quadrants`` limits the quadrants
they ask about, and ``--sft-double-zoom`` marks a share of them ``teacher_zooms: 2`` (the scripted
teacher zooms twice before answering; the demo's RL budget allows one call).

Files: ``train.jsonl`` (RL prompts), ``val.jsonl`` (held-out prompts for the evaluation),
``sft_tasks.jsonl`` (the questions the teacher solves for the SFT cold start,
``python -m rlvr.agent.teacher``), and ``images/``. Each split draws its images from its own
seed, so no image is in two splits. Rows: id, question, answer (the digit as text), images,
source, quadrant, target_box.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random

import numpy as np
from PIL import Image

from rlvr.agent.tools import COORD_MAX, box_pixels
from rlvr.devtools.make_demo_data import COLOURS

SIZE = 448  # image side, pixels: 4x the 112 px the tools recipe's max_pixels leaves
SQUARE = 16  # square side, pixels: 4 px after the shrink to 112
MARGIN = 4  # pixels of noise around the square inside target_box
GREY_LEVELS = 16  # noise greys 0, 17, ..., 255: random enough, and the PNGs stay ~100 KB
JITTER = 12  # per-channel colour jitter, as make_demo_data
# Digits 8 (grey) and 9 (black) are greys: the noise would draw them everywhere.
MAX_DIGITS = 8
QUADRANTS = {  # name -> the square's centre as a fraction of the side
    "top-left": (0.25, 0.25), "top-right": (0.75, 0.25), "bottom-left": (0.25, 0.75), "bottom-right": (0.75, 0.75),
}
QUESTION = "Which digit does the colour of the square in the {quadrant} stand for?"
SOURCE = "colour-square-zoom"


def square_pixels(quadrant: str, size: int = SIZE, side: int = SQUARE) -> tuple[int, int, int, int]:
    """The square's pixel box (left, top, right, bottom), right/bottom exclusive as PIL crops."""
    fx, fy = QUADRANTS[quadrant]
    cx, cy = round(fx * size), round(fy * size)
    return cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side


def target_box(quadrant: str, size: int = SIZE, side: int = SQUARE, margin: int = MARGIN) -> list[int]:
    """The square plus ``margin`` pixels each side, as integer 0-1000 coordinates whose
    ``box_pixels`` crop is exactly that pixel box (left/top rounded up, right/bottom down)."""
    left, top, right, bottom = square_pixels(quadrant, size, side)
    x1, y1 = (math.ceil((v - margin) * COORD_MAX / size) for v in (left, top))
    x2, y2 = (math.floor((v + margin) * COORD_MAX / size) for v in (right, bottom))
    box = [x1, y1, x2, y2]
    want = (left - margin, top - margin, right + margin, bottom + margin)
    if box_pixels(box, size, size) != want:  # the rounding above is what makes this hold; never silently off
        raise AssertionError(f"target_box {box} crops {box_pixels(box, size, size)}, not {want}")
    return box


def jittered(digit: int, rng: random.Random) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-JITTER, JITTER))) for c in COLOURS[digit])


def draw_image(colours: dict[str, tuple[int, int, int]], noise: np.random.Generator, size: int = SIZE) -> Image.Image:
    """Grey noise with one square per quadrant in ``colours`` (quadrant -> RGB), as a palette image
    (lossless; readers convert it to RGB)."""
    index = noise.integers(0, GREY_LEVELS, size=(size, size), dtype=np.uint8)  # [H, W] palette indices
    palette = [round(k * 255 / (GREY_LEVELS - 1)) for k in range(GREY_LEVELS) for _ in range(3)]
    for k, (quadrant, colour) in enumerate(colours.items()):
        left, top, right, bottom = square_pixels(quadrant, size)
        index[top:bottom, left:right] = GREY_LEVELS + k
        palette += list(colour)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette)
    return image


def make_split(out: str, split: str, n: int, seed: int, digits: list[int], margin: int = MARGIN,
               quadrants: list[str] | None = None, double_zoom: float = 0.0) -> str:
    """``n`` rows of ``split`` with their images; row i asks about digit ``digits[i % len(digits)]``
    (answers balanced) in a random quadrant of ``quadrants`` (default: all four), the other squares
    taking three other digits. A ``double_zoom`` share of the rows (drawn from a stream of their
    own) carry ``teacher_zooms: 2``: the scripted teacher zooms twice on them."""
    if len(digits) < len(QUADRANTS):
        raise ValueError(f"need at least {len(QUADRANTS)} digits (one per square), got {len(digits)}")
    asked = list(QUADRANTS) if quadrants is None else list(quadrants)
    if not asked or any(q not in QUADRANTS for q in asked):
        raise ValueError(f"quadrants must be some of {', '.join(QUADRANTS)}; got {quadrants}")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rng = random.Random(f"{seed}-{split}")  # a string seed: each split its own stream
    noise = np.random.default_rng(rng.randrange(2**63))
    twice = random.Random(f"{seed}-{split}-zooms")
    path = os.path.join(out, f"{split}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            digit = digits[i % len(digits)]
            quadrant = rng.choice(asked)
            others = rng.sample([d for d in digits if d != digit], len(QUADRANTS) - 1)
            placed = iter(others)
            colours = {q: jittered(digit if q == quadrant else next(placed), rng) for q in QUADRANTS}
            name = f"images/{split}_{i:05d}.png"
            draw_image(colours, noise).save(os.path.join(out, name))
            row = {"id": f"{split}-{i}", "question": QUESTION.format(quadrant=quadrant), "answer": str(digit),
                   "images": [name], "source": SOURCE, "quadrant": quadrant, "target_box": target_box(quadrant, margin=margin)}
            if double_zoom > 0:
                row["teacher_zooms"] = 2 if twice.random() < double_zoom else 1
            f.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=512, help="RL training rows (train.jsonl)")
    parser.add_argument("--val", type=int, default=64, help="held-out rows (val.jsonl)")
    parser.add_argument("--sft", type=int, default=256, help="rows for the teacher (sft_tasks.jsonl)")
    parser.add_argument("--digits", type=int, default=5, choices=range(len(QUADRANTS), MAX_DIGITS + 1),
                        metavar=f"{len(QUADRANTS)}..{MAX_DIGITS}",
                        help="how many digits (colours) the task uses, from 0 up; 8 and 9 are greys, never used")
    parser.add_argument("--margin", type=int, default=MARGIN, choices=range(0, SQUARE + 1), metavar=f"0..{SQUARE}",
                        help="pixels of noise around the square inside target_box (what zoom_in shows of the noise)")
    parser.add_argument("--sft-quadrants", nargs="+", default=list(QUADRANTS), choices=list(QUADRANTS),
                        metavar="QUADRANT", help="the quadrants sft_tasks.jsonl asks about (the cold start's coverage; "
                        "train and val rows ask about all four); default: all four")
    parser.add_argument("--sft-double-zoom", type=float, default=0.0, metavar="SHARE",
                        help="share of sft_tasks.jsonl rows on which the scripted teacher zooms twice before answering "
                        "(teacher_zooms: 2), a teacher less frugal than a one-call budget; default 0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0.0 <= args.sft_double_zoom <= 1.0:
        parser.error(f"--sft-double-zoom must be a share in [0, 1], got {args.sft_double_zoom}")
    for name in ("train", "val", "sft"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    digits = list(range(args.digits))
    for split, n in (("train", args.train), ("val", args.val), ("sft_tasks", args.sft)):
        cold = split == "sft_tasks"
        path = make_split(args.out, split, n, args.seed, digits, args.margin, args.sft_quadrants if cold else None,
                          args.sft_double_zoom if cold else 0.0)
        print(f"wrote {n} rows to {path}")


if __name__ == "__main__":
    main()
