"""Write the demo task: which digit does the colour of the image stand for?

    python -m rlvr.tools.make_demo_data --out runs/demo-assets/data

Every row asks the same question, so the answer can only be read from the image: each
digit (0-4 by default, up to 0-9 with --digits) has its own colour, drawn with a little jitter in hue and size so no two images
are identical. Writes ``train.jsonl`` and ``val.jsonl`` (the documented JSONL format) and
the PNG images they point to.
"""

from __future__ import annotations

import argparse
import json
import os
import random

from PIL import Image

# One clearly distinct colour per digit.
COLOURS = {
    0: (230, 25, 75), 1: (60, 180, 75), 2: (255, 225, 25), 3: (0, 130, 200), 4: (245, 130, 48),
    5: (145, 30, 180), 6: (70, 240, 240), 7: (240, 50, 230), 8: (128, 128, 128), 9: (0, 0, 0),
}
QUESTION = "Which digit does this colour stand for?"


def make_split(out: str, split: str, n: int, rng: random.Random, digits: list[int]) -> str:
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    path = os.path.join(out, f"{split}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            digit = digits[i % len(digits)]
            colour = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in COLOURS[digit])
            size = rng.choice([112, 120, 128, 140])  # 16 to 25 image tokens
            name = f"images/{split}_{i:05d}.png"
            Image.new("RGB", (size, size), colour).save(os.path.join(out, name))
            row = {"id": f"{split}-{i}", "question": QUESTION, "answer": str(digit), "images": [name],
                   "source": "colour-digit"}
            f.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=512, help="training rows")
    parser.add_argument("--val", type=int, default=64, help="validation rows")
    parser.add_argument("--digits", type=int, default=5, choices=range(2, 11), metavar="2..10",
                        help="how many digits (colours) the task uses, from 0 up")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    digits = list(range(args.digits))
    for split, n in (("train", args.train), ("val", args.val)):
        path = make_split(args.out, split, n, rng, digits)
        print(f"wrote {n} rows to {path}")


if __name__ == "__main__":
    main()
