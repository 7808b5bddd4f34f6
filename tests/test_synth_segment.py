"""Stage 2: SAM3 through our pre/post-processing, Grounding DINO, COCO import, crops.

The numbers are worked out by hand in the comments: normalisation and resize of a 2 x 2
image, scores as sigmoid(query) * sigmoid(presence), boxes to pixels and to 0-1000, a 2 x 2
mask upsampled to 4 x 4. The tiny random SAM3 and Grounding DINO are built here from configs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from rlvr.data import SkipReport
from rlvr.synth import sam3
from rlvr.synth.records import Instance, to_1000
from rlvr.synth.segment import (DetectorSegmenter, Sam3Segmenter, category_spans, grounded_detections,
                                load_coco, make_instances, normalize_category, save_crop)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# --------------------------------------------------------------------------- SAM3 pre-processing


def test_preprocess_normalises_like_the_processor_by_hand():
    # R channel [[0, 255], [51, 204]]; G = 255 - R; B = 0. (x / 255 - 0.5) / 0.5: 0 -> -1, 255 -> 1,
    # 51 -> -0.6, 204 -> 0.6.
    image = Image.new("RGB", (2, 2))
    for (x, y), r in {(0, 0): 0, (1, 0): 255, (0, 1): 51, (1, 1): 204}.items():
        image.putpixel((x, y), (r, 255 - r, 0))
    pixels = sam3.preprocess_image(image, sam3.Sam3Settings(height=2, width=2))
    assert pixels.shape == (1, 3, 2, 2) and pixels.dtype == torch.float32
    assert torch.allclose(pixels[0, 0], torch.tensor([[-1.0, 1.0], [-0.6, 0.6]]), atol=1e-6)
    assert torch.allclose(pixels[0, 1], torch.tensor([[1.0, -1.0], [0.6, -0.6]]), atol=1e-6)
    assert torch.allclose(pixels[0, 2], torch.full((2, 2), -1.0))
    # Transparency goes onto white, as the processor's convert_to_rgb does: a clear pixel is 1.0 everywhere.
    clear = Image.new("RGBA", (2, 2), (0, 0, 0, 255))
    clear.putpixel((1, 1), (0, 0, 0, 0))
    pixels = sam3.preprocess_image(clear, sam3.Sam3Settings(height=2, width=2))
    assert pixels[0, :, 1, 1].tolist() == [1.0, 1.0, 1.0] and pixels[0, :, 0, 0].tolist() == [-1.0, -1.0, -1.0]


def test_preprocess_resizes_bilinear_to_the_model_size_by_hand():
    # Row [0, 255] -> 4 wide, align_corners=False: source x = (i + 0.5) / 2 - 0.5 = -0.25 (clamped 0),
    # 0.25, 0.75, 1.25 (clamped 1) -> 0, 63.75, 191.25, 255 -> uint8 0, 64, 191, 255.
    image = Image.new("L", (2, 2))
    image.putdata([0, 255, 0, 255])
    pixels = sam3.preprocess_image(image, sam3.Sam3Settings(height=4, width=4))  # grey -> RGB
    expected = (torch.tensor([0, 64, 191, 255]) / 255 - 0.5) / 0.5
    assert pixels.shape == (1, 3, 4, 4)
    for c in range(3):
        for row in range(4):
            assert torch.allclose(pixels[0, c, row], expected, atol=1e-6)
    # A non-square photo is squashed to the model's square, values stay in [-1, 1].
    big = sam3.preprocess_image(Image.new("RGB", (80, 60), (255, 0, 10)), sam3.Sam3Settings(height=56, width=56))
    assert big.shape == (1, 3, 56, 56) and big.min() >= -1 and big.max() <= 1


# --------------------------------------------------------------------------- SAM3 post-processing


def test_postprocess_scores_boxes_and_threshold_by_hand():
    # scores = sigmoid(logit) * sigmoid(presence) = p * 0.5 for presence logit 0: 0.45, 0.25, 0.15.
    logits = torch.tensor([_logit(0.9), _logit(0.5), _logit(0.3)])
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.9, 0.5, 1.2, 1.1], [0.0, 0.0, 1.0, 1.0]])
    found = sam3.postprocess(logits, torch.tensor([0.0]), boxes, None, width=200, height=100, score_threshold=0.2)
    assert [round(d.score, 6) for d in found] == [0.45, 0.25]  # 0.15 is under 0.2
    # [0.1, 0.2, 0.5, 0.6] * (200, 100, 200, 100) = (20, 20, 100, 60); the second is clamped to the image.
    assert found[0].box == pytest.approx((20.0, 20.0, 100.0, 60.0))
    assert found[1].box == pytest.approx((180.0, 50.0, 200.0, 100.0))
    assert to_1000(found[0].box, 200, 100) == (100, 200, 500, 600)
    assert found[0].mask is None
    # Without a presence head the query's own probability is the score; best first.
    found = sam3.postprocess(logits.flip(0), None, boxes.flip(0), None, width=200, height=100, score_threshold=0.4)
    assert [round(d.score, 6) for d in found] == [0.9, 0.5]


def test_postprocess_mask_upsampled_then_thresholded_by_hand():
    # Mask probabilities [[1, 0], [0, 0]] -> 4 x 4 bilinear: source coordinates 0 (clamped), 0.25, 0.75, 1
    # per axis, so row 0 is [1, 0.75, 0.25, 0], row 1 is 0.75 * that = [0.75, 0.5625, 0.1875, 0].
    masks = torch.tensor([[[30.0, -30.0], [-30.0, -30.0]]])
    box = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    (d,) = sam3.postprocess(torch.tensor([5.0]), None, box, masks, width=4, height=4, mask_threshold=0.5)
    assert d.mask.shape == (4, 4) and d.mask.dtype == torch.bool
    assert d.mask.nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    (d,) = sam3.postprocess(torch.tensor([5.0]), None, box, masks, width=4, height=4, mask_threshold=0.6)
    assert d.mask.nonzero().tolist() == [[0, 0], [0, 1], [1, 0]]  # 0.5625 is under 0.6


def test_mask_rle_is_cocos_column_major():
    # [[1, 0], [1, 1]] column by column: 1 1 | 0 1 -> runs: 0 zeros, 2 ones, 1 zero, 1 one.
    mask = torch.tensor([[True, False], [True, True]])
    rle = sam3.mask_to_rle(mask)
    assert rle == {"size": [2, 2], "counts": [0, 2, 1, 1]}
    assert torch.equal(sam3.rle_to_mask(rle), mask)
    assert sam3.mask_to_rle(torch.zeros(3, 2, dtype=torch.bool)) == {"size": [3, 2], "counts": [6]}


def test_instances_ids_in_score_order_and_degenerate_boxes_dropped():
    found = [(0.4, (10.0, 10.0, 30.0, 20.0), None), (0.9, (0.0, 0.0, 50.0, 100.0), None),
             (0.8, (40.0, 40.0, 40.5, 60.0), None)]  # the last is half a pixel wide
    kept, dropped = make_instances("cup", found, width=100, height=200)
    assert [(i.id, i.score) for i in kept] == [("cup-1", 0.9), ("cup-2", 0.4)] and dropped == 1
    assert kept[0].box_1000 == (0, 0, 500, 500) and kept[1].box_1000 == (100, 50, 300, 100)


def test_normalize_category():
    got = [normalize_category(n) for n in ["  Red Cups ", "boxes", "Berries.", "people", "glasses", "bus", "car"]]
    assert got == ["red cup", "box", "berry", "person", "glasses", "bus", "car"]


# --------------------------------------------------------------------------- the tiny SAM3, end to end


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory):
    return sam3.make_tiny_sam3(str(tmp_path_factory.mktemp("sam3") / "model"))


def test_tiny_sam3_segmenter_returns_valid_instances(tiny_sam3):
    segmenter = Sam3Segmenter(tiny_sam3, score_threshold=0.0)
    assert (segmenter.settings.height, segmenter.settings.width) == (56, 56)
    image = Image.new("RGB", (80, 60), (240, 240, 240))
    image.paste((200, 20, 20), (10, 10, 40, 40))
    instances = segmenter.segment(image, ["Circles", "cup", "circle"])  # "Circles" and "circle" are one
    assert {i.category for i in instances} == {"circle", "cup"}
    for category in ("circle", "cup"):
        mine = [i for i in instances if i.category == category]
        assert [i.id for i in mine] == [f"{category}-{k}" for k in range(1, len(mine) + 1)]
        assert [i.score for i in mine] == sorted((i.score for i in mine), reverse=True)
    for inst in instances:
        x0, y0, x1, y1 = inst.box
        assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 60 and 0 < inst.score <= 1
        assert inst.box_1000 == to_1000(inst.box, 80, 60)
        assert inst.mask["size"] == [60, 80] and sum(inst.mask["counts"]) == 80 * 60

    # The same numbers as one plain forward of the model on our inputs, post-processed by hand.
    model = segmenter.model
    ids, attention = sam3.tokenize_prompts(segmenter.tokenizer, ["cup"])
    assert ids.shape == (1, 32) and int(attention.sum()) == 3  # <|startoftext|> cup <|endoftext|>
    with torch.no_grad():
        raw = model(pixel_values=sam3.preprocess_image(image, segmenter.settings), input_ids=ids,
                    attention_mask=attention)
    scores = (raw.pred_logits[0].sigmoid() * raw.presence_logits[0].sigmoid()).sort(descending=True).values
    cups = [i for i in instances if i.category == "cup"]
    assert [i.score for i in cups] == pytest.approx(scores.tolist(), abs=1e-5)
    top = int((raw.pred_logits[0]).argmax())
    assert cups[0].box == pytest.approx(tuple((raw.pred_boxes[0, top] * torch.tensor([80, 60, 80, 60])).clamp(min=0)
                                              .minimum(torch.tensor([80, 60, 80, 60])).tolist()), abs=1e-4)
    # Nothing passes a threshold of 1.
    assert Sam3Segmenter(tiny_sam3, score_threshold=1.0).segment(image, ["cup"]) == []


def test_sam3_missing_model_is_a_message(tmp_path):
    with pytest.raises(ValueError, match="not a folder and not a hub id"):
        Sam3Segmenter(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- Grounding DINO


def _tiny_grounding_dino(out: str) -> str:
    from rlvr.agent.service_models import make_tiny_grounding_dino  # the detect service's tiny model

    return make_tiny_grounding_dino(out)


def test_grounded_detections_by_hand():
    # Two queries, tokens [CLS] circle . cup . [SEP]: circle is token 1, cup token 3.
    logits = torch.full((2, 6), -9.0)
    logits[0, 1], logits[0, 3] = _logit(0.7), _logit(0.2)  # circle, score 0.7
    logits[1, 3] = _logit(0.1)  # cup, score 0.1: under the threshold
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.5, 0.5, 1.0, 1.0]])  # cxcywh
    found = grounded_detections(logits, boxes, [[1], [3]], width=100, height=50, threshold=0.3)
    assert len(found) == 1
    score, box, category = found[0]
    assert score == pytest.approx(0.7) and category == 0
    assert box == pytest.approx((40.0, 15.0, 60.0, 35.0))  # x 0.4..0.6 of 100, y 0.3..0.7 of 50


def test_tiny_grounding_dino_matches_the_official_post_processing(tmp_path):
    detector = DetectorSegmenter(_tiny_grounding_dino(str(tmp_path / "gd")), score_threshold=0.0)
    image = Image.new("RGB", (80, 60), (30, 120, 200))
    inputs = detector.processor(images=image, text="circle. cup.", return_tensors="pt")
    assert category_spans(inputs["input_ids"][0].tolist(), 2, detector.processor.tokenizer) == [[1], [3]]
    with torch.no_grad():
        outputs = detector.model(**inputs)
    official = detector.processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(60, 80)])[0]
    mine = grounded_detections(outputs.logits[0], outputs.pred_boxes[0], [[1], [3]], 80, 60, 0.0)
    assert [s for s, _, _ in mine] == pytest.approx(official["scores"].tolist())
    assert torch.allclose(torch.tensor([b for _, b, _ in mine]), official["boxes"], atol=1e-5)

    instances = detector.segment(image, ["circles", "Cup"])
    assert len(instances) == 8 - sum(detector.skips.values())  # every query, each under one category
    for inst in instances:
        assert inst.mask is None and inst.category in ("circle", "cup")
        assert 0 <= inst.box[0] < inst.box[2] <= 80 and 0 <= inst.box[1] < inst.box[3] <= 60
        assert inst.box_1000 == to_1000(inst.box, 80, 60)


def test_detector_refuses_other_models(tiny_sam3):
    with pytest.raises(ValueError, match="runs Grounding DINO"):
        DetectorSegmenter(tiny_sam3)


# --------------------------------------------------------------------------- COCO import


def _coco(tmp_path, annotations: list[dict]) -> str:
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    Image.new("RGB", (100, 50)).save(images_dir / "a.png")
    Image.new("RGB", (20, 20)).save(images_dir / "c.png")
    (images_dir / "d.png").write_text("not an image")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
                   {"id": 2, "file_name": "b.png", "width": 10, "height": 10},  # no such file
                   {"id": 3, "file_name": "c.png", "width": 10, "height": 10},  # it is 20 x 20
                   {"id": 4, "file_name": "d.png"},  # not an image
                   {"file_name": "e.png"}],  # no id
        "categories": [{"id": 1, "name": "Cups"}, {"id": 2, "name": "dog"}],
        "annotations": annotations,
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_load_coco_reads_boxes_and_counts_bad_rows(tmp_path):
    rows = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10]},  # cup: (10, 5, 30, 15)
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [0, 0, 50, 50]},  # dog
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [80.5, 40, 20, 10.4]},  # overhangs 0.5, 0.4: clamped
        {"id": 13, "image_id": 1, "category_id": 1, "bbox": [90, 40, 20, 20]},  # outside by 10
        {"id": 14, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]},  # empty
        {"id": 15, "image_id": 1, "category_id": 1, "bbox": "x"},  # malformed
        {"id": 16, "image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2]},  # no category 9
        {"id": 17, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2], "iscrowd": 1},
        {"id": 18, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]},  # its image file is missing
        {"id": 19, "image_id": 77, "category_id": 1, "bbox": [1, 1, 2, 2]},  # no image 77
    ]
    skips = SkipReport()
    records = load_coco(_coco(tmp_path, rows), str(tmp_path / "images"), skips)
    assert dict(skips.reasons) == {"missing_image_file": 1, "image_size_mismatch": 1, "unreadable_image": 1,
                                   "bad_image_row": 1, "bbox_outside_image": 1, "empty_bbox": 1, "bad_bbox": 1,
                                   "unknown_category": 1, "crowd": 1, "unknown_image": 2}
    assert skips.total_rows == 5 + 10
    assert list(records) == ["a.png"]
    record = records["a.png"]
    assert (record.image, record.width, record.height, record.categories) == ("a.png", 100, 50, ["cup", "dog"])
    got = {i.id: (i.box, i.box_1000, i.score) for i in record.instances}
    assert got == {"cup-1": ((10.0, 5.0, 30.0, 15.0), (100, 100, 300, 300), 1.0),
                   "cup-2": ((80.5, 40.0, 100.0, 50.0), (805, 800, 1000, 1000), 1.0),
                   "dog-1": ((0.0, 0.0, 50.0, 50.0), (0, 0, 500, 1000), 1.0)}


def test_load_coco_whole_file_problems_are_messages(tmp_path):
    with pytest.raises(ValueError, match="no such annotations file"):
        load_coco(str(tmp_path / "none.json"), str(tmp_path))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco(str(tmp_path / "bad.json"), str(tmp_path))
    (tmp_path / "list.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"need the lists \['annotations', 'categories'\]"):
        load_coco(str(tmp_path / "list.json"), str(tmp_path))


# --------------------------------------------------------------------------- crops


def test_save_crop_pads_and_clamps(tmp_path):
    image = Image.new("RGB", (100, 50), (0, 0, 0))
    image.paste((255, 0, 0), (10, 5, 30, 15))
    inst = Instance(id="cup-1", category="cup", box=(10.0, 5.0, 30.0, 15.0), box_1000=(100, 100, 300, 300))
    # pad 0.1: 2 px left and right (box 20 wide), 1 px above and below (10 high) -> (8, 4, 32, 16), 24 x 12.
    box = save_crop(image, inst, str(tmp_path / "crops" / "cup-1.png"))
    assert box == (8, 4, 32, 16)
    crop = Image.open(tmp_path / "crops" / "cup-1.png")
    assert crop.format == "PNG" and crop.size == (24, 12)
    assert crop.getpixel((2, 1)) == (255, 0, 0) and crop.getpixel((0, 0)) == (0, 0, 0)
    corner = Instance(id="cup-2", category="cup", box=(90.0, 0.0, 100.0, 10.0), box_1000=(900, 0, 1000, 200))
    assert save_crop(image, corner, str(tmp_path / "c2.png"), pad=0.5) == (85, 0, 100, 15)  # clamped
    assert Image.open(tmp_path / "c2.png").size == (15, 15)
