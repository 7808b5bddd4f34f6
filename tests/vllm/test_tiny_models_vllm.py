"""Each family's tiny model loads in vLLM and computes what transformers computes.

One prompt with an image (M-RoPE positions, the vision tower, Qwen3-VL's DeepStack) per family,
through vLLM itself (not the engine): the prompt tokens vLLM expands equal the processor's, its
greedy tokens are transformers' argmax at every step, and its log-probs of every prompt and
response token equal the training-side forward's: fp32 within 1e-5 (measured 1e-6); Qwen3.5
runs in bf16 on vLLM's CPU backend, so against the fp32 forward within 0.05 (measured 8e-3).
A tiny Qwen3.5 whose text config did not tie lm_head (vLLM leaves it unloaded) fails here: other
greedy tokens and NaN log-probs.
"""

from __future__ import annotations

import gc

import pytest
import torch
from PIL import Image

from rlvr.models import load_model, load_processor

NEW_TOKENS = 6
TOLERANCE = {"float32": 1e-5, "bfloat16": 0.05}
PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which digit is 7 plus 5?<|im_end|>\n"
          "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def vllm():
    import vllm

    from rlvr.rollout.vllm_env import inspect_models_in_process

    inspect_models_in_process()  # vLLM's subprocess would import the unpatched torchvision
    return vllm


def _vllm_run(vllm, model_dir: str, dtype: str, image) -> tuple[list[int], list[int], list[float]]:
    """Prompt ids, greedy response ids, and the log-prob of every prompt token after the first and every response token."""
    llm = vllm.LLM(model=model_dir, dtype=dtype, enforce_eager=True, max_model_len=256, max_num_seqs=2, seed=0,
                   generation_config="vllm")
    try:
        params = vllm.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=0,
                                     prompt_logprobs=0, detokenize=False)
        (out,) = llm.generate([{"prompt": PROMPT, "multi_modal_data": {"image": image}}], params, use_tqdm=False)
    finally:
        del llm
        gc.collect()
    prompt_ids, response = list(out.prompt_token_ids), out.outputs[0]
    ids = prompt_ids + list(response.token_ids)
    logprobs = [step[t].logprob for step, t in zip(out.prompt_logprobs[1:], prompt_ids[1:])]
    logprobs += [step[t].logprob for step, t in zip(response.logprobs, response.token_ids)]
    assert len(logprobs) == len(ids) - 1
    return prompt_ids, list(response.token_ids), logprobs


def test_tiny_model_runs_in_vllm_as_in_transformers(vllm, vllm_tiny_model_dir):
    processor = load_processor(vllm_tiny_model_dir)
    model = load_model(vllm_tiny_model_dir, dtype="float32").eval()
    # Qwen3.5's gated delta net runs only in bf16 on vLLM's CPU backend ("CPU GDN attention requires BF16")
    dtype = "bfloat16" if model.config.model_type == "qwen3_5" else "float32"
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    prompt_ids, response_ids, vllm_logprobs = _vllm_run(vllm, vllm_tiny_model_dir, dtype, image)

    inputs = processor(text=[PROMPT], images=[image], return_tensors="pt")
    assert prompt_ids == inputs["input_ids"][0].tolist(), "vLLM expanded the image to other tokens than the processor"
    ids = torch.tensor([prompt_ids + response_ids])
    # M-RoPE's token types (1 = image) over prompt and response; the response is text
    types = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(response_ids), dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"],
                       image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=types).logits[0].float()  # [L, V]
    logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]  # [L-1]
    greedy = logits[len(prompt_ids) - 1:-1].argmax(-1).tolist()
    gap = float((logprobs - torch.tensor(vllm_logprobs)).abs().max())
    print(f"{model.config.model_type} ({dtype}): {len(vllm_logprobs)} log-probs, largest gap {gap:.2e}")
    assert response_ids == greedy
    assert gap <= TOLERANCE[dtype], f"{model.config.model_type}: vLLM's log-probs are {gap:.3g} off transformers'"
