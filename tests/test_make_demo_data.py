"""The demo task's generator: the plain task unchanged by the new options, and the distractor variants as documented."""

import json
from collections import Counter

import pytest
from PIL import Image

from rlvr.devtools.make_demo_data import COLOURS, DISTRACTOR_MIN_DIST, QUESTION, QUESTIONS, main


def _rows(out):
    return [json.loads(line) for line in open(out / "train.jsonl", encoding="utf-8")]


def _colours(out, row):
    image = Image.open(out / row["images"][0]).convert("RGB")
    return image.size, _counts(image)


def _counts(image):
    return Counter({colour: n for n, colour in image.getcolors(maxcolors=image.size[0] * image.size[1])})


def _is_digit_colour(colour, digit):
    return all(abs(a - b) <= 12 for a, b in zip(colour, COLOURS[digit]))  # the generator's jitter


def _far_from_digits(colour, digits):
    return all(sum((a - b) ** 2 for a, b in zip(colour, COLOURS[d])) ** 0.5 > DISTRACTOR_MIN_DIST for d in digits)


def test_plain_task_is_one_colour_per_image_and_the_same_question(tmp_path):
    main(["--out", str(tmp_path), "--train", "20", "--val", "2"])
    rows = _rows(tmp_path)
    assert [r["answer"] for r in rows[:6]] == ["0", "1", "2", "3", "4", "0"]
    for row in rows:
        assert row["question"] == QUESTION and row["source"] == "colour-digit"
        _, colours = _colours(tmp_path, row)
        assert len(colours) == 1 and _is_digit_colour(next(iter(colours)), int(row["answer"]))


def test_plain_task_is_the_one_make_demo_always_wrote(tmp_path):
    # sizes and colours of the first rows as the generator wrote them before the variants existed
    main(["--out", str(tmp_path), "--train", "3", "--val", "1"])
    got = [_colours(tmp_path, row) for row in _rows(tmp_path)]
    assert [(size, list(colours)) for size, colours in got] == [
        ((112, 112), [(230, 37, 76)]), ((140, 140), [(56, 184, 78)]), ((120, 120), [(252, 228, 24)])]


def test_plain_task_files_do_not_change_with_the_new_options(tmp_path):
    # the defaults spelled out give byte-identical files: make demo's task is the one it always was
    main(["--out", str(tmp_path / "a"), "--train", "12", "--val", "2"])
    main(["--out", str(tmp_path / "b"), "--train", "12", "--val", "2", "--distractor", "none", "--phrasings", "1"])
    for name in ["train.jsonl", "val.jsonl", "images/train_00007.png", "images/val_00001.png"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_half_distractor_puts_the_digit_colour_on_exactly_half_the_image(tmp_path):
    main(["--out", str(tmp_path), "--train", "40", "--val", "2", "--distractor", "half"])
    for row in _rows(tmp_path):
        (w, h), colours = _colours(tmp_path, row)
        assert len(colours) == 2, row["id"]
        digit = int(row["answer"])
        (true, n_true), = [(c, n) for c, n in colours.items() if _is_digit_colour(c, digit)]
        other = next(c for c in colours if c != true)
        assert n_true == w * h // 2, (row["id"], n_true, w, h)  # sizes are even: exactly half
        assert _far_from_digits(other, range(5)), (row["id"], other)
        assert row["source"] == "colour-digit-half"


def test_border_distractor_frames_a_centred_square_of_the_digit_colour(tmp_path):
    main(["--out", str(tmp_path), "--train", "20", "--val", "2", "--distractor", "border", "--digits", "10"])
    for row in _rows(tmp_path):
        image = Image.open(tmp_path / row["images"][0]).convert("RGB")
        size, digit = image.size[0], int(row["answer"])
        frame = size // 6
        centre, corner = image.getpixel((size // 2, size // 2)), image.getpixel((0, 0))
        assert _is_digit_colour(centre, digit) and _far_from_digits(corner, range(10)), row["id"]
        assert image.getpixel((frame, frame)) == centre and image.getpixel((frame - 1, frame - 1)) == corner
        assert _counts(image)[centre] == (size - 2 * frame) ** 2


def test_phrasings_draw_from_the_first_n_questions(tmp_path):
    main(["--out", str(tmp_path), "--train", "60", "--val", "2", "--phrasings", "3"])
    assert {r["question"] for r in _rows(tmp_path)} == set(QUESTIONS[:3])


@pytest.mark.parametrize("args", [["--distractor", "stripes"], ["--phrasings", "0"],
                                  ["--phrasings", str(len(QUESTIONS) + 1)]])
def test_bad_options_are_refused_with_the_choices(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), *args])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
