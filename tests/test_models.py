"""Tiny models load with from_pretrained; processors survive a save and load."""

import json
import os
import subprocess
import sys

import torch

from rlvr.models import FAMILIES, load_model, load_processor, save_processor, stop_token_ids, torchvision_available


def test_tiny_model_loads_from_its_folder(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert model.config.model_type in FAMILIES
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    processor = load_processor(tiny_model_dir)
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    assert len(tok) == model.config.get_text_config().vocab_size
    # Digits are single tokens, as in Qwen's tokenizer.
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(processor, model)


def test_processor_round_trip_and_pixel_limits(qwen25_dir, tmp_path):
    processor = load_processor(qwen25_dir, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    assert processor.image_processor.size.longest_edge == 28 * 28 * 16
    save_processor(processor, str(tmp_path))
    again = load_processor(str(tmp_path))
    assert again.chat_template == processor.chat_template
    assert again.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    if not torchvision_available():
        assert again.video_processor is None
        with open(tmp_path / "processor_config.json") as f:
            assert json.load(f)["processor_class"] == type(processor).__name__


def test_make_tiny_model_cli_is_deterministic(tmp_path):
    for out in ("a", "b"):
        subprocess.run([sys.executable, "-m", "rlvr.devtools.make_tiny_model", "--family", "qwen2_vl",
                        "--out", str(tmp_path / out)], check=True, capture_output=True)
    a, b = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
