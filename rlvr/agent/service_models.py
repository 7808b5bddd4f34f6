"""The models behind the tool services: one class per tool, arguments + images in, text + images out.

A service model is anything with ``name``, ``description``, ``parameters`` (a JSON schema of its
arguments) and ``run(arguments, images) -> (text, images)``; ``rlvr.agent.services`` serves one over HTTP.
Arguments come from the policy: the server checks them against ``parameters``
(``rlvr.agent.tools.validate_arguments``) before ``run`` is called. Coordinates are Qwen's 0-1000 of the
image, as for the in-process tools (``rlvr.agent.tools``), in the arguments and in the text replies.

- ``detect``: Grounding DINO through ``rlvr.synth.segment.DetectorSegmenter`` (the project's prompt,
  token spans and box post-processing); the boxes drawn on the image and listed as text.
- ``segment``: SAM (transformers' ``SamModel``, e.g. facebook/sam-vit-base) prompted with one point; the
  best mask drawn on the image, its box and share of the image as text. SAM3 (``rlvr.synth.sam3``) is text-prompted only,
  so the point prompt uses SAM; its PIL processor needs no torchvision.
- ``ocr``: no built-in model (see ``OcrModel``): an interface a deployment fills in.

``make_tiny_grounding_dino`` and ``make_tiny_sam`` build random-weight models from config for tests and demos.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any, Protocol

from PIL import Image, ImageDraw

from rlvr.agent.tools import BBOX, COORD_MAX, ToolArgumentError, box_pixels, to_pixel
from rlvr.synth.records import to_1000

MAX_IMAGE_PIXELS = 4096 * 4096  # per image sent to a service: PIL decodes the whole image into memory
MAX_QUERY_CHARS, MAX_QUERY_NAMES = 200, 10  # the policy writes the query: cap what reaches the text encoder
_COLORS = [(255, 48, 48), (48, 200, 48), (48, 96, 255), (255, 160, 0), (200, 0, 200), (0, 200, 200)]


class ServiceModel(Protocol):
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments the service takes (``image_index`` is the client's)

    def run(self, arguments: dict, images: list[Image.Image]) -> tuple[str, list[Image.Image]]:
        """Work on the last of ``images``; raise ``ToolArgumentError`` with a message for the model on
        arguments that do not fit the image."""


def _image(images: list[Image.Image]) -> Image.Image:
    """The image a service call works on: the last one sent (the client sends the one the call picked)."""
    if not images:
        raise ToolArgumentError("this tool needs an image, and the call carried none")
    return images[-1].convert("RGB")


class DetectModel:
    """Open-vocabulary detection: "cup. red car" -> the boxes of each name, drawn and listed (0-1000)."""

    name = "detect"
    description = ("Detect objects by name in the image. Returns the image with numbered boxes drawn and one line "
                   "per box: its number, name, [x1, y1, x2, y2] in 0-1000 coordinates, score.")
    parameters = {"type": "object", "required": ["query"],
                  "properties": {"query": {"type": "string",
                                           "description": "object names separated by '.', e.g. 'cup. red car'"}}}

    def __init__(self, model_path: str, score_threshold: float = 0.3, max_boxes: int = 20, device: str = "cpu"):
        from rlvr.synth.segment import DetectorSegmenter

        self.detector = DetectorSegmenter(model_path, score_threshold=score_threshold, device=device)
        self.max_boxes = max_boxes

    def run(self, arguments: dict, images: list[Image.Image]) -> tuple[str, list[Image.Image]]:
        image = _image(images)
        query = arguments["query"]
        names = [n for n in (p.strip() for p in query[:MAX_QUERY_CHARS].split(".")) if n][:MAX_QUERY_NAMES]
        if not names:
            raise ToolArgumentError("query names no object; write names separated by '.', e.g. 'cup. red car'")
        found = sorted(self.detector.segment(image, names), key=lambda inst: -inst.score)[: self.max_boxes]
        if not found:
            return f"no {', '.join(names)} found", [image]
        drawn = image.copy()
        draw = ImageDraw.Draw(drawn)
        lines = []
        for k, inst in enumerate(found):
            color = _COLORS[k % len(_COLORS)]
            draw.rectangle([round(v) for v in inst.box], outline=color, width=max(1, min(image.size) // 100))
            draw.text((round(inst.box[0]) + 2, round(inst.box[1]) + 1), str(k + 1), fill=color)
            x1, y1, x2, y2 = inst.box_1000
            lines.append(f"{k + 1}. {inst.category} [{x1}, {y1}, {x2}, {y2}] score {inst.score:.2f}")
        return "\n".join(lines), [drawn]


class SegmentModel:
    """SAM with one foreground point -> the highest-scoring mask, overlaid; its box and area as text."""

    name = "segment"
    description = ("Segment the object at a point of the image. Returns the image with the object's mask overlaid, "
                   "the mask's box [x1, y1, x2, y2] in 0-1000 coordinates and its share of the image.")
    parameters = {"type": "object", "required": ["x", "y"],
                  "properties": {"x": {"type": "number", "minimum": 0, "maximum": COORD_MAX,
                                       "description": "the point's x, 0-1000 from the left edge"},
                                 "y": {"type": "number", "minimum": 0, "maximum": COORD_MAX,
                                       "description": "the point's y, 0-1000 from the top edge"}}}

    def __init__(self, model_path: str, mask_threshold: float = 0.0, device: str = "cpu"):
        from transformers import SamModel, SamProcessor

        self.processor = SamProcessor.from_pretrained(model_path)
        self.model = SamModel.from_pretrained(model_path).to(device).eval()
        self.mask_threshold, self.device = mask_threshold, device

    def run(self, arguments: dict, images: list[Image.Image]) -> tuple[str, list[Image.Image]]:
        import torch

        image = _image(images)
        x, y = to_pixel(arguments["x"], image.width), to_pixel(arguments["y"], image.height)
        inputs = self.processor(images=image, input_points=[[[[x + 0.5, y + 0.5]]]], input_labels=[[[1]]],
                                return_tensors="pt")  # the pixel's centre, in the original's pixels
        with torch.inference_mode():
            out = self.model(pixel_values=inputs["pixel_values"].to(self.device),
                             input_points=inputs["input_points"].to(self.device),
                             input_labels=inputs["input_labels"].to(self.device), multimask_output=True)
        masks = self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"],
                                                  inputs["reshaped_input_sizes"], binarize=False)[0]  # [1, M, H, W]
        best = int(out.iou_scores[0, 0].argmax())
        mask = masks[0, best] > self.mask_threshold  # [H, W]
        area = int(mask.sum())
        where = f"({arguments['x']:g}, {arguments['y']:g})"
        if area == 0:
            return f"no object found at {where}", [image]
        ys, xs = torch.nonzero(mask, as_tuple=True)
        box = to_1000((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), image.width, image.height)
        overlay = Image.new("RGB", image.size, _COLORS[0])
        alpha = Image.fromarray((mask.numpy() * 110).astype("uint8"), mode="L")
        drawn = Image.composite(overlay, image, alpha)
        return (f"object at {where}: box [{box[0]}, {box[1]}, {box[2]}, {box[3]}], "
                f"{100 * area / (image.width * image.height):.1f}% of the image, "
                f"score {float(out.iou_scores[0, 0, best]):.2f}"), [drawn]


class OcrModel:
    """OCR: an interface without a built-in model.

    transformers' OCR classes that build from config with random weights here either need a tokenizer and
    generation settings fitted to a real checkpoint to say anything (TrOCR, Florence-2, GOT-OCR2) or need
    torchvision (the PP-OCR detectors), and a random-weight OCR model would only test the plumbing the
    detect tests already cover. A deployment subclasses this, implements ``read(image) -> text`` (and an
    ``__init__`` that loads its model) and serves it with ``rlvr.agent.services.serve``.
    """

    name = "ocr"
    description = "Read the text in the image, or in a box of it. Returns the text."
    parameters = {"type": "object", "properties": {"bbox_2d": BBOX}}

    def __init__(self, model_path: str, device: str = "cpu"):
        raise ValueError("the ocr service has no built-in model: subclass rlvr.agent.service_models.OcrModel, "
                         "implement read(image) -> text, and serve it with rlvr.agent.services.serve(...)")

    def read(self, image: Image.Image) -> str:
        raise NotImplementedError

    def run(self, arguments: dict, images: list[Image.Image]) -> tuple[str, list[Image.Image]]:
        image = _image(images)
        if "bbox_2d" in arguments:
            image = image.crop(box_pixels(arguments["bbox_2d"], image.width, image.height))
        return self.read(image), []


MODELS: dict[str, type] = {"detect": DetectModel, "segment": SegmentModel, "ocr": OcrModel}


def load_model(tool: str, model_path: str, device: str = "cpu", **options: Any) -> ServiceModel:
    """The service model of ``tool`` from ``model_path``; unknown tools and missing folders are messages."""
    if tool not in MODELS:
        raise ValueError(f"unknown tool {tool!r}; the built-in service tools are {sorted(MODELS)}")
    if tool != "ocr" and not (os.path.isdir(model_path) or "/" in model_path):
        raise ValueError(f"--model {model_path!r} is neither a folder nor a hub id (org/name)")
    return MODELS[tool](model_path, device=device, **options)


# --------------------------------------------------------------------------- images on the wire


def encode_image(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # the default took 4x as long on a noise image
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """base64 PNG/JPEG -> RGB image; ``ValueError`` with a message on anything else or on too many pixels."""
    try:
        raw = base64.b64decode(data, validate=True)
        image = Image.open(io.BytesIO(raw))  # reads the header only: the size is known before decoding
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as e:  # OSError: not an image
        raise ValueError(f"not a base64 image ({type(e).__name__}: {e})") from None
    if image.width * image.height > max_pixels:
        raise ValueError(f"image is {image.width}x{image.height}, over the service's {max_pixels} pixels")
    try:
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # a truncated file
        raise ValueError(f"image could not be decoded ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- tiny random-weight models


def make_tiny(tool: str) -> str:
    """A random-weight model of ``tool`` in a fresh temporary folder (``--tiny``: a service to try the wiring)."""
    import tempfile

    makers = {"detect": make_tiny_grounding_dino, "segment": make_tiny_sam}
    if tool not in makers:
        raise ValueError(f"--tiny builds {sorted(makers)} models, not {tool!r}")
    return makers[tool](tempfile.mkdtemp(prefix=f"tiny-{tool}-"))


def make_tiny_grounding_dino(out: str, seed: int = 0) -> str:
    """A random-weight Grounding DINO (swin + 1-layer BERT, 8 queries) with its processor, saved to ``out``.

    The vocabulary keeps BERT's ids for [CLS] 101, [SEP] 102, "." 1012 and "?" 1029 (the model masks text by
    them); a few object words have their own ids, anything else is [UNK].
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    vocab = {f"[unused{i}]": i for i in range(1030)}
    for word, i in {"[PAD]": 0, "circle": 1, "cup": 2, "square": 3, "digit": 4, "[UNK]": 100, "[CLS]": 101,
                    "[SEP]": 102, ".": 1012, "?": 1029}.items():
        del vocab[f"[unused{i}]"]
        vocab[word] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                        pad_token="[PAD]", unk_token="[UNK]")
    config = GroundingDinoConfig(
        backbone_config={"model_type": "swin", "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1],
                         "window_size": 2, "image_size": 32, "out_features": ["stage1", "stage2"]},
        text_config={"model_type": "bert", "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64},
        num_queries=8, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, d_model=32, num_feature_levels=2,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32)
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(out)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 48})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def make_tiny_sam(out: str, seed: int = 0) -> str:
    """A random-weight SAM (64-pixel ViT, 2 layers) with its PIL processor, saved to ``out``."""
    import torch
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    config = SamConfig(
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 64,
                       "image_size": 64, "patch_size": 8, "output_channels": 16, "window_size": 4,
                       "global_attn_indexes": [1], "num_pos_feats": 8},
        prompt_encoder_config={"hidden_size": 16, "image_size": 64, "patch_size": 8, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 32,
                             "iou_head_hidden_dim": 16})
    torch.manual_seed(seed)
    SamModel(config).save_pretrained(out)
    processor = SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    SamProcessor(image_processor=processor).save_pretrained(out)
    return out
