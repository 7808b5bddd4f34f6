"""Write the demo task: which digit does the colour of the image stand for?

    python -m rlvr.devtools.make_demo_data --out runs/demo-assets/data
    python -m rlvr.devtools.make_demo_data --out runs/half --distractor half --phrasings 3

Every row asks the same question, so the answer can only be read from the image: each
digit (0-4 by default, up to 0-9 with --digits) has its own colour, drawn with a little
jitter in hue and size so no two images are identical. Writes ``train.jsonl`` and
``val.jsonl`` (the documented JSONL format) and the PNG images they point to.

Harder variants, for checking that a recipe learns robustly rather than on one task:

* ``--distractor half``: the digit's colour fills one half of the image (left, right, top
  or bottom, at random) and a random colour the other half.
* ``--distractor border``: the digit's colour fills a centred square (4/9 of the image) and
  a random colour the frame around it.
* ``--phrasings N``: the question is worded one of N ways (up to len(QUESTIONS)).

A distractor colour is never near a digit colour (RGB distance > DISTRACTOR_MIN_DIST to every
colour the task uses), so the answer stays well defined.
"""

from __future__ import annotations

import argparse
import json
import os
import random

from PIL import Image, ImageDraw

# One clearly distinct colour per digit.
COLOURS = {
    0: (230, 25, 75), 1: (60, 180, 75), 2: (255, 225, 25), 3: (0, 130, 200), 4: (245, 130, 48),
    5: (145, 30, 180), 6: (70, 240, 240), 7: (240, 50, 230), 8: (128, 128, 128), 9: (0, 0, 0),
}
QUESTION = "Which digit does this colour stand for?"
QUESTIONS = (
    QUESTION,
    "What number is this colour the code for?",
    "Colour code: which digit?",
    "Tell me the digit that this colour means.",
    "Read the colour as a digit.",
)
DISTRACTORS = ("none", "half", "border")
DISTRACTOR_MIN_DIST = 80.0  # Euclidean RGB distance from every digit colour in the task


def _distractor_colour(rng: random.Random, digits: list[int]) -> tuple[int, int, int]:
    while True:  # rejection sampling; most draws are far from every colour, so this ends quickly
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if all(sum((a - b) ** 2 for a, b in zip(colour, COLOURS[d])) ** 0.5 > DISTRACTOR_MIN_DIST for d in digits):
            return colour


def draw_image(colour: tuple[int, int, int], size: int, distractor: str, rng: random.Random,
               digits: list[int]) -> Image.Image:
    """A ``size`` x ``size`` image showing ``colour``, with the distractor drawn on it if any."""
    if distractor == "none":
        return Image.new("RGB", (size, size), colour)
    other = _distractor_colour(rng, digits)
    if distractor == "half":
        image = Image.new("RGB", (size, size), other)
        half = size // 2
        box = {"left": (0, 0, half - 1, size - 1), "right": (half, 0, size - 1, size - 1),
               "top": (0, 0, size - 1, half - 1), "bottom": (0, half, size - 1, size - 1)}[
            rng.choice(["left", "right", "top", "bottom"])]
    elif distractor == "border":
        image = Image.new("RGB", (size, size), other)
        frame = size // 6  # the centre square's side is 2/3 of the image's: 4/9 of its area
        box = (frame, frame, size - frame - 1, size - frame - 1)
    else:
        raise ValueError(f"unknown distractor {distractor!r}; one of {DISTRACTORS}")
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    return image


def make_split(out: str, split: str, n: int, rng: random.Random, digits: list[int], distractor: str = "none",
               phrasings: int = 1) -> str:
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    path = os.path.join(out, f"{split}.jsonl")
    source = "colour-digit" if distractor == "none" else f"colour-digit-{distractor}"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            digit = digits[i % len(digits)]
            colour = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in COLOURS[digit])
            size = rng.choice([112, 120, 128, 140])  # 16 to 25 image tokens
            name = f"images/{split}_{i:05d}.png"
            draw_image(colour, size, distractor, rng, digits).save(os.path.join(out, name))
            # The plain task draws nothing more, so its files stay the same as before the options.
            question = QUESTION if phrasings == 1 else rng.choice(QUESTIONS[:phrasings])
            row = {"id": f"{split}-{i}", "question": question, "answer": str(digit), "images": [name],
                   "source": source}
            f.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=512, help="training rows")
    parser.add_argument("--val", type=int, default=64, help="validation rows")
    parser.add_argument("--digits", type=int, default=5, choices=range(2, 11), metavar="2..10",
                        help="how many digits (colours) the task uses, from 0 up")
    parser.add_argument("--distractor", default="none", choices=DISTRACTORS,
                        help="none: the image is the colour; half: a random colour fills the other half; "
                             "border: a random colour frames a centred square of the digit's colour")
    parser.add_argument("--phrasings", type=int, default=1, choices=range(1, len(QUESTIONS) + 1),
                        metavar=f"1..{len(QUESTIONS)}", help="how many wordings of the question rows draw from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    digits = list(range(args.digits))
    for split, n in (("train", args.train), ("val", args.val)):
        path = make_split(args.out, split, n, rng, digits, args.distractor, args.phrasings)
        print(f"wrote {n} rows to {path}")


if __name__ == "__main__":
    main()
