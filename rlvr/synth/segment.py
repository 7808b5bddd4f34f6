"""Stage 2, instances: categories -> instances (box, 0-1000 box, score, mask), or the dataset's own boxes.

Three sources, one record (``rlvr.synth.records.Instance``):

- ``Sam3Segmenter``: SAM3 (transformers' ``Sam3Model``) prompted with each category name; masks,
  boxes and scores through our own pre/post-processing (``rlvr.synth.sam3``).
- ``DetectorSegmenter``: Grounding DINO, an open-vocabulary detector from transformers (its PIL
  processor needs no torchvision); boxes only, ``mask`` None.
- ``load_coco``: COCO-style JSON with boxes already drawn (skips stages 1 and 2).

Instance ids are ``"<category>-<k>"``, k from 1 per category in the order of the scores (of the
file, for COCO). ``save_crop`` writes the padded crop each instance keeps for the query writer.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
from abc import ABC, abstractmethod

from PIL import Image

from rlvr.data import SkipReport
from rlvr.synth.records import ImageRecord, Instance, to_1000

logger = logging.getLogger(__name__)

# Plural -> singular where the simple rules below would get it wrong.
_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "geese": "goose", "teeth": "tooth", "feet": "foot", "knives": "knife", "leaves": "leaf",
              "shelves": "shelf", "wolves": "wolf", "sheep": "sheep", "fish": "fish", "dice": "die"}
# Words that end in s in the singular, or have no singular in use.
_KEEP = {"glasses", "scissors", "pants", "jeans", "shorts", "trousers", "bus", "gas", "lens", "news",
         "species", "series", "skis", "chess", "grass", "glass", "dress", "cross", "compass"}


def normalize_category(name: str) -> str:
    """A category as the stages compare them: lower case, single spaces, no edge punctuation,
    its last word singular where the rule is simple ("red cups" -> "red cup", "boxes" -> "box")."""
    words = re.sub(r"\s+", " ", str(name).strip().lower().strip(" .,;:!?\"'`()[]{}")).split(" ")
    last = words[-1]
    if last in _IRREGULAR:
        last = _IRREGULAR[last]
    elif last in _KEEP or len(last) <= 3 or last.endswith(("ss", "us", "is")):
        pass
    elif last.endswith("ies"):
        last = last[:-3] + "y"
    elif last.endswith(("ches", "shes", "xes", "zes", "sses")):
        last = last[:-2]
    elif last.endswith("s"):
        last = last[:-1]
    return " ".join(words[:-1] + [last])


def make_instances(category: str, found: list[tuple[float, tuple[float, float, float, float], dict | None]],
                   width: int, height: int, min_side: float = 1.0) -> tuple[list[Instance], int]:
    """(score, pixel box, mask RLE) per detection -> Instances of ``category``, best score first,
    ids ``<category>-<k>``. Boxes thinner than ``min_side`` pixels are dropped; returns (instances, dropped)."""
    out, dropped = [], 0
    for score, box, mask in sorted(found, key=lambda f: -f[0]):
        x0, y0, x1, y1 = (min(max(v, 0.0), lim) for v, lim in zip(box, (width, height, width, height)))
        if x1 - x0 < min_side or y1 - y0 < min_side:
            dropped += 1
            continue
        out.append(Instance(id=f"{category}-{len(out) + 1}", category=category, box=(x0, y0, x1, y1),
                            box_1000=to_1000((x0, y0, x1, y1), width, height), score=round(float(score), 6),
                            mask=mask))
    return out, dropped


class Segmenter(ABC):
    """Categories of one image -> its instances. ``skips`` counts what was found and dropped, by reason."""

    name: str = "segmenter"

    def __init__(self) -> None:
        self.skips: collections.Counter = collections.Counter()

    @abstractmethod
    def segment(self, image: Image.Image, categories: list[str]) -> list[Instance]:
        """Instances of each category (normalised, de-duplicated), ids ``<category>-<k>``."""

    @staticmethod
    def _categories(categories: list[str]) -> list[str]:
        return list(dict.fromkeys(c for c in (normalize_category(c) for c in categories) if c))


class Sam3Segmenter(Segmenter):
    """SAM3 with a text prompt per category; masks as COCO RLE at the image's size.

    model_path: a local copy of facebook/sam3 (or any ``Sam3Model`` checkpoint) or its hub id.
    """

    name = "sam3"

    def __init__(self, model_path: str, score_threshold: float = 0.5, mask_threshold: float = 0.5,
                 device: str = "cpu", dtype: str | None = None):
        from rlvr.synth import sam3

        super().__init__()
        self.score_threshold, self.mask_threshold, self.device = score_threshold, mask_threshold, device
        self.model, self.tokenizer, self.settings = sam3.load_sam3(model_path, device, dtype)

    def segment(self, image: Image.Image, categories: list[str]) -> list[Instance]:
        import torch

        from rlvr.synth import sam3

        width, height = image.size
        categories = self._categories(categories)
        if not categories:
            return []
        pixels = sam3.preprocess_image(image, self.settings).to(self.device, self.model.dtype)
        out: list[Instance] = []
        with torch.inference_mode():
            vision = self.model.get_vision_features(pixel_values=pixels)  # once per image, reused per prompt
            for category in categories:
                ids, attention = sam3.tokenize_prompts(self.tokenizer, [category], self.settings.text_length)
                raw = self.model(vision_embeds=vision, input_ids=ids.to(self.device),
                                 attention_mask=attention.to(self.device))
                found = sam3.postprocess(
                    raw.pred_logits[0].cpu(), None if raw.presence_logits is None else raw.presence_logits[0].cpu(),
                    raw.pred_boxes[0].cpu(), raw.pred_masks[0].cpu(), width, height,
                    self.score_threshold, self.mask_threshold)
                kept, dropped = make_instances(
                    category, [(d.score, d.box, sam3.mask_to_rle(d.mask) if d.mask is not None else None)
                               for d in found], width, height)
                if dropped:
                    self.skips["degenerate_box"] += dropped
                out.extend(kept)
        return out


class DetectorSegmenter(Segmenter):
    """Grounding DINO (transformers' ``GroundingDinoForObjectDetection``, e.g. IDEA-Research/grounding-dino-base):
    boxes and scores, no masks. Its PIL image processor needs no torchvision.

    The categories go in as one prompt, "a. b. c."; as in the official post-processing a query's score is
    its highest token probability and its box the model's cxcywh box scaled to the image. Its category is
    the one whose tokens hold that query's highest probability (the official post-processing returns the
    phrase of every token above ``text_threshold`` instead, which can span two names).
    (OWLv2's PIL processor needs scipy, absent here, so it is not offered.)
    """

    name = "detector"

    def __init__(self, model_path: str, score_threshold: float = 0.3, device: str = "cpu"):
        from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

        super().__init__()
        kind = AutoConfig.from_pretrained(model_path).model_type
        if kind != "grounding-dino":
            raise ValueError(f"detector {model_path!r} is a {kind!r} model; DetectorSegmenter runs Grounding DINO "
                             "checkpoints (IDEA-Research/grounding-dino-base), or use Sam3Segmenter")
        self.score_threshold, self.device = score_threshold, device
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model_path).to(device).eval()

    def segment(self, image: Image.Image, categories: list[str]) -> list[Instance]:
        import torch

        image = image.convert("RGB")
        names = self._categories([c.replace(".", " ") for c in categories])
        if not names:
            return []
        inputs = self.processor(images=image, text=". ".join(names) + ".", return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(**inputs.to(self.device))
        spans = category_spans(inputs["input_ids"][0].tolist(), len(names), self.processor.tokenizer)
        found = grounded_detections(outputs.logits[0].float().cpu(), outputs.pred_boxes[0].float().cpu(), spans,
                                    image.width, image.height, self.score_threshold)
        out: list[Instance] = []
        for k, name in enumerate(names):
            kept, dropped = make_instances(name, [(s, b, None) for s, b, c in found if c == k], image.width,
                                           image.height)
            if dropped:
                self.skips["degenerate_box"] += dropped
            out.extend(kept)
        return out


def category_spans(input_ids: list[int], n: int, tokenizer) -> list[list[int]]:
    """Token positions of each of the ``n`` names in "a. b. c." (between the special tokens and the dots)."""
    stops = set(tokenizer.all_special_ids) | {tokenizer.convert_tokens_to_ids(".")}
    spans: list[list[int]] = [[]]
    for pos, tid in enumerate(input_ids):
        if tid in stops:
            if spans[-1]:
                spans.append([])
        else:
            spans[-1].append(pos)
    spans = [s for s in spans if s]
    if len(spans) != n:
        raise ValueError(f"the detector prompt tokenised into {len(spans)} names, not {n}: {input_ids}")
    return spans


def grounded_detections(logits, boxes, spans: list[list[int]], width: int, height: int,
                        threshold: float) -> list[tuple[float, tuple, int]]:
    """Grounding DINO's outputs for one image -> (score, pixel xyxy box, category index) above ``threshold``.

    logits [Q, max_text_len] (token logits), boxes [Q, 4] normalised cxcywh.
    """
    import torch

    probs = logits.sigmoid()  # [Q, T]
    scores = probs.max(dim=-1).values  # [Q], as the official post-processing
    per_category = torch.stack([probs[:, span].max(dim=-1).values for span in spans], dim=-1)  # [Q, C]
    best = per_category.argmax(dim=-1)  # [Q]
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    xyxy = xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype)  # [Q, 4] pixels
    return [(float(scores[q]), tuple(float(v) for v in xyxy[q]), int(best[q]))
            for q in range(len(scores)) if scores[q] > threshold]


def save_crop(image: Image.Image, instance: Instance, path: str, pad: float = 0.1) -> tuple[int, int, int, int]:
    """Save the instance's box, widened by ``pad`` times its width (left and right) and height (top and
    bottom), clamped to the image, as a PNG at ``path``. Returns the crop's pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = instance.box
    pad_x, pad_y = pad * (x1 - x0), pad * (y1 - y0)
    box = (max(0, math.floor(x0 - pad_x)), max(0, math.floor(y0 - pad_y)),
           min(image.width, math.ceil(x1 + pad_x)), min(image.height, math.ceil(y1 + pad_y)))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"instance {instance.id}: box {instance.box} is outside the {image.width}x{image.height} image")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    crop = image.crop(box)
    crop.convert("RGBA" if crop.mode in ("RGBA", "LA", "P") else "RGB").save(path, format="PNG")
    return box


# --------------------------------------------------------------------------- bring your own boxes (COCO)


def _read_coco(annotations_json: str) -> dict:
    """The JSON object, or a ValueError saying what is wrong with the file as a whole."""
    try:
        with open(annotations_json, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{annotations_json}: no such annotations file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{annotations_json}: not valid JSON ({e}); expected COCO's "
                         '{"images": [...], "annotations": [...], "categories": [...]}') from None
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{annotations_json}: COCO annotations need the lists {missing} at the top level")
    return data


def _coco_images(data: dict, images_dir: str, skips: SkipReport, where: str) -> dict:
    """image id -> (file name, width, height) for the rows whose file exists and matches its stated size."""
    images: dict = {}
    for i, row in enumerate(data["images"]):
        at = f"{where} images[{i}]"
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("file_name"), str):
            skips.add("bad_image_row", f"{at}: needs an id and a file_name")
            continue
        if row["id"] in images:
            skips.add("duplicate_image_id", f"{at}: image id {row['id']} appears twice; the first is kept")
            continue
        path = os.path.join(images_dir, row["file_name"])
        if not os.path.isfile(path):
            skips.add("missing_image_file", f"{at}: {path} does not exist")
            continue
        try:
            with Image.open(path) as im:
                width, height = im.size
        except OSError as e:
            skips.add("unreadable_image", f"{at}: {path} is not a readable image ({e})")
            continue
        stated = (row.get("width", width), row.get("height", height))
        if stated != (width, height):
            skips.add("image_size_mismatch", f"{at}: {path} is {width}x{height}, the JSON says "
                      f"{stated[0]}x{stated[1]}; its boxes would be misplaced")
            continue
        images[row["id"]] = (row["file_name"], width, height)
    return images


def _coco_box(row: dict, width: int, height: int, tolerance: float = 1.0) -> tuple[str, tuple | None]:
    """(reason, None) for a bad bbox, ("", pixel xyxy clamped to the image) for a good one."""
    bbox = row.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
        return "bad_bbox", None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return "empty_bbox", None
    # COCO's float boxes can overhang by a fraction of a pixel; more than that is a wrong box.
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        return "bbox_outside_image", None
    return "", (max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h))


def load_coco(annotations_json: str, images_dir: str, skips: SkipReport | None = None) -> dict[str, ImageRecord]:
    """COCO-style JSON (images, annotations with bbox [x, y, w, h] in pixels, categories) -> an ImageRecord
    per image file name (relative to ``images_dir``), instances ``<category>-<k>`` in the file's order
    (by ``score`` first where the rows have one), categories normalised.

    Bad rows are skipped, counted by reason in ``skips`` and logged once per reason: missing or unreadable
    image file, image size unlike the JSON's, unknown image or category id, crowd regions, malformed,
    empty or out-of-image boxes. A file that is not COCO JSON at all raises ValueError.
    """
    skips = skips if skips is not None else SkipReport()
    data = _read_coco(annotations_json)
    where = os.path.basename(annotations_json)
    skips.total_rows += len(data["images"]) + len(data["annotations"])
    categories = {}
    for row in data["categories"]:
        if isinstance(row, dict) and "id" in row and normalize_category(row.get("name", "")):
            categories[row["id"]] = normalize_category(row["name"])
    images = _coco_images(data, images_dir, skips, where)
    found: dict = collections.defaultdict(lambda: collections.defaultdict(list))  # image id -> category -> boxes
    for i, row in enumerate(data["annotations"]):
        at = f"{where} annotations[{i}]"
        if not isinstance(row, dict) or row.get("image_id") not in images:
            skips.add("unknown_image", f"{at}: image_id {row.get('image_id') if isinstance(row, dict) else None!r} "
                      "is not among the usable images (absent, or skipped above)")
            continue
        if row.get("category_id") not in categories:
            skips.add("unknown_category", f"{at}: category_id {row.get('category_id')!r} is not in categories")
            continue
        if row.get("iscrowd"):
            skips.add("crowd", f"{at}: a crowd region is not one instance")
            continue
        _, width, height = images[row["image_id"]]
        reason, box = _coco_box(row, width, height)
        if box is None:
            skips.add(reason, f"{at}: bbox {row.get('bbox')!r} ({reason.replace('_', ' ')} "
                      f"for a {width}x{height} image)")
            continue
        score = row.get("score", 1.0)
        score = float(score) if isinstance(score, (int, float)) else 1.0
        found[row["image_id"]][categories[row["category_id"]]].append((score, box, None))
    records = {}
    for image_id, (file_name, width, height) in images.items():
        record = ImageRecord(image=file_name, width=width, height=height)
        for category, boxes in found[image_id].items():
            kept, _ = make_instances(category, boxes, width, height, min_side=0.0)
            record.categories.append(category)
            record.instances.extend(kept)
        records[file_name] = record
    if skips.skipped:
        logger.warning("%s: %s", where, skips.summary())
    return records
