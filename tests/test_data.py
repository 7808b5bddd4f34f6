"""Data loading: formats, checks, counted skips, strict mode, prompt budget, epoch order."""

import io
import json
import os

import pytest
from PIL import Image

from rlvr.config import DataConfig
from rlvr.data import DataError, EpochSampler, build_messages, image_tokens, load_examples
from rlvr.models import load_processor
from rlvr.batch import encode_prompt
from tests.conftest import save_image, write_jsonl


@pytest.fixture(scope="module")
def processor(qwen25_dir):
    return load_processor(qwen25_dir)


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "img").mkdir()
    save_image(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    rows = [
        {"id": "good", "question": "What digit?", "answer": "7", "images": ["img/ok.png"]},
        {"id": "single", "question": "What digit?", "answer": "-3.5", "image": "img/ok.png", "source": "s"},
        {"id": "text", "question": "What is 2+2?", "answer": "4"},
        {"id": "missing", "question": "Q?", "answer": "1", "images": ["img/nope.png"]},
        {"id": "corrupt", "question": "Q?", "answer": "1", "images": ["img/corrupt.png"]},
        {"id": "empty", "question": "  ", "answer": "1"},
        {"id": "gold", "question": "Q?", "answer": "a red cube"},
        "{not json",
    ]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def test_bad_rows_are_skipped_and_counted(dataset, processor):
    examples, report = load_examples([dataset], DataConfig(), processor)
    assert [e.id for e in examples] == ["good", "single", "text"]
    assert report.total_rows == 8
    assert report.skipped == 5
    assert dict(report.reasons) == {"missing_image": 1, "corrupt_image": 1, "empty_question": 1,
                                    "bad_gold": 1, "bad_json": 1}
    assert "nope.png" in " ".join(report.first) and "(id missing)" in " ".join(report.first)
    assert examples[1].source == "s" and os.path.isabs(examples[1].images[0])
    assert examples[2].images == []


def test_strict_mode_raises_on_first_bad_row(dataset, processor):
    with pytest.raises(DataError, match=r"d.jsonl:4 \(id missing\).*image file not found.*data.strict"):
        load_examples([dataset], DataConfig(strict=True), processor)


def test_prompt_over_budget_is_reported_with_its_id_not_truncated(tmp_path, processor):
    big = save_image(tmp_path / "big.png", size=(224, 224))  # 64 image tokens at the tiny processor's max_pixels
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "small", "question": "Q?", "answer": "1"},
        {"id": "huge", "question": "Q?", "answer": "1", "images": ["big.png"]},
    ])
    examples, report = load_examples([path], DataConfig(max_prompt_tokens=60), processor)
    assert [e.id for e in examples] == ["small"]
    assert report.reasons["prompt_too_long"] == 1 and "id huge" in report.first[0] and "64 image" in report.first[0]


@pytest.mark.parametrize("size", [(56, 56), (60, 60), (120, 90), (300, 40), (224, 224), (500, 500)])
def test_image_token_count_matches_the_processor(tmp_path, processor, size):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q?", "answer": "1",
                                                "images": [save_image(tmp_path / "i.png", size=size)]}])
    cfg = DataConfig()
    (example,), _ = load_examples([path], cfg, processor)
    encoded = encode_prompt(example, processor, cfg)
    # The prompt length measured at load equals what the processor produces.
    assert example.prompt_tokens == len(encoded.input_ids)
    n_image = int((encoded.mm_token_type_ids == 1).sum())
    assert n_image == image_tokens(*size, processor)


def test_image_placeholders_place_images_in_the_text():
    cfg = DataConfig(prompt_template="{question}")
    messages = build_messages("Compare <image> with <image>: which is larger?", 2, cfg)
    parts = messages[0]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    assert parts[0]["text"] == "Compare " and parts[4]["text"] == ": which is larger?"
    assert [p["type"] for p in build_messages("Q", 2, cfg)[0]["content"]] == ["image", "image", "text"]


def test_placeholder_count_must_match_images(tmp_path, processor):
    img = save_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "<image> vs <image>?", "answer": "1", "images": [img]}])
    with pytest.raises(DataError, match="2 '<image>' placeholders for 1 images"):
        load_examples([path], DataConfig(strict=True), processor)


def test_hf_datasets_on_disk_and_parquet_with_bytes_and_custom_columns(tmp_path, processor):
    import datasets

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    ds = datasets.Dataset.from_dict({
        "problem": ["Q1?", "Q2?", "Q3?"], "solution": ["3", "1/2", "nan-ish"],
        "pics": [[buf.getvalue()], [], [buf.getvalue()]],
    })
    ds.save_to_disk(str(tmp_path / "disk"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    cfg = DataConfig(question_key="problem", answer_key="solution", images_key="pics")
    for path in (str(tmp_path / "disk"), str(tmp_path / "d.parquet")):
        examples, report = load_examples([path], cfg, processor)
        assert [e.question for e in examples] == ["Q1?", "Q2?"], path
        assert report.reasons == {"bad_gold": 1}
        assert len(examples[0].images) == 1 and encode_prompt(examples[0], processor, cfg).pixel_values is not None


def test_no_usable_rows_is_an_error(tmp_path, processor):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "", "answer": "1"}])
    with pytest.raises(DataError, match="no usable rows"):
        load_examples([path], DataConfig(), processor)


def test_missing_file_is_an_error(tmp_path, processor):
    with pytest.raises(DataError, match="not found"):
        load_examples([str(tmp_path / "absent.jsonl")], DataConfig(), processor)


def test_epoch_sampler_uses_each_prompt_once_per_epoch_and_resumes():
    s = EpochSampler(10, seed=3)
    first = s.take(10)
    assert sorted(first) == list(range(10))
    a = s.take(4)
    state = s.state_dict()
    rest = s.take(6)
    assert sorted(a + rest) == list(range(10)) and s.epoch == 1
    t = EpochSampler(10, seed=3)
    t.load_state_dict(state)
    assert t.take(6) == rest
    assert EpochSampler(10, seed=3, shuffle=False).take(3) == [0, 1, 2]


def test_a_line_that_is_not_utf8_is_one_counted_bad_row(tmp_path, processor):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"id": "a", "question": "What is 2+2?", "answer": "4"}).encode()
    latin1 = '{"id": "b", "question": "Combien font 2+2 ? (r\xe9ponse)", "answer": "4"}'.encode("latin-1")
    path.write_bytes(good + b"\n" + latin1 + b"\n" + good.replace(b'"a"', b'"c"') + b"\n")
    examples, report = load_examples([str(path)], DataConfig(), processor)
    assert [e.id for e in examples] == ["a", "c"]
    assert dict(report.reasons) == {"not_utf8": 1}
    assert report.first == [f"{path}:2: line is not UTF-8 text (byte 0xe9 at byte 47 of the line); "
                            "re-encode the file as UTF-8"]
    with pytest.raises(DataError, match=r"d.jsonl:2: line is not UTF-8.*data.strict=true"):
        load_examples([str(path)], DataConfig(strict=True), processor)


def test_a_byte_order_mark_is_not_a_bad_row(tmp_path, processor):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "question": "Q?", "answer": "4"}).encode() + b"\n")
    examples, report = load_examples([str(path)], DataConfig(), processor)
    assert [e.id for e in examples] == ["a"] and report.skipped == 0


def test_skip_messages_name_what_to_change(tmp_path, processor):
    def message(row) -> str:
        path = write_jsonl(tmp_path / "d.jsonl", [row, {"id": "ok", "question": "Q?", "answer": "1"}])
        (first,) = load_examples([path], DataConfig(), processor)[1].first
        return first

    assert message({"id": "p", "problem": "What is 2+2?", "answer": "4", "images": []}).endswith(
        ": no column 'question' (data.question_key); the row has ['id', 'problem', 'answer', 'images']; if the "
        "question is in 'problem', set data.question_key=problem")
    assert message({"id": "e", "question": "", "answer": "4"}).endswith(": column 'question' (data.question_key) is empty")
    gold = message({"id": "g", "question": "Q?", "answer": "seven"})
    assert gold.count("'seven'") == 1 and "not a single number" in gold  # said once, not twice
    assert message('{"id": "j", "question": "unterminated').endswith(
        "invalid JSON (Unterminated string starting at column 25)")  # not "at at column"
    assert message("[1, 2]").endswith("line is a JSON list, not an object")


def test_the_skip_summary_gives_one_example_per_reason(tmp_path, processor):
    rows = [{"id": f"p{i}", "problem": "Q?", "answer": "1"} for i in range(4)] + ["{bad", "{worse"]
    _, report = load_examples([write_jsonl(tmp_path / "d.jsonl", rows + [{"question": "Q?", "answer": "1"}])],
                              DataConfig(), processor)
    assert dict(report.reasons) == {"empty_question": 4, "bad_json": 2}
    assert [m.split(": ", 1)[0].rsplit(":", 1)[1] for m in report.first] == ["1 (id p0)", "5"]
