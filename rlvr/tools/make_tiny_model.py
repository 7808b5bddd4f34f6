"""Write a tiny random-weight Qwen-VL model, with its tokenizer and processor, using only local code.

    python -m rlvr.tools.make_tiny_model --family qwen2_5_vl --out runs/tiny-qwen2_5_vl

The result loads with ``AutoModelForImageTextToText.from_pretrained(DIR)`` and
``rlvr.models.load_processor(DIR)``. The demo and the tests use it: nothing is downloaded.

The tokenizer is a byte-level BPE trained here on a small built-in corpus, with the
special tokens and chat layout of the Qwen-VL family. Digits are always single tokens,
as in Qwen's tokenizer, so a number is spelled digit by digit.
"""

from __future__ import annotations

import argparse
import os

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen-VL's chat layout: every turn is <|im_start|>role\n...<|im_end|>\n, and an image is
# <|vision_start|><|image_pad|><|vision_end|> (the processor expands <|image_pad|> to one
# token per merged patch).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)

_CORPUS = [
    "Think step by step. Put your final answer, a single number, in \\boxed{}.",
    "What digit does the colour of the square stand for? The answer is 7.",
    "How many objects are in the image? Count them, then add the number on the sign.",
    "The red cube is left of the blue sphere; there are 3 green cylinders and 12 cubes.",
    "First, find the largest shape. Then read its label. So the total is \\boxed{42}.",
    "Answer: 5. The final answer is \\frac{1}{2} or 0.5, about 50% of the area in cm.",
    "system user assistant You are a helpful assistant that reasons about images.",
]

# Default sizes: small enough to train the demo on 2 CPU cores in minutes.
TEXT_SIZES = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
VISION_SIZES = dict(depth=2, hidden_size=64, num_heads=2)


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


def build_processor(family: str, tokenizer):
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from rlvr.models import FAMILIES, _allow_missing_video_processor, torchvision_available

    # Small images by default: 56x56 to 224x224 pixels, i.e. 4 to 64 image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=224 * 224)
    cls = getattr(transformers, FAMILIES[family].processor_class)
    video_processor = None
    if torchvision_available():
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor()
    with _allow_missing_video_processor():
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                   chat_template=CHAT_TEMPLATE)


def build_config(family: str, tokenizer, text: dict | None = None, vision: dict | None = None):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {**TEXT_SIZES, **(text or {})}
    vision = {**VISION_SIZES, **(vision or {})}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    # M-RoPE splits the rotary half-dimension into (temporal, height, width) sections.
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text_config = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        **text,
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    if family == "qwen2_5_vl":
        vision_config = dict(
            depth=vision["depth"], hidden_size=vision["hidden_size"], intermediate_size=2 * vision["hidden_size"],
            num_heads=vision["num_heads"], out_hidden_size=text["hidden_size"], patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[vision["depth"] - 1],
        )
        return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **common)
    if family == "qwen2_vl":
        vision_config = dict(
            depth=vision["depth"], embed_dim=vision["hidden_size"], hidden_size=text["hidden_size"], mlp_ratio=2,
            num_heads=vision["num_heads"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        )
        return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **common)
    raise ValueError(f"unknown family {family!r}; choose from qwen2_vl, qwen2_5_vl")


def make_tiny_model(family: str, out: str, seed: int = 0, text: dict | None = None, vision: dict | None = None) -> str:
    """Write a tiny random model of ``family`` with its processor to ``out``; returns ``out``."""
    import torch
    from transformers import AutoModelForImageTextToText

    from rlvr.models import save_processor

    tokenizer = build_tokenizer()
    processor = build_processor(family, tokenizer)
    config = build_config(family, tokenizer, text, vision)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    gen = model.generation_config
    gen.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    save_processor(processor, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=["qwen2_vl", "qwen2_5_vl"])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=TEXT_SIZES["hidden_size"])
    parser.add_argument("--layers", type=int, default=TEXT_SIZES["num_hidden_layers"])
    parser.add_argument("--vision-depth", type=int, default=VISION_SIZES["depth"])
    args = parser.parse_args(argv)
    text = {"hidden_size": args.hidden_size, "num_hidden_layers": args.layers,
            "intermediate_size": 4 * args.hidden_size}
    make_tiny_model(args.family, args.out, args.seed, text=text, vision={"depth": args.vision_depth})
    print(f"wrote a tiny {args.family} model to {args.out}")


if __name__ == "__main__":
    main()
