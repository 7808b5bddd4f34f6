"""The chunked selective log-softmax Function equals the naive full-logits path, values and gradients.

Reference: ``log_softmax((h @ W.T + b) / T).gather(target)`` with plain autograd, in fp64 so
any difference beyond rounding is a bug. Then ``response_logprobs`` through the fused path
equals the checkpointed fallback on a tiny model, log-probs and every parameter gradient.
"""

import math

import pytest
import torch

import rlvr.logprobs as logprobs_module
from rlvr.logprobs import _ChunkedSelectiveLogSoftmax, response_logprobs, selective_logprobs
from rlvr.models import load_model, load_processor
from rlvr.batch import collate_sequences
from tests.test_logprobs import _prompt

N, H, V = 37, 16, 50


def _inputs(dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype)  # [N, H]
    weight = torch.randn(V, H, generator=g, dtype=dtype) / H ** 0.5  # [V, H]
    b = torch.randn(V, generator=g, dtype=dtype) if bias else None  # [V]
    targets = torch.randint(0, V, (N,), generator=g)  # [N]
    upstream = torch.randn(N, generator=g, dtype=torch.float64)  # [N] d loss / d log-prob
    return hidden, weight, b, targets, upstream


def _naive(hidden, weight, bias, targets, temperature):
    logits = torch.nn.functional.linear(hidden, weight, bias).double() / temperature  # [N, V]
    logp = torch.log_softmax(logits, dim=-1)  # [N, V]
    entropy = -(logp.exp() * logp).sum(-1)  # [N]
    return logp.gather(1, targets.unsqueeze(1)).squeeze(1), entropy


def _leaf(t, requires_grad=True):
    return None if t is None else t.detach().clone().requires_grad_(requires_grad)


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [True, False])
def test_values_entropy_and_gradients_equal_naive_fp64(chunk_size, temperature, bias):
    hidden, weight, b, targets, upstream = _inputs(bias=bias)
    h1, w1, b1 = _leaf(hidden), _leaf(weight), _leaf(b)
    chosen, entropy = selective_logprobs(h1, w1, targets, temperature, chunk_size, bias=b1, with_entropy=True)
    h2, w2, b2 = _leaf(hidden), _leaf(weight), _leaf(b)
    ref, ref_entropy = _naive(h2, w2, b2, targets, temperature)

    assert chosen.dtype == torch.float64 and chosen.shape == (N,)
    torch.testing.assert_close(chosen, ref.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy.detach(), atol=1e-10, rtol=0)
    assert not entropy.requires_grad
    (chosen * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-10, rtol=0)
    if bias:
        torch.testing.assert_close(b1.grad, b2.grad, atol=1e-10, rtol=0)


def test_fp32_inputs_give_fp32_values_equal_naive_to_rounding():
    hidden, weight, b, targets, _ = _inputs(dtype=torch.float32)
    chosen, entropy = selective_logprobs(hidden, weight, targets, 0.7, 8, bias=b, with_entropy=True)
    ref, ref_entropy = _naive(hidden, weight, b, targets, 0.7)
    assert chosen.dtype == torch.float32 and entropy.dtype == torch.float32
    assert (chosen.double() - ref).abs().max() < 1e-5
    assert (entropy.double() - ref_entropy).abs().max() < 1e-5


def test_frozen_weight_gets_no_gradient_and_hidden_still_does():
    hidden, weight, b, targets, upstream = _inputs()
    h1 = _leaf(hidden)
    chosen, _ = selective_logprobs(h1, weight, targets, 0.7, 8, bias=b)
    (chosen * upstream).sum().backward()
    h2 = _leaf(hidden)
    ref, _ = _naive(h2, weight, b, targets, 0.7)
    (ref * upstream).sum().backward()
    assert weight.grad is None and b.grad is None
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-10, rtol=0)


def test_only_weight_needs_grad():
    hidden, weight, _, targets, upstream = _inputs(bias=False)
    w1, w2 = _leaf(weight), _leaf(weight)
    chosen, _ = selective_logprobs(hidden, w1, targets, 1.0, 5)
    (chosen * upstream).sum().backward()
    ref, _ = _naive(hidden, w2, None, targets, 1.0)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("excluded", [None, [2, 6]])
def test_gradcheck_tiny(excluded):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 3, 4, 5])  # never an excluded token: those are never sampled
    excluded = None if excluded is None else torch.tensor(excluded)

    def f(h, w, b):
        return _ChunkedSelectiveLogSoftmax.apply(h, w, b, targets, 0.7, 2, False, torch.float64, excluded)[0]

    assert torch.autograd.gradcheck(f, (hidden, weight, bias))


def test_excluded_tokens_leave_the_distribution():
    """Excluded ids have probability 0: the rest renormalise, entropy is over the rest, no gradient reaches them."""
    weight = torch.eye(3, dtype=torch.float64).requires_grad_()  # logits = hidden
    hidden = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64))
    lp, entropy = selective_logprobs(hidden, weight, torch.tensor([0]), excluded=torch.tensor([2]),
                                     with_entropy=True)
    # without token 2: p = (0.5, 0.25) / 0.75 = (2/3, 1/3)
    assert lp.item() == pytest.approx(math.log(2 / 3), abs=1e-12)
    assert entropy.item() == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3), abs=1e-12)
    lp.sum().backward()
    assert weight.grad[2].abs().max().item() == 0.0


def test_bf16_hidden_gives_fp32_close_to_naive_fp32():
    hidden, weight, b, targets, upstream = _inputs(dtype=torch.float32)
    h16, w16, b16 = (_leaf(t.bfloat16()) for t in (hidden, weight, b))
    chosen, entropy = selective_logprobs(h16, w16, targets, 0.7, 8, bias=b16, with_entropy=True)
    assert chosen.dtype == torch.float32 and entropy.dtype == torch.float32
    ref, ref_entropy = _naive(hidden, weight, b, targets, 0.7)
    assert (chosen.double() - ref).abs().max() < 0.05
    assert (entropy.double() - ref_entropy).abs().max() < 0.05
    (chosen * upstream.float()).sum().backward()
    assert h16.grad.dtype == torch.bfloat16 and w16.grad.dtype == torch.bfloat16 and b16.grad.dtype == torch.bfloat16
    h32, w32 = _leaf(hidden), _leaf(weight)
    ref, _ = _naive(h32, w32, b, targets, 0.7)
    (ref * upstream).sum().backward()
    for got, want in ((h16.grad, h32.grad), (w16.grad, w32.grad)):
        assert (got.double() - want.double()).abs().max() < 0.02 * want.abs().max()


def test_leading_dims_and_empty_rows():
    hidden, weight, _, targets, _ = _inputs(dtype=torch.float32, bias=False)
    flat, _ = selective_logprobs(hidden, weight, targets, 1.0, 8)
    shaped, _ = selective_logprobs(hidden[:36].view(4, 9, H), weight, targets[:36].view(4, 9), 1.0, 8)
    assert shaped.shape == (4, 9) and torch.equal(shaped.reshape(-1), flat[:36])
    empty = _leaf(hidden[:0])
    out, _ = selective_logprobs(empty, weight, targets[:0], 1.0, 8)
    out.sum().backward()
    assert out.shape == (0,) and empty.grad.shape == (0, H)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_logprobs(hidden, weight, targets, 1.0, 0)


def test_fusable_rejects_partitioned_and_wrapped_heads():
    head = torch.nn.Linear(4, 6)
    assert logprobs_module._fusable(head)
    hooked = torch.nn.Linear(4, 6)
    hooked.register_forward_pre_hook(lambda m, a: None)
    assert not logprobs_module._fusable(hooked)
    zero3 = torch.nn.Linear(4, 6)
    zero3.weight.ds_id = 0  # what DeepSpeed ZeRO-3 tags its partitioned parameters with
    assert not logprobs_module._fusable(zero3)
    empty = torch.nn.Linear(4, 6)
    empty.weight.data = torch.empty(0)
    assert not logprobs_module._fusable(empty)

    class Wrapped(torch.nn.Linear):
        pass

    assert not logprobs_module._fusable(Wrapped(4, 6))


@pytest.fixture(scope="module")
def tiny(qwen25_dir):
    processor = load_processor(qwen25_dir)
    model = load_model(qwen25_dir, dtype="float32").train()
    g = torch.Generator().manual_seed(2)
    prompts_text = ["a", "a longer prompt with more words in it", "mid length"]
    prompts = []
    for i, text in enumerate(prompts_text):
        prompts.append(_prompt(processor, text, [(56, 56)] * (i % 2)))
    responses = [torch.randint(10, 300, (n,), generator=g) for n in (6, 2, 9)]
    batch = collate_sequences(prompts, responses, processor.tokenizer.pad_token_id)
    return model, batch


def _logprobs_and_grads(model, batch, fused: bool, monkeypatch, **kwargs):
    with monkeypatch.context() as m:
        if not fused:
            m.setattr(logprobs_module, "_fusable", lambda head: False)
        model.zero_grad()
        lp, ent = response_logprobs(model, batch, **kwargs)
        mask = batch["response_mask"]
        g = torch.Generator().manual_seed(5)
        weights = torch.randn(lp.shape, generator=g)  # [B, R]
        (lp * weights * mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), (None if ent is None else ent.detach()), grads


@pytest.mark.parametrize("temperature,chunk_size", [(1.0, 512), (0.7, 2)])
def test_response_logprobs_fused_equals_checkpoint_fallback(tiny, monkeypatch, temperature, chunk_size):
    model, batch = tiny
    assert logprobs_module._fusable(model.get_output_embeddings())
    kwargs = {"temperature": temperature, "chunk_size": chunk_size, "with_entropy": True}
    lp_f, ent_f, grads_f = _logprobs_and_grads(model, batch, True, monkeypatch, **kwargs)
    lp_c, ent_c, grads_c = _logprobs_and_grads(model, batch, False, monkeypatch, **kwargs)
    mask = batch["response_mask"].bool()
    torch.testing.assert_close(lp_f[mask], lp_c[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_f[mask], ent_c[mask], atol=1e-4, rtol=0)
    assert (lp_f[~mask] == 0).all() and (ent_f[~mask] == 0).all()
    assert grads_f.keys() == grads_c.keys() and len(grads_f) > 10
    assert "lm_head.weight" in grads_f or any("embed_tokens" in n for n in grads_f)
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_c[name], atol=1e-6, rtol=1e-4, msg=name)


def test_response_logprobs_under_bf16_autocast_matches_fallback(tiny, monkeypatch):
    # model.dtype=auto trains fp32 weights under bf16 autocast: the fused path must cast like nn.Linear.
    model, batch = tiny
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp_f, _, grads_f = _logprobs_and_grads(model, batch, True, monkeypatch, temperature=0.7)
        lp_c, _, grads_c = _logprobs_and_grads(model, batch, False, monkeypatch, temperature=0.7)
    mask = batch["response_mask"].bool()
    assert lp_f.dtype == torch.float32
    assert (lp_f[mask] - lp_c[mask]).abs().max() < 1e-3
    head = [n for n in grads_f if n.endswith("lm_head.weight")] or [n for n in grads_f if "embed_tokens" in n]
    for name in head:
        assert grads_f[name].dtype == torch.float32
        assert (grads_f[name] - grads_c[name]).abs().max() <= 0.02 * grads_c[name].abs().max(), name
