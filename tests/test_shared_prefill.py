"""Group-shared prefill: each prompt's images and prompt run once, its G samples decode together.

Against the plain path (every sample encodes and prefills its own copy), for every family,
on batches mixing text-only prompts, several images of different sizes and very different
prompt lengths (fp32): the same greedy tokens, the same seeded samples with the same
log-probs, and those log-probs equal to the training forward's.
"""


import pytest
import torch

from rlvr.config import RolloutConfig
from rlvr.logprobs import response_logprobs
from rlvr.models import load_model, load_processor, stop_token_ids, vision_tower
from rlvr.batch import collate_sequences
from rlvr.rollout import generate
from tests.test_logprobs import _prompt, _rollout_logprobs


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype="float32").eval()
    prompts = [
        _prompt(processor, "A much longer question about two images, with many more words so that the "
                           "padding on the left is long and matters for every position id", [(200, 120), (84, 112)]),
        _prompt(processor, "text only, no image at all", []),
        _prompt(processor, "What colour is it?", [(56, 56)]),
        _prompt(processor, "three images", [(60, 60), (150, 70), (56, 200)]),
    ]
    return processor, model, prompts


def _run(setup, shared: bool, **kwargs):
    processor, model, prompts = setup
    cfg = RolloutConfig(**{"group_size": 3, "max_new_tokens": 12, "micro_batch_size": 12, **kwargs},
                        shared_prefill=shared)
    return generate(model, prompts, cfg, stop_token_ids(processor, model), processor.tokenizer.pad_token_id,
                    greedy=kwargs.get("temperature") is None, seeds=[11, 22, 33, 44])


def _images_encoded(model, fn) -> int:
    """Images the vision tower encodes while ``fn`` runs (rows of the grid it is given)."""
    seen = []
    handle = vision_tower(model).register_forward_hook(
        lambda module, args, kwargs, out: seen.append(len(kwargs.get("grid_thw", args[1] if len(args) > 1 else None))),
        with_kwargs=True)
    try:
        result = fn()
    finally:
        handle.remove()
    return sum(seen), result


def test_greedy_tokens_equal_the_plain_path(setup):
    model = setup[1]
    n_shared, shared = _images_encoded(model, lambda: _run(setup, True))
    n_plain, plain = _images_encoded(model, lambda: _run(setup, False))
    assert [r.token_ids.tolist() for r in shared] == [r.token_ids.tolist() for r in plain]
    for a, b in zip(shared, plain):
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    # 6 distinct images; the plain path encodes each once per sample (G = 3)
    assert (n_shared, n_plain) == (6, 18)


@pytest.mark.parametrize("micro_batch_size", [12, 4, 5])  # 4, 5: groups split across generate calls
def test_seeded_samples_and_logprobs_equal_the_plain_path(setup, micro_batch_size):
    shared = _run(setup, True, temperature=0.8, micro_batch_size=micro_batch_size)
    plain = _run(setup, False, temperature=0.8, micro_batch_size=12)
    assert [r.prompt_index for r in shared] == [i for i in range(4) for _ in range(3)]
    assert [r.token_ids.tolist() for r in shared] == [r.token_ids.tolist() for r in plain]
    diff = max((a.logprobs - b.logprobs).abs().max().item() for a, b in zip(shared, plain))
    assert diff < 1e-5, diff
    assert len({tuple(r.token_ids.tolist()) for r in shared}) > 4  # the samples of a group differ


def test_shared_prefill_logprobs_equal_the_training_forward(setup):
    processor, model, prompts = setup
    responses = _run(setup, True, temperature=0.7)
    order = list(range(len(responses)))[::-1]  # another order, right padding
    batch = collate_sequences([prompts[responses[i].prompt_index] for i in order],
                              [responses[i].token_ids for i in order], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, _ = response_logprobs(model, batch, temperature=0.7)
    mask = batch["response_mask"]
    expected = _rollout_logprobs([responses[i] for i in order], mask.shape[1])
    diff = ((logprobs - expected).abs() * mask).max().item()
    assert diff < 1e-4, diff


def test_a_plain_forward_after_generation_is_unaffected(setup):
    """The expanded M-RoPE offsets stay on the model after generation; a training forward must ignore them."""
    processor, model, prompts = setup
    responses = _run(setup, False)
    batch = collate_sequences([prompts[r.prompt_index] for r in responses], [r.token_ids for r in responses],
                              processor.tokenizer.pad_token_id)
    with torch.no_grad():
        before, _ = response_logprobs(model, batch)
        _run(setup, True, group_size=5)
        after, _ = response_logprobs(model, batch)
    assert torch.equal(before, after)


def _training_forward(model, batch, shared: bool):
    """Log-probs and the gradients of every parameter (vision tower included) of one backward."""
    from rlvr.multimodal import decoder_and_head, forward_inputs, shared_image_features

    model.zero_grad(set_to_none=True)
    decoder, head = decoder_and_head(model)
    source = batch["image_source"] if shared else None
    with shared_image_features(decoder, source):
        hidden = decoder(**forward_inputs(batch), use_cache=False).last_hidden_state  # [B, L, H]
    logprobs = torch.log_softmax(head(hidden).float(), -1)[:, :-1].gather(
        -1, batch["input_ids"][:, 1:, None]).squeeze(-1) * batch["attention_mask"][:, 1:]  # [B, L-1]
    (logprobs.sum(1) * torch.linspace(-1.0, 2.0, len(logprobs))).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logprobs.detach(), grads


def test_training_forward_encodes_each_image_once_with_the_same_gradients(setup):
    processor, model, prompts = setup
    pad = processor.tokenizer.pad_token_id
    # Rows: prompt 0 three times, prompt 3 twice, the text-only prompt, prompt 2 once.
    rows = [0, 3, 0, 1, 3, 0, 2]
    responses = [torch.tensor([40, 41, 42, 43, 44][: 2 + k % 4]) for k in range(len(rows))]
    batch = collate_sequences([prompts[i] for i in rows], responses, pad)
    assert batch["image_source"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 12]
    n_shared, (lp_shared, g_shared) = _images_encoded(model, lambda: _training_forward(model, batch, True))
    n_plain, (lp_plain, g_plain) = _images_encoded(model, lambda: _training_forward(model, batch, False))
    assert (n_shared, n_plain) == (6, 13)
    assert torch.allclose(lp_shared, lp_plain, atol=1e-5)
    assert g_shared.keys() == g_plain.keys() and any(".visual." in n or n.startswith("model.visual") for n in g_plain)
    for name in g_plain:
        assert torch.allclose(g_shared[name], g_plain[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("grad", [False, True])
def test_response_logprobs_compute_each_prompt_once_with_the_same_results(setup, grad):
    from rlvr.logprobs import _can_share_prompts, response_logprobs
    from rlvr.multimodal import decoder_and_head

    processor, model, prompts = setup
    pad = processor.tokenizer.pad_token_id
    rows = [0, 3, 0, 1, 3, 0, 2, 1]  # prompts repeated, out of order, a text-only prompt twice
    responses = [torch.tensor([40, 41, 42, 43, 44, 45][: 1 + k % 6]) for k in range(len(rows))]
    batch = collate_sequences([prompts[i] for i in rows], responses, pad)
    assert batch["prompt_group"].tolist() == [0, 1, 0, 2, 1, 0, 3, 2]
    family = model.config.model_type
    assert _can_share_prompts(decoder_and_head(model)[0], batch) == (family != "qwen3_5")

    def run(share):
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad):
            lp, ent = response_logprobs(model, batch, temperature=0.9, with_entropy=True, share_prompts=share)
            if grad:
                ((lp * batch["response_mask"]).sum(1) * torch.linspace(-1, 1, len(rows))).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return lp.detach(), ent, grads

    n_shared, (lp_s, ent_s, g_s) = _images_encoded(model, lambda: run(True))
    n_plain, (lp_p, ent_p, g_p) = _images_encoded(model, lambda: run(False))
    mask = batch["response_mask"].bool()
    assert (n_shared, n_plain) == (6, 6)  # both encode each distinct image once
    assert torch.allclose(lp_s[mask], lp_p[mask], atol=2e-5), (lp_s - lp_p).abs().max()
    assert torch.allclose(ent_s[mask], ent_p[mask], atol=2e-5)
    assert g_s.keys() == g_p.keys()
    for name in g_p:
        assert torch.allclose(g_s[name], g_p[name], atol=1e-5, rtol=1e-4), name


def test_text_only_prefill_ignores_offsets_left_on_the_model(setup):
    """A text-only generate call after an image batch: the model keeps the old batch's M-RoPE
    offsets (and batch size); shared prefill must neither use nor index them."""
    processor, model, prompts = setup
    text_only = [prompts[1], _prompt(processor, "another question without any image, longer", [])]
    cfg = dict(group_size=3, max_new_tokens=8, micro_batch_size=6, temperature=0.9)
    stops, pad = stop_token_ids(processor, model), processor.tokenizer.pad_token_id
    plain = generate(model, text_only, RolloutConfig(**cfg, shared_prefill=False), stops, pad, seeds=[5, 6])
    model.model.rope_deltas = torch.full((1, 1), 37)  # stale: one row, a large offset
    shared = generate(model, text_only, RolloutConfig(**cfg, shared_prefill=True), stops, pad, seeds=[5, 6])
    assert [r.token_ids.tolist() for r in shared] == [r.token_ids.tolist() for r in plain]
    diff = max((a.logprobs - b.logprobs).abs().max().item() for a, b in zip(shared, plain))
    assert diff < 1e-5, diff
