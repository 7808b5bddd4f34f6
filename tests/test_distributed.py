"""Two CPU processes through accelerate + DeepSpeed give the trajectory of one process (slow: minutes).

Same global batch, same seeds: per-prompt sampling makes the responses independent of which
rank drew them, and the loss is normalised by global counts, so ZeRO-2 and ZeRO-3 with two
processes must reproduce the single-process losses, rewards and gradient norms up to
floating-point summation order.
"""

import json
import os
import signal

import pytest

from tests.launching import (assert_same_trajectory, describe, kill_group, make_data, rows, run, start, train_args,
                             wait_for)

pytestmark = pytest.mark.slow

# A KL penalty makes the reference model part of the check (a DeepSpeed engine under ZeRO-3).
KL = ("algorithm.kl_coef=0.05",)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 prompts, 4 per step (the third step starts the second epoch); rows 4-7 are text-only,
    and with seed 42 step 2 gives rank 1 only text while rank 0 has an image."""
    out = make_data(str(tmp_path_factory.mktemp("data")), rows=4)
    with open(os.path.join(out, "train.jsonl"), "a", encoding="utf-8") as f:
        for i, (a, b) in enumerate([(2, 3), (4, 1), (1, 1), (3, 3)]):
            f.write(json.dumps({"id": f"text-{i}", "question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    return out


@pytest.fixture(scope="module")
def single(qwen25_dir, data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("single") / "run")
    result = run(train_args(qwen25_dir, data, out, *KL))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _prompt_rows(out):
    return rows(os.path.join(out, "prompts.jsonl"))


@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_two_processes_match_one(config, single, qwen25_dir, data, tmp_path):
    out = str(tmp_path / "run")
    result = run(train_args(qwen25_dir, data, out, *KL), config=config, processes=2)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "process group of 2: rank 0" in result.stderr and "rank 1 on" in result.stderr
    worst = assert_same_trajectory(rows(f"{single}/metrics.jsonl"), rows(f"{out}/metrics.jsonl"))
    print(f"{config} vs one process, largest difference over 3 steps: {describe(worst)}")
    assert rows(os.path.join(out, "metrics.jsonl"))[1]["kl"] > 0  # the reference took part
    # The same prompts per step as one process; the two ranks split each step's prompts.
    one, two = _prompt_rows(single), _prompt_rows(out)
    assert [r["indices"] for r in one] == [r["indices"] for r in two]
    for r in two:
        assert len(r["by_rank"]) == 2 and sorted(sum(r["by_rank"], [])) == sorted(r["indices"])
        assert not set(r["by_rank"][0]) & set(r["by_rank"][1])
    # Each prompt once per epoch: steps 1-2 are epoch 0 and use all 8 rows.
    assert sorted(sum((r["indices"] for r in two[:2]), [])) == list(range(8))
    # A step where one rank had only text and the other an image: the vision tower stayed in step.
    assert any(all(i >= 4 for i in r["by_rank"][1]) and any(i < 4 for i in r["by_rank"][0]) for r in two)
    # The final model, gathered from the shards, loads and equals the single-process one.
    from safetensors.torch import load_file

    a, b = load_file(f"{single}/final/model.safetensors"), load_file(f"{out}/final/model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_token_budget_micro_batches_agree_across_ranks(single, qwen25_dir, data, tmp_path):
    """trainer.micro_batch_tokens under ZeRO-3 (every forward a collective): a rank with images packs
    more micro-batches than a text-only one, the ranks agree on the larger count, nothing hangs,
    and the run still follows the single-process, fixed-count trajectory.

    Budget 150: an image sample costs about 55 tokens + 64 patches (one of them 65 + 100, over
    the budget by itself), a text-only one about 25; so images run one per micro-batch, text six."""
    out = str(tmp_path / "run")
    args = train_args(qwen25_dir, data, out, *KL, "trainer.micro_batch_tokens=150")
    result = run(args, config="zero3", processes=2)
    assert result.returncode == 0, result.stderr[-4000:]
    got = rows(f"{out}/metrics.jsonl")
    worst = assert_same_trajectory(rows(f"{single}/metrics.jsonl"), got)
    print(f"zero3 + micro_batch_tokens vs one process, largest difference: {describe(worst)}")
    assert max(r["batch/rank_splits"] for r in got) > 0  # some step's ranks packed different counts
    assert max(r["batch/over_budget"] for r in got) > 0
    assert max(r["batch/micro_batches"] for r in got) > 2  # more than the fixed count of 8 / 4
    from safetensors.torch import load_file

    a, b = load_file(f"{single}/final/model.safetensors"), load_file(f"{out}/final/model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


LORA = ("model.lora.rank=4", "model.freeze_vision_tower=true", "model.gradient_checkpointing=true",
        "algorithm.kl_coef=0.1", "rollout.zero3_gather_weights=false")


def test_lora_frozen_vision_checkpointing_and_partitioned_generation_under_zero3(qwen25_dir, data, tmp_path):
    """LoRA + frozen vision tower + gradient checkpointing + KL to the adapter-free model, generating
    through the partitioned weights: still the single-process trajectory; only the adapter is saved."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    result = run(train_args(qwen25_dir, data, one, *LORA))
    assert result.returncode == 0, result.stderr[-3000:]
    result = run(train_args(qwen25_dir, data, two, *LORA), config="zero3", processes=2)
    assert result.returncode == 0, result.stderr[-4000:]
    expected, got = rows(f"{one}/metrics.jsonl"), rows(f"{two}/metrics.jsonl")
    worst = assert_same_trajectory(expected, got)
    print(f"zero3 + LoRA vs one process, largest difference: {describe(worst)}")
    assert expected[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # adapters start at zero: policy == reference
    assert got[-1]["kl"] > 0
    for run_dir in (one, two):
        final = sorted(os.listdir(f"{run_dir}/final"))
        assert "adapter_model.safetensors" in final and "model.safetensors" not in final
    from safetensors.torch import load_file

    adapter = load_file(f"{two}/final/adapter_model.safetensors")
    assert adapter and all("lora_" in k and "visual" not in k for k in adapter)


def test_a_stuck_rank_fails_the_run_with_a_clear_error(single, qwen25_dir, data, tmp_path):
    """Rank 1 freezes (SIGSTOP) after step 1: rank 0 must give up after trainer.collective_timeout_s."""
    out = str(tmp_path / "run")
    log = str(tmp_path / "log.txt")
    proc = start(train_args(qwen25_dir, data, out, *KL, "trainer.max_steps=6", "trainer.collective_timeout_s=45"),
                 config="ddp", processes=2, log=log, TORCH_ELASTIC_SHUTDOWN_TIMEOUT="5")
    try:
        wait_for(lambda: os.path.exists(f"{out}/metrics.jsonl") and rows(f"{out}/metrics.jsonl"), 600,
                 "the first step", proc=proc)
        rank1 = wait_for(lambda: _worker_pid(proc.pid, rank=1), 30, "rank 1's process")
        os.kill(rank1, signal.SIGSTOP)
        proc.wait(timeout=300)
    finally:
        kill_group(proc)
        proc.wait()
    text = open(log).read()
    assert proc.returncode != 0
    assert "rank 0: a collective operation failed or waited longer than trainer.collective_timeout_s=45 s" in text
    # Plain data parallelism on CPU (accelerate's MULTI_CPU) ran the same first step as one process.
    assert_same_trajectory(rows(f"{single}/metrics.jsonl")[:1], rows(f"{out}/metrics.jsonl")[:1])


def _worker_pid(root: int, rank: int) -> int | None:
    """The pid of the training process with RANK=rank among ``root``'s descendants."""
    import glob

    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    todo, found = [root], []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    for pid in found:
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"train.py" in cmdline and b"accelerate" not in cmdline:
            return pid
    return None
