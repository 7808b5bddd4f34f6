"""Every supported family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5) through the same code path.

The log-prob equalities themselves (rollout vs training forward, alone vs padded) run for
every family in ``tests/test_logprobs.py``; here: prompts with several images placed by
``<image>``, text-only rows, the direction of a SAPO update, and the multi-process vision
tower fix (faked in-process, and for real with two ZeRO-3 CPU processes).
"""

import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

import rlvr.multimodal
from rlvr.config import DataConfig, RolloutConfig
from rlvr.data import Example
from rlvr.logprobs import response_logprobs
from rlvr.losses import POLICY_LOSSES
from rlvr.models import FAMILIES, load_model, load_processor, stop_token_ids, vision_tower
from rlvr.batch import collate_sequences, encode_prompt
from rlvr.rollout import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example(question: str, sizes: list[tuple[int, int]]) -> Example:
    images = [Image.new("RGB", s, (30 + 50 * i, 200 - 40 * i, 90)) for i, s in enumerate(sizes)]
    return Example(id="x", question=question, answer="1", gold=None, images=images)


def _layout(processor, input_ids: torch.Tensor) -> str:
    """The prompt as text with each run of image tokens shown as <IMG>."""
    text = processor.tokenizer.decode(input_ids)
    return re.sub(r"(<\|image_pad\|>)+", "<IMG>", text)


@pytest.fixture(scope="module")
def family(tiny_model_dir):
    return tiny_model_dir, load_processor(tiny_model_dir), load_model(tiny_model_dir, dtype="float32").eval()


def test_tiny_model_is_its_family(family):
    path, processor, model = family
    assert model.config.model_type in FAMILIES
    assert type(processor).__name__ == FAMILIES[model.config.model_type].processor_class
    # A trained checkpoint's pad embedding is not zero; the tiny model's must not be either,
    # or left-padding bugs would hide in the log-prob tests.
    pad = processor.tokenizer.pad_token_id
    assert model.get_input_embeddings().weight[pad].abs().sum() > 0


def test_encode_prompt_places_images_at_placeholders(family):
    _, processor, _ = family
    cfg = DataConfig(prompt_template="{question}")
    sizes = [(64, 64), (150, 90)]
    enc = encode_prompt(_example("Compare <image> with <image>. Which is larger?", sizes), processor, cfg)
    layout = _layout(processor, enc.input_ids)
    assert ("Compare <|vision_start|><IMG><|vision_end|> with <|vision_start|><IMG><|vision_end|>. "
            "Which is larger?") in layout, layout
    # One grid per image, in order, and each block has the tokens its grid says.
    assert enc.image_grid_thw.shape == (2, 3)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    is_image = enc.input_ids == image_id
    blocks = [len(m.group()) for m in re.finditer(r"1+", "".join(map(str, is_image.int().tolist())))]
    assert blocks == [int(g.prod()) // 4 for g in enc.image_grid_thw] and blocks[0] != blocks[1]
    assert torch.equal(enc.mm_token_type_ids.bool(), is_image)
    assert enc.pixel_values.shape[0] == int(enc.image_grid_thw.prod(-1).sum())


def test_encode_prompt_images_first_without_placeholder_and_text_only(family):
    _, processor, _ = family
    cfg = DataConfig(prompt_template="{question}")
    enc = encode_prompt(_example("How many?", [(56, 56), (56, 112), (90, 60)]), processor, cfg)
    layout = _layout(processor, enc.input_ids)
    assert "user\n" + "<|vision_start|><IMG><|vision_end|>" * 3 + "How many?" in layout, layout
    text_only = encode_prompt(_example("How many?", []), processor, cfg)
    assert text_only.pixel_values is None and text_only.image_grid_thw is None
    assert not text_only.mm_token_type_ids.any()
    assert "<|vision_start|>" not in _layout(processor, text_only.input_ids)


def test_sapo_steps_reduce_the_loss_on_a_fixed_batch(tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype="float32").train()
    cfg = DataConfig(prompt_template="{question}")
    prompts = [encode_prompt(_example(q, s), processor, cfg) for q, s in [
        ("one image", [(64, 64)]), ("text only", []), ("two <image> and <image>", [(56, 56), (120, 80)]),
        ("another text-only question, longer than the others", [])]]
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(10, 300, (n,), generator=g) for n in (5, 3, 6, 4)]
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    batch = collate_sequences(prompts, responses, processor.tokenizer.pad_token_id)
    mask = batch["response_mask"]
    with torch.no_grad():
        old, _ = response_logprobs(model, batch)  # the policy that "sampled" the batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        logprobs, _ = response_logprobs(model, batch, chunk_size=3)
        loss, _ = POLICY_LOSSES["sapo"](logprobs, old, advantages, mask, tau_pos=1.0, tau_neg=1.05)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        new, _ = response_logprobs(model, batch)
    assert losses[-1] < losses[0], losses
    # The right way: sequences with A > 0 became more likely, those with A < 0 less.
    change = ((new - old) * mask).sum(1) / mask.sum(1)  # [B]
    assert (change[advantages > 0] > 0).all() and (change[advantages < 0] < 0).all(), change


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_text_only_batch_runs_vision_tower_in_multi_process_runs(family, monkeypatch):
    """The ZeRO-3 fix, in one process: a text-only batch runs the vision tower, changes nothing."""
    path, processor, _ = family
    model = load_model(path, dtype="float32").train()
    cfg = DataConfig(prompt_template="{question}")
    prompts = [encode_prompt(_example(q, []), processor, cfg) for q in ("a text-only question", "and another")]
    batch = collate_sequences(prompts, [torch.tensor([40, 41, 42]), torch.tensor([50])],
                              processor.tokenizer.pad_token_id)
    calls = _count_calls(vision_tower(model))
    alone, _ = response_logprobs(model, batch)
    assert calls[0] == 0  # one process: untouched
    monkeypatch.setattr(rlvr.multimodal, "world_size", lambda: 2)
    synced, _ = response_logprobs(model, batch)
    assert calls[0] == 1
    mask = batch["response_mask"].bool()
    assert torch.allclose(synced[mask], alone[mask], atol=1e-6, rtol=0)
    synced[mask].sum().backward()
    vision_grads = [p.grad for p in vision_tower(model).parameters()]
    assert all(g is not None for g in vision_grads), "every vision parameter is in the backward graph"
    assert all(float(g.abs().max()) == 0.0 for g in vision_grads), "and its gradient is zero"

    # Generation: the tower runs once, before the prefill; decode steps and tokens are unchanged.
    model.eval()
    rollout = RolloutConfig(group_size=1, max_new_tokens=4, micro_batch_size=2)
    stop, pad = stop_token_ids(processor, model), processor.tokenizer.pad_token_id
    synced_tokens = [r.token_ids for r in generate(model, prompts, rollout, stop, pad, greedy=True)]
    assert calls[0] == 2
    monkeypatch.setattr(rlvr.multimodal, "world_size", lambda: 1)
    alone_tokens = [r.token_ids for r in generate(model, prompts, rollout, stop, pad, greedy=True)]
    assert calls[0] == 2
    assert all(torch.equal(a, b) for a, b in zip(alone_tokens, synced_tokens))


@pytest.mark.slow
def test_zero3_mixed_modality_does_not_hang(tmp_path):
    """Two ZeRO-3 CPU ranks, rank 0 text-only and rank 1 with images: generate, 3 updates and a
    no-grad pass, for every family (one launch, to pay the start-up once)."""
    from rlvr.devtools.make_tiny_model import FAMILY_NAMES, make_tiny_model

    dirs = [make_tiny_model(f, str(tmp_path / f)) for f in FAMILY_NAMES]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "tests", "zero3_mixed_modality.py"), *dirs]
    # The first DeepSpeed run on a machine JIT-builds its CPU communication op (~3 minutes);
    # a hang fails after the script's 120 s collective timeout.
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    for family in FAMILY_NAMES:
        assert f"RANK 0 OK {family} " in out and f"RANK 1 OK {family} " in out, out[-4000:]
