"""Weight sync for rollout engines: names, values, buckets, LoRA merges and ZeRO-3 gathering.

The ZeRO-3 test runs this file as a two-process script (CPU DeepSpeed over gloo):

    DS_ACCELERATOR=cpu python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/test_weight_sync.py MODEL_DIR
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from rlvr.config import LoraConfig
from rlvr.lora import apply_lora
from rlvr.models import load_model
from rlvr.rollout.weight_sync import (
    WeightStats,
    iter_weight_buckets,
    iter_weights,
    weight_stats,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Toy(torch.nn.Module):
    """Sizes to count buckets by hand (fp32): scale 8 B, embed.weight 64 B, proj.weight 64 B,
    proj.bias 16 B; head.weight is embed.weight (tied); cache is not persistent."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor([2.0, 3.0]))  # [2]
        self.register_buffer("cache", torch.zeros(8), persistent=False)  # not in the state dict
        self.embed = torch.nn.Embedding(4, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 4, bias=False)
        self.head.weight = self.embed.weight


def _names(buckets):
    return [[name for name, _ in bucket] for bucket in buckets]


def test_buckets_hold_at_most_bucket_bytes_and_a_larger_tensor_goes_alone():
    toy = Toy()
    # 80: [scale 8 + embed 64 = 72], [proj.weight 64 + proj.bias 16 = 80] (exactly full)
    assert _names(iter_weight_buckets(toy, 80)) == [["scale", "embed.weight"], ["proj.weight", "proj.bias"]]
    # 79: the second no longer fits: proj.bias gets its own bucket
    assert _names(iter_weight_buckets(toy, 79)) == [["scale", "embed.weight"], ["proj.weight"], ["proj.bias"]]
    # 32: each 64-byte weight is larger than a bucket, so alone
    assert _names(iter_weight_buckets(toy, 32)) == [["scale"], ["embed.weight"], ["proj.weight"], ["proj.bias"]]
    # bf16 halves every size: [scale 4 + embed 32 = 36], [proj.weight 32 + proj.bias 8 = 40]
    buckets = list(iter_weight_buckets(toy, 40, dtype=torch.bfloat16))
    assert _names(buckets) == [["scale", "embed.weight"], ["proj.weight", "proj.bias"]]
    assert all(t.dtype == torch.bfloat16 for bucket in buckets for _, t in bucket)


def test_tied_weights_are_sent_once_and_counted():
    toy = Toy()
    stats = WeightStats()
    pairs = list(iter_weights(toy, 80, stats=stats))
    assert [n for n, _ in pairs] == ["scale", "embed.weight", "proj.weight", "proj.bias"]  # no head.weight, no cache
    assert (stats.tensors, stats.bytes, stats.buckets) == (4, 8 + 64 + 64 + 16, 2)
    assert weight_stats(toy) == WeightStats(tensors=4, bytes=152)
    assert weight_stats(toy, torch.bfloat16) == WeightStats(tensors=4, bytes=76)


def test_bad_inputs_get_a_message():
    with pytest.raises(ValueError, match="bucket_bytes=0 must be a positive number of bytes"):
        next(iter_weight_buckets(Toy(), 0))
    wrapped = type("DeepSpeedEngine", (torch.nn.Module,), {})()  # what accelerator.prepare returns under DeepSpeed
    with pytest.raises(ValueError, match="pass the policy unwrapped"):
        next(iter_weight_buckets(wrapped))


@pytest.fixture()
def model(qwen25_dir):
    return load_model(qwen25_dir, "float32")


def test_a_plain_model_streams_its_state_dict_with_the_head_once(model):
    state = model.state_dict()
    sent = dict(iter_weights(model, 64 * 2**10))
    # Tied: the embeddings are sent, lm_head (the same tensor) is not; vLLM ties it itself.
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert set(state) - set(sent) == {"lm_head.weight"}
    assert list(sent) == [k for k in state if k != "lm_head.weight"]
    assert all(torch.equal(sent[k], state[k]) and not sent[k].requires_grad for k in sent)
    assert sum(len(b) for b in iter_weight_buckets(model, 64 * 2**10)) == len(state) - 1


def _lora(model, **kwargs):
    torch.manual_seed(1)  # the same adapters on every rank (lora_A's random init too)
    policy = apply_lora(model, LoraConfig(rank=4, alpha=8.0, **kwargs))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapters change the weights
                p.normal_(0.0, 0.5)
    return policy


VISION_TOO = {"vision_tower": True, "target_modules": r".*(q_proj|gate_proj|down_proj|qkv)"}  # the tower's qkv too


@pytest.mark.parametrize("vision_tower", [False, True])
def test_lora_sends_the_merged_weights_under_the_plain_names(model, vision_tower):
    base = {k: v.clone() for k, v in model.state_dict().items()}
    targets = VISION_TOO if vision_tower else {}
    policy = _lora(model, dropout=0.5, **targets).train()  # dropout never enters the merge
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()

    sent = dict(iter_weights(policy, 64 * 2**10))
    assert list(sent) == [k for k in base if k != "lm_head.weight"]  # no base_model.model., .base_layer, lora_
    assert all(torch.equal(sent[k], merged[k]) for k in sent)
    adapted = {k for k in sent if not torch.equal(sent[k], base[k])}
    # exactly the adapted Linear layers differ from the base
    targets = {n for n, _ in policy.named_modules() if n.endswith(".base_layer")}
    assert len(adapted) == len(targets) > 0
    assert any(".visual." in k for k in adapted) == vision_tower
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())  # the model is not changed
    plain_bytes = sum(v.numel() * v.element_size() for k, v in base.items() if k != "lm_head.weight")
    assert weight_stats(policy) == WeightStats(tensors=len(base) - 1, bytes=plain_bytes)


def test_lora_in_bf16_is_within_one_rounding_of_peft_merge(model):
    policy = _lora(model.to(torch.bfloat16))
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    sent = dict(iter_weights(policy, 64 * 2**10))
    assert all(t.dtype == torch.bfloat16 for t in sent.values())
    for k, t in sent.items():  # peft rounds the delta to bf16 before adding; we round once
        assert torch.allclose(t.float(), merged[k].float(), rtol=2 ** -7, atol=0), k


def test_dora_is_refused_with_a_message(model):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    policy = get_peft_model(model, PeftLoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match="plain LoRA on Linear layers.*DoRA"):
        next(iter_weight_buckets(policy))


# ------------------------------------------------------------------ ZeRO-3, two processes


@pytest.mark.slow
def test_zero3_streams_full_weights_on_every_rank_one_bucket_gathered_at_a_time(qwen25_dir):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.abspath(__file__), qwen25_dir]
    # The first DeepSpeed run on a machine JIT-builds its CPU communication op (~3 minutes).
    result = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    for rank in (0, 1):
        for kind in ("plain", "lora"):
            assert f"RANK {rank} OK {kind} " in out, out[-4000:]
    print("\n".join(line for line in out.splitlines() if " OK " in line))


BUCKET_BYTES = 64 * 2**10  # 64 KiB: the tiny model's 1.5 MB stream in about 30 buckets


def _zero3_check(kind: str, module, reference: dict, rank: int) -> None:
    """Stream ``module`` (ZeRO-3 partitioned), compare with ``reference`` and bound what is gathered."""
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    assert params and all(p.numel() == 0 for p in params), "expected every parameter partitioned"

    def gathered_bytes() -> int:
        return sum(p.ds_numel * p.element_size() for p in params if p.ds_status != ZeroParamStatus.NOT_AVAILABLE)

    original, peaks, gathered_storage = deepspeed.zero.GatheredParameters, [], set()

    class Counting(original):  # records what is gathered while each bucket's context is open
        def __enter__(self):
            out = super().__enter__()
            peaks.append(gathered_bytes())
            gathered_storage.update(p.data.untyped_storage().data_ptr() for p in self.params)
            return out

    deepspeed.zero.GatheredParameters = Counting
    try:
        sent, sizes = {}, []
        for bucket in iter_weight_buckets(module, BUCKET_BYTES):
            assert gathered_bytes() == 0, "a bucket was yielded with parameters still gathered"
            # copies: DeepSpeed may reuse the gathered memory for the next bucket
            assert not gathered_storage & {t.untyped_storage().data_ptr() for _, t in bucket}
            gathered_storage.clear()
            sent.update(bucket)
            sizes.append([t.numel() * t.element_size() for _, t in bucket])
    finally:
        deepspeed.zero.GatheredParameters = original
    expected = {k: v for k, v in reference.items() if k != "lm_head.weight"}
    assert list(sent) == list(expected), sorted(set(sent) ^ set(expected))
    bad = [k for k in sent if not torch.equal(sent[k], expected[k])]
    assert not bad, f"rank {rank} {kind}: values differ for {bad[:5]}"
    # One gather per bucket, each within the bucket size; a larger tensor is gathered alone (with
    # its adapters under LoRA: rank 4 here, at most 5 KiB; they count in the bucket size too).
    assert len(peaks) == len(sizes) > 10, (len(peaks), len(sizes))
    for peak, size in zip(peaks, sizes):
        assert peak <= BUCKET_BYTES or (len(size) == 1 and peak <= size[0] + 8 * 2**10), (peak, size)
    total = sum(map(sum, sizes))
    print(f"RANK {rank} OK {kind} tensors {len(sent)} MiB {total / 2**20:.2f} gathers {len(peaks)} "
          f"peak gathered KiB {max(peaks) / 2**10:.0f} (bucket {BUCKET_BYTES // 2**10})", flush=True)


def _zero3_main(model_dir: str) -> None:
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    ds_config = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": False}, "fp16": {"enabled": False},
                 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}  # partition all
    plain = load_model(model_dir, "float32")
    reference = {k: v.clone() for k, v in plain.state_dict().items()}
    lora = _lora(load_model(model_dir, "float32"), **VISION_TOO)
    lora_reference = {k: v.clone() for k, v in copy.deepcopy(lora).merge_and_unload().state_dict().items()}
    for kind, model, ref in (("plain", plain, reference), ("lora", lora, lora_reference)):
        engine, *_ = deepspeed.initialize(model=model, config=copy.deepcopy(ds_config))
        _zero3_check(kind, engine.module, ref, rank)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _zero3_main(sys.argv[1])
