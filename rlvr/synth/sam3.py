"""SAM3 (transformers' ``Sam3Model``) without its processor: our own pre- and post-processing.

transformers' ``Sam3ImageProcessor`` imports torchvision (its resize, and ``batched_nms`` at
import time), which has no CPU build on some machines; the model itself does not need it.
What the official processor does, and what this module does the same way:

- image: RGB (transparency composited onto white), resized to the model's input size (1008 x 1008 for facebook/sam3) with bilinear,
  antialiased interpolation of the uint8 image (torchvision's CPU path: ``F.interpolate`` on
  uint8), then ``x / 255``, then ``(x - mean) / std`` (mean = std = 0.5 per channel) -> [1, 3, H, W]
  float32 in [-1, 1]. The aspect ratio is not kept (SAM3 is trained on squashed squares).
- text: the prompt (the category name) through the checkpoint's CLIP tokenizer, padded to 32
  tokens (``padding="max_length"``), with its attention mask.
- outputs (``post_process_instance_segmentation``): score = sigmoid(pred_logits) *
  sigmoid(presence_logits) (the presence head says whether the category is in the image at
  all; the query logit whether this query is one of them); keep score > threshold; boxes are
  the model's normalised xyxy boxes times (W, H, W, H); masks: sigmoid of the mask logits,
  bilinear (align_corners=False) to the original H x W, then > mask_threshold. No non-maximum
  suppression: SAM3's detector is DETR-style (one-to-one matching) and its official
  post-processing runs none.

``make_tiny_sam3`` writes a random-weight SAM3 with a small word-level tokenizer for tests and
the demo (nothing is downloaded).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Sam3ImageProcessor's defaults (IMAGENET_STANDARD_MEAN / _STD, 1 / 255, 1008 x 1008).
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
DEFAULT_RESCALE = 1 / 255
TEXT_LENGTH = 32  # Sam3Processor pads every prompt to 32 tokens


@dataclass
class Sam3Settings:
    """What the official processor would do for this checkpoint."""

    height: int
    width: int
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    rescale: float = DEFAULT_RESCALE
    text_length: int = TEXT_LENGTH


@dataclass
class Detection:
    """One kept query: its score, its box in pixels (x0, y0, x1, y1) and its mask at the image's size."""

    score: float
    box: tuple[float, float, float, float]
    mask: torch.Tensor | None  # bool [H, W]


def preprocess_image(image: Image.Image, settings: Sam3Settings) -> torch.Tensor:
    """PIL image -> pixel_values [1, 3, H, W] float32, as Sam3ImageProcessor makes them."""
    from transformers.image_transforms import convert_to_rgb  # the processor's own: transparency onto white

    pixels = torch.from_numpy(np.asarray(convert_to_rgb(image, return_numpy=True), dtype=np.uint8).copy())  # [h, w, 3]
    pixels = pixels.permute(2, 0, 1).unsqueeze(0).contiguous()  # [1, 3, h, w]
    if tuple(pixels.shape[-2:]) != (settings.height, settings.width):
        # uint8 in, uint8 out (rounded): torchvision's resize of a uint8 CPU tensor does exactly this.
        pixels = F.interpolate(pixels, size=(settings.height, settings.width), mode="bilinear",
                               align_corners=False, antialias=True)
    mean = torch.tensor(settings.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(settings.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels.float() * settings.rescale - mean) / std  # [1, 3, H, W]


def tokenize_prompts(tokenizer, prompts: list[str], length: int = TEXT_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (input_ids, attention_mask), each [N, length], as Sam3Processor pads them."""
    enc = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def postprocess(pred_logits: torch.Tensor, presence_logit: torch.Tensor | None, pred_boxes: torch.Tensor,
                pred_masks: torch.Tensor | None, width: int, height: int,
                score_threshold: float = 0.5, mask_threshold: float = 0.5) -> list[Detection]:
    """One image's raw SAM3 outputs -> detections above the threshold, best first.

    pred_logits [Q]; presence_logit [1] or None; pred_boxes [Q, 4] normalised xyxy;
    pred_masks [Q, h, w] logits or None. Boxes are clamped to the image.
    """
    scores = pred_logits.float().sigmoid()  # [Q]
    if presence_logit is not None:
        scores = scores * presence_logit.float().sigmoid().reshape(())  # the image-level presence
    keep = torch.nonzero(scores > score_threshold).flatten()
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = pred_boxes.float()[keep] * scale  # [K, 4] pixels
    boxes = torch.minimum(boxes.clamp(min=0), scale)
    masks = None
    if pred_masks is not None and len(keep):
        probs = pred_masks.float()[keep].sigmoid().unsqueeze(0)  # [1, K, h, w]
        probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
        masks = probs[0] > mask_threshold  # [K, H, W]
    return [Detection(score=float(scores[q]), box=tuple(float(v) for v in boxes[i]),  # type: ignore[arg-type]
                      mask=None if masks is None else masks[i]) for i, q in enumerate(keep.tolist())]


def mask_to_rle(mask: torch.Tensor) -> dict:
    """Bool mask [H, W] -> COCO's uncompressed RLE: column-major runs, starting with a run of 0s."""
    height, width = mask.shape
    flat = mask.t().reshape(-1).to(torch.int8)  # column-major, as pycocotools
    change = torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1
    edges = [0] + change.tolist() + [flat.numel()]
    counts = [b - a for a, b in zip(edges[:-1], edges[1:])]
    if flat.numel() and flat[0]:
        counts = [0] + counts
    return {"size": [int(height), int(width)], "counts": counts}


def rle_to_mask(rle: dict) -> torch.Tensor:
    """The inverse of ``mask_to_rle``."""
    height, width = rle["size"]
    values = torch.tensor([i % 2 for i in range(len(rle["counts"]))], dtype=torch.bool)
    flat = torch.repeat_interleave(values, torch.tensor(rle["counts"], dtype=torch.long))
    return flat.reshape(width, height).t()


def read_settings(model_path: str, config) -> Sam3Settings:
    """The checkpoint's processor settings (preprocessor_config.json or processor_config.json), else defaults."""
    size = config.image_size if hasattr(config, "image_size") else config.vision_config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    found: dict[str, Any] = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = os.path.join(model_path, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            found = data.get("image_processor", data)
            break
    size_cfg = found.get("size") or {}
    height, width = size_cfg.get("height", height), size_cfg.get("width", width)
    rescale = found.get("rescale_factor", DEFAULT_RESCALE) if found.get("do_rescale", True) else 1.0
    mean, std = found.get("image_mean", DEFAULT_MEAN), found.get("image_std", DEFAULT_STD)
    if not found.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Sam3Settings(height=int(height), width=int(width), mean=tuple(mean), std=tuple(std), rescale=rescale)


def load_sam3(model_path: str, device: str = "cpu", dtype: str | None = None):
    """(model, tokenizer, settings) from a local folder or hub id of a SAM3 checkpoint."""
    from transformers import AutoTokenizer, Sam3Model

    if not os.path.isdir(model_path) and (os.path.isabs(model_path) or model_path.startswith(".")
                                          or model_path.count("/") != 1):
        raise ValueError(f"SAM3 model {model_path!r}: not a folder and not a hub id (owner/name); "
                         "download facebook/sam3 (gated: accept its licence on the hub) or point to a local copy")
    torch_dtype = getattr(torch, dtype) if dtype else None
    model = Sam3Model.from_pretrained(model_path, dtype=torch_dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    local = model_path if os.path.isdir(model_path) else _hub_folder(model_path)
    return model, tokenizer, read_settings(local, model.config)


def _hub_folder(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, allow_patterns=["*.json"])


def _tiny_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|startoftext|>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # CLIP's layout: <|startoftext|> prompt <|endoftext|>, padded with <|endoftext|>.
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>")


def make_tiny_sam3(out: str, seed: int = 0, image_size: int = 56, num_queries: int = 8,
                   words: tuple[str, ...] = ("circle", "square", "triangle", "star", "cup", "car", "person")) -> str:
    """Write a random-weight SAM3 (hidden size 32, 56 x 56 input) with a word-level tokenizer; returns ``out``."""
    from transformers import Sam3Config, Sam3Model

    tokenizer = _tiny_tokenizer(list(words))
    small = {"hidden_size": 32, "num_attention_heads": 2}
    layer = {**small, "num_layers": 1, "intermediate_size": 64}
    grid = image_size // 14  # the ViT's patches per side; the FPN makes 4x, 2x, 1x of it
    config = Sam3Config(
        vision_config={"backbone_config": {"model_type": "sam3_vit_model", **small, "intermediate_size": 64,
                                           "num_hidden_layers": 2, "image_size": image_size, "patch_size": 14,
                                           "window_size": 2, "global_attn_indexes": [1],
                                           "pretrain_image_size": image_size},
                       "fpn_hidden_size": 32, "backbone_feature_sizes": [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2]},
        text_config={"model_type": "clip_text_model", **small, "vocab_size": len(tokenizer), "intermediate_size": 64,
                     "projection_dim": 32, "num_hidden_layers": 1, "max_position_embeddings": TEXT_LENGTH,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        geometry_encoder_config=layer, detr_encoder_config=layer,
        detr_decoder_config={**layer, "num_queries": num_queries}, mask_decoder_config=small)
    torch.manual_seed(seed)
    Sam3Model(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(os.path.join(out, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump({"image_processor_type": "Sam3ImageProcessor", "size": {"height": image_size, "width": image_size},
                   "image_mean": list(DEFAULT_MEAN), "image_std": list(DEFAULT_STD), "rescale_factor": DEFAULT_RESCALE,
                   "do_rescale": True, "do_normalize": True, "do_resize": True}, f, indent=1)
    return out
