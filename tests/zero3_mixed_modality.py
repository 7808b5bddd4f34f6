"""Two ZeRO-3 CPU ranks, one with text-only micro-batches and one with images, train together.

    DS_ACCELERATOR=cpu python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/zero3_mixed_modality.py MODEL_DIR [MODEL_DIR ...]

Run by ``tests/test_families.py::test_zero3_mixed_modality_does_not_hang`` (not collected
by pytest itself). Without ``rlvr.multimodal.sync_vision_tower_calls`` rank 0 never calls the
vision tower, rank 1 waits in the tower's parameter all-gather, and the run hangs.
Prints ``RANK <r> OK <model_type> <loss>`` per rank and model when every step finished;
several models (one per family) share one launch, which saves the start-up of each.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
from PIL import Image


def accelerator():
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},  # partition every tensor
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }
    # Without a GPU accelerate picks no backend and believes it has one process (both ranks
    # would say process_index 0); naming gloo fixes that. The timeout makes a hang fail loudly.
    acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config),
                      kwargs_handlers=[InitProcessGroupKwargs(backend="gloo", timeout=timedelta(seconds=120))])
    assert acc.num_processes == 2, f"expected 2 processes, accelerate sees {acc.num_processes}"
    return acc


def run(acc, model_dir: str, steps: int = 3) -> None:
    from rlvr.config import RolloutConfig
    from rlvr.logprobs import response_logprobs
    from rlvr.models import load_model, load_processor, stop_token_ids
    from rlvr.batch import PromptInputs, collate_sequences
    from rlvr.rollout import generate

    torch.manual_seed(0)
    processor = load_processor(model_dir)
    model = load_model(model_dir, dtype="float32")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = acc.prepare(model, optimizer)

    def prompt(text: str, sizes: list[tuple[int, int]]) -> PromptInputs:
        images = [Image.new("RGB", s, (40 * i, 120, 200)) for i, s in enumerate(sizes)]
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        chat = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
        enc = processor(text=[chat], images=images or None, return_tensors="pt")
        return PromptInputs(enc["input_ids"][0], enc["mm_token_type_ids"][0], enc.get("pixel_values"),
                            enc.get("image_grid_thw"))

    if acc.process_index == 0:  # text-only rank
        prompts = [prompt("a question without any image", []), prompt("another one", [])]
    else:  # image rank: two images of different sizes, and one
        prompts = [prompt("two images", [(64, 64), (96, 48)]), prompt("one image", [(80, 80)])]
    # Generation: the prefill gathers the vision tower on both ranks; decode steps are kept
    # in step by transformers' synced_gpus (on by itself under ZeRO-3).
    pad = processor.tokenizer.pad_token_id
    policy = acc.unwrap_model(model).eval()
    sampled = generate(policy, prompts, RolloutConfig(group_size=2, max_new_tokens=3, micro_batch_size=4),
                       stop_token_ids(processor, policy), pad)
    assert len(sampled) == 4
    model.train()
    responses = [torch.tensor([40, 41, 42, 43]), torch.tensor([50, 51])]
    batch = collate_sequences(prompts, responses, pad)
    batch = {k: v.to(acc.device) for k, v in batch.items() if v is not None}
    mask = batch["response_mask"]
    for _ in range(steps):
        logprobs, _ = response_logprobs(model, batch, chunk_size=2)
        loss = -(logprobs * mask).sum() / mask.sum()
        acc.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():  # a no-grad pass (old / reference log-probs) gathers the same way
        response_logprobs(model, batch)
    acc.wait_for_everyone()
    print(f"RANK {acc.process_index} OK {acc.unwrap_model(model).config.model_type} {loss.item():.6f}", flush=True)
    acc.free_memory()


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    acc = accelerator()
    for path in sys.argv[1:]:
        run(acc, path)
