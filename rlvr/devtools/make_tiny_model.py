"""Write a tiny random-weight Qwen-VL model, with its tokenizer and processor, using only local code.

    python -m rlvr.devtools.make_tiny_model --family qwen2_5_vl --out runs/tiny-qwen2_5_vl

Families: qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5 (dense, hybrid linear/full attention).
The result loads with ``AutoModelForImageTextToText.from_pretrained(DIR)`` and
``rlvr.models.load_processor(DIR)``. The demo and the tests use it: nothing is downloaded.

The tokenizer is a byte-level BPE trained here on a small built-in corpus, with the
special tokens and chat layout of the family. Digits are always single tokens, as in
Qwen's tokenizer, so a number is spelled digit by digit. What each family keeps of its
real architecture (so the code paths that matter run): Qwen2-VL's and Qwen2.5-VL's 14-px
patches and M-RoPE sections; Qwen3-VL's 16-px patches, learned vision position grid,
interleaved M-RoPE and DeepStack features injected into the first decoder layer;
Qwen3.5's alternating gated-delta-net (linear attention) and gated full-attention layers
with partial rotary dimensions.

For vLLM on CPU (tests/vllm): its attention accepts head sizes 32, 64, 80, 96, 112, 128, 160,
192, 224, 256 and 512 only, and its Qwen3.5 gated-delta-net kernel not 32 either; the default
hidden size 64 gives 16. ``--hidden-size 128`` (256 for qwen3_5) loads there: ``vllm_text_sizes``.
"""

from __future__ import annotations

import argparse
import os

FAMILY_NAMES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")

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
# Qwen3-generation tokenizers also carry the reasoning markers (Qwen3.5 opens every answer with one).
THINK_TOKENS = ["<think>", "</think>"]


# Qwen2.5's and Qwen3's tokenizers carry the tool-call markers as added (not special) tokens, so
# ``</tool_call>`` is one token the rollout stops at and decoding keeps them. ``--tool-tokens`` adds
# them, and tool-call text to the BPE corpus so a call is a short token sequence.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
_TOOL_CORPUS = [
    '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [100, 250, 300, 500], "factor": 4}}\n</tool_call>',
    '<tool_response>\nZoomed into the region. Cropped region, pixels\n</tool_response>',
    "top-left top-right bottom-left bottom-right square colour digit",
]


def special_tokens(family: str) -> list[str]:
    return SPECIAL_TOKENS + (THINK_TOKENS if family in ("qwen3_vl", "qwen3_5") else [])


# Qwen-VL's chat layout: every turn is <|im_start|>role\n...<|im_end|>\n, and an image is
# <|vision_start|><|image_pad|><|vision_end|> (the processor expands <|image_pad|> to one
# token per merged patch).
_TURNS = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
)
CHAT_TEMPLATE = _TURNS + "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
# Qwen3.5 thinks by default: the assistant turn opens a <think> block; enable_thinking=false
# closes it empty at once.
CHAT_TEMPLATE_QWEN3_5 = _TURNS + (
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}<think>{{ '\\n\\n' }}</think>{{ '\\n\\n' }}"
    "{%- else -%}<think>{{ '\\n' }}{%- endif -%}{%- endif -%}"
)


def chat_template(family: str) -> str:
    return CHAT_TEMPLATE_QWEN3_5 if family == "qwen3_5" else CHAT_TEMPLATE


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
# The smallest hidden sizes vLLM's CPU kernels run: head size 32 (Qwen3.5: 64; its gated delta
# net fails with "Unexpected head dim size, 32").
VLLM_HIDDEN_SIZES = {"qwen2_vl": 128, "qwen2_5_vl": 128, "qwen3_vl": 128, "qwen3_5": 256}


def vllm_text_sizes(family: str) -> dict:
    """Text sizes of a tiny ``family`` model that vLLM runs on CPU (as ``--hidden-size`` makes them)."""
    hidden = VLLM_HIDDEN_SIZES[family]
    return dict(TEXT_SIZES, hidden_size=hidden, intermediate_size=4 * hidden)


def build_tokenizer(vocab_size: int = 400, family: str = "qwen2_5_vl", tool_tokens: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens(family),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = _CORPUS
    if tool_tokens:  # a real tokenizer spells the tools section in ~250 tokens; 400 merges of _CORPUS need ~800
        from rlvr.agent.calls import tools_system_prompt
        from rlvr.agent.tools import image_tools

        trainer.vocab_size = max(vocab_size, 800)
        corpus = corpus + _TOOL_CORPUS + [tools_system_prompt([tool.schema() for tool in image_tools()])]
    tok.train_from_iterator(corpus * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template(family),
        model_max_length=32768,
    )
    if tool_tokens:
        fast.add_tokens(TOOL_TOKENS)
    return fast


def build_processor(family: str, tokenizer):
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from rlvr.models import FAMILIES, _allow_missing_video_processor, torchvision_available

    qwen3 = family in ("qwen3_vl", "qwen3_5")
    patch = 16 if qwen3 else 14
    factor = 2 * patch  # one image token per 2x2 merged patches
    # Small images by default: 4 to 64 image tokens (56x56 to 224x224 pixels for 14-px patches).
    kwargs = dict(min_pixels=(2 * factor) ** 2, max_pixels=(8 * factor) ** 2, patch_size=patch, merge_size=2,
                  temporal_patch_size=2)
    if qwen3:  # Qwen3-VL / Qwen3.5 normalise with mean = std = 0.5, not CLIP's statistics
        kwargs.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor = Qwen2VLImageProcessorPil(**kwargs)
    cls = getattr(transformers, FAMILIES[family].processor_class)
    video_processor = None
    if torchvision_available():
        from transformers import Qwen2VLVideoProcessor, Qwen3VLVideoProcessor

        video_processor = (Qwen3VLVideoProcessor if qwen3 else Qwen2VLVideoProcessor)(patch_size=patch)
    with _allow_missing_video_processor():
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                   chat_template=chat_template(family))


def _mrope_section(rotary_dim: int) -> list[int]:
    """Split the rotary half-dimension into (temporal, height, width) sections.

    Qwen2/2.5-VL give each axis a contiguous block; Qwen3-VL/3.5 interleave them
    (t h w t h w ...), which needs 3 * height <= half: both hold for this split.
    """
    half = rotary_dim // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


def build_config(family: str, tokenizer, text: dict | None = None, vision: dict | None = None):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3_5Config, Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {**TEXT_SIZES, **(text or {})}
    vision = {**VISION_SIZES, **(vision or {})}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    common_text = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,  # as the real 7-9B checkpoints allow at least; recipes budget up to 4096 + 4096
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
    if family in ("qwen2_vl", "qwen2_5_vl"):
        text_config = dict(common_text, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(head_dim)})
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
    # Qwen3 generation: 16-px patches and a learned 8x8 position grid, resampled per image.
    vision_config = dict(
        depth=vision["depth"], hidden_size=vision["hidden_size"], intermediate_size=2 * vision["hidden_size"],
        num_heads=vision["num_heads"], out_hidden_size=text["hidden_size"], patch_size=16, spatial_merge_size=2,
        temporal_patch_size=2, num_position_embeddings=64,
    )
    if family == "qwen3_vl":
        # DeepStack: features of vision block 0 are added to the hidden states after decoder layer 0.
        vision_config["deepstack_visual_indexes"] = [0]
        text_config = dict(common_text, head_dim=head_dim, rope_parameters={
            "rope_type": "default", "rope_theta": 5000000.0,
            "mrope_section": _mrope_section(head_dim), "mrope_interleaved": True})
        return Qwen3VLConfig(text_config=text_config, vision_config=vision_config, **common)
    if family == "qwen3_5":
        # Hybrid: linear attention (gated delta net) then full attention, alternating; the real
        # models use 3 linear per full layer. Full attention rotates a quarter of each head.
        n = text["num_hidden_layers"]
        attn_head_dim = 2 * head_dim
        text_config = dict(
            common_text, head_dim=attn_head_dim,
            layer_types=["full_attention" if i % 2 else "linear_attention" for i in range(n)],
            linear_conv_kernel_dim=4, linear_key_head_dim=head_dim, linear_value_head_dim=head_dim,
            linear_num_key_heads=2, linear_num_value_heads=4,
            # The text config's own flag must agree with the top level's: transformers ties by the
            # top level, vLLM by the text config, and leaves lm_head unloaded (random) if it says False.
            tie_word_embeddings=common["tie_word_embeddings"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                             "mrope_section": _mrope_section(attn_head_dim // 4), "mrope_interleaved": True},
        )
        return Qwen3_5Config(text_config=text_config, vision_config=vision_config, **common)
    raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILY_NAMES)}")


def make_tiny_model(family: str, out: str, seed: int = 0, text: dict | None = None, vision: dict | None = None,
                    tool_tokens: bool = False) -> str:
    """Write a tiny random model of ``family`` with its processor to ``out``; returns ``out``.
    ``tool_tokens``: the tokenizer has Qwen's tool-call markers as single tokens (``TOOL_TOKENS``)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from rlvr.models import save_processor

    if family not in FAMILY_NAMES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILY_NAMES)}")
    tokenizer = build_tokenizer(family=family, tool_tokens=tool_tokens)
    processor = build_processor(family, tokenizer)
    config = build_config(family, tokenizer, text, vision)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    # Random init zeroes the padding token's embedding; a trained checkpoint's is not zero.
    # Give it a random row too, so a left-padding bug (pad tokens leaking into attention or
    # into a linear-attention state) changes log-probs in the tests instead of hiding.
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[tokenizer.pad_token_id].normal_(0.0, float(embeddings.std()))
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
    parser.add_argument("--family", required=True, choices=list(FAMILY_NAMES))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=TEXT_SIZES["hidden_size"])
    parser.add_argument("--layers", type=int, default=TEXT_SIZES["num_hidden_layers"])
    parser.add_argument("--vision-depth", type=int, default=VISION_SIZES["depth"])
    parser.add_argument("--tool-tokens", action="store_true",
                        help="tool-call markers as single tokens, as in Qwen2.5's tokenizer (the tools demo)")
    args = parser.parse_args(argv)
    text = {"hidden_size": args.hidden_size, "num_hidden_layers": args.layers,
            "intermediate_size": 4 * args.hidden_size}
    make_tiny_model(args.family, args.out, args.seed, text=text, vision={"depth": args.vision_depth},
                    tool_tokens=args.tool_tokens)
    print(f"wrote a tiny {args.family} model to {args.out}")


if __name__ == "__main__":
    main()
