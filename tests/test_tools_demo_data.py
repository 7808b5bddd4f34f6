"""The tools demo task: a square is illegible at the recipe's pixel budget and legible after zoom_in(target_box)."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from rlvr.agent.tools import ZoomIn, box_pixels
from rlvr.devtools.make_demo_data import COLOURS
from rlvr.devtools.make_tools_demo_data import (
    JITTER,
    QUADRANTS,
    main,
    square_pixels,
    target_box,
)

MAX_PIXELS = 112 * 112  # the tools recipe's data.max_pixels


def _rows(out, split="train"):
    return [json.loads(line) for line in open(out / f"{split}.jsonl", encoding="utf-8")]


def _near(colour, digit, tol=JITTER):
    return all(abs(int(a) - b) <= tol for a, b in zip(colour, COLOURS[digit]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools-demo")
    main(["--out", str(out), "--train", "20", "--val", "8", "--sft", "12", "--seed", "3"])
    return out


def test_target_box_crops_the_square_with_a_4_pixel_frame():
    # top-left square: centre 112, side 16 -> pixels 104..119; with 4 px: 100..123 (PIL box 100..124)
    assert square_pixels("top-left") == (104, 104, 120, 120)
    assert target_box("top-left") == [224, 224, 276, 276]  # 100 * 1000 / 448 = 223.2 -> 224; 124 * 1000 / 448 = 276.8 -> 276
    assert box_pixels([224, 224, 276, 276], 448, 448) == (100, 100, 124, 124)
    assert target_box("bottom-right") == [724, 724, 776, 776]
    for quadrant in QUADRANTS:
        left, top, right, bottom = square_pixels(quadrant)
        assert box_pixels(target_box(quadrant), 448, 448) == (left - 4, top - 4, right + 4, bottom + 4)


def test_rows_balanced_distinct_square_colours_and_held_out_images(data):
    rows = _rows(data)
    assert [r["answer"] for r in rows[:6]] == ["0", "1", "2", "3", "4", "0"]
    assert {len(_rows(data, "val")), len(_rows(data, "sft_tasks"))} == {8, 12}
    for row in rows:
        assert row["question"] == f"Which digit does the colour of the square in the {row['quadrant']} stand for?"
        assert row["target_box"] == target_box(row["quadrant"])
        image = np.asarray(Image.open(data / row["images"][0]).convert("RGB"))
        assert image.shape == (448, 448, 3)
        digits = []
        for quadrant in QUADRANTS:
            left, top, right, bottom = square_pixels(quadrant)
            colours = {tuple(c) for c in image[top:bottom, left:right].reshape(-1, 3)}
            assert len(colours) == 1  # one flat colour
            (colour,) = colours
            digit = next(d for d in range(5) if _near(colour, d))
            digits.append(digit)
            if quadrant == row["quadrant"]:
                assert str(digit) == row["answer"]
        assert len(set(digits)) == 4
        frame = image[:, :, 0][:90, :90]  # noise only: greys
        assert (image[:90, :90, 0] == image[:90, :90, 1]).all() and len(np.unique(frame)) == 16
    train = {Image.open(data / r["images"][0]).tobytes() for r in rows}
    val = {Image.open(data / r["images"][0]).tobytes() for r in _rows(data, "val")}
    assert not train & val


def test_same_seed_same_files_and_too_many_digits_refused(data, tmp_path, capsys):
    main(["--out", str(tmp_path), "--train", "20", "--val", "8", "--sft", "12", "--seed", "3"])
    assert (tmp_path / "val.jsonl").read_text() == (data / "val.jsonl").read_text()
    assert (tmp_path / "images/val_00003.png").read_bytes() == (data / "images/val_00003.png").read_bytes()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--digits", "9"])
    assert "--digits" in capsys.readouterr().err


def _processed(processor, image):
    """The image as the model sees it: resized by the processor, before normalisation, [H, W, 3]."""
    ip = processor.image_processor
    out = ip(images=[image], do_rescale=False, do_normalize=False, return_tensors="np")
    _, gh, gw = out["image_grid_thw"][0]
    p, m, t = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    patches = out["pixel_values"].reshape(gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]
    return patches.transpose(0, 2, 5, 1, 3, 6, 4).reshape(gh * p, gw * p, 3)  # [H, W, 3]


def test_the_square_is_illegible_at_the_recipes_pixel_budget_and_legible_after_zoom(data, qwen25_dir):
    from rlvr.models import load_processor

    processor = load_processor(qwen25_dir, max_pixels=MAX_PIXELS)
    shares, zoom_shares = [], []
    for row in _rows(data):
        image = Image.open(data / row["images"][0]).convert("RGB")
        digit = int(row["answer"])
        small = _processed(processor, image)  # [112, 112, 3]
        assert small.shape == (112, 112, 3)
        cx, cy = (round(f * 112) for f in QUADRANTS[row["quadrant"]])  # the square's centre, 28 or 84
        cell = small[cy - 14:cy + 14, cx - 14:cx + 14].reshape(-1, 3)  # the 28x28 pixels one image token covers
        near = np.linalg.norm(cell - np.array(COLOURS[digit]), axis=1) <= 2 * JITTER + 20
        shares.append(near.mean())
        zoomed, _ = ZoomIn().apply(image, row["target_box"], 4)
        assert zoomed.size == (96, 96)
        counts = Counter(map(tuple, np.asarray(zoomed).reshape(-1, 3).tolist()))
        colour, n = counts.most_common(1)[0]
        assert _near(colour, digit)  # the majority colour is the digit's
        zoom_shares.append(n / (96 * 96))
    # 16 of 784 pixels at most (the 4x4 square), fewer after the bicubic blur with the noise
    print(f"square's colour share of its 28x28 cell at 112x112: max {max(shares):.4f}; zoomed majority share min "
          f"{min(zoom_shares):.3f}")
    assert max(shares) < 0.03, shares
    # the square is 64x64 of the 96x96 zoom; bicubic overshoot at its edges leaves ~52x52 exactly its colour (0.29)
    assert min(zoom_shares) > 0.25, zoom_shares


def test_margin_0_zooms_into_the_square_alone_and_sft_quadrants_limit_the_cold_start(tmp_path):
    main(["--out", str(tmp_path), "--train", "12", "--val", "4", "--sft", "12", "--seed", "5", "--margin", "0",
          "--sft-quadrants", "top-left", "bottom-left"])
    # 104 * 1000 / 448 = 232.1 -> 233 (rounded up), 120 * 1000 / 448 = 267.9 -> 267: exactly pixels 104..120
    assert target_box("top-left", margin=0) == [233, 233, 267, 267]
    sft = _rows(tmp_path, "sft_tasks")
    assert {r["quadrant"] for r in sft} == {"top-left", "bottom-left"}
    assert {r["quadrant"] for r in _rows(tmp_path)} == set(QUADRANTS)  # RL rows ask about all four
    for row in sft + _rows(tmp_path):
        assert row["target_box"] == target_box(row["quadrant"], margin=0)
        image = Image.open(tmp_path / row["images"][0]).convert("RGB")
        assert box_pixels(row["target_box"], 448, 448) == square_pixels(row["quadrant"])
        zoomed, _ = ZoomIn().apply(image, row["target_box"], 4)
        assert zoomed.size == (64, 64)
        colours = {tuple(c) for c in np.asarray(zoomed).reshape(-1, 3).tolist()}
        assert len(colours) == 1 and _near(colours.pop(), int(row["answer"]))  # one flat colour: the answer's


def test_bad_quadrants_and_margins_refused(tmp_path, capsys):
    for bad in (["--sft-quadrants", "middle"], ["--margin", "-1"], ["--margin", "17"]):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path)] + bad)
        assert bad[0] in capsys.readouterr().err
