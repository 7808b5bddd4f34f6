"""Two ZeRO-3 CPU ranks whose trajectories make different numbers of tool calls finish (slow: ~1-2 min).

``tests/agent_forced_train.py`` runs the trainer with a forced sampler: e.g. on rank 0 every
trajectory calls zoom_in once (an image observation) and then answers, on rank 1 every one
answers at once. Rank 0 then samples a second turn while rank 1 has nothing left: rank 1 must
make a matching (throwaway) generate call, or the parameter gathers inside rank 0's generate
go unanswered (``ToolRollout._most``: each turn, as many engine calls on every rank as the busiest
rank's micro-batches of active trajectories). Without the ranks' agreement the run fails in seconds
(their collectives no longer pair up); without the throwaway generate it hangs until
trainer.collective_timeout_s (300 s here); past TIMEOUT_S the test kills the run and its ranks.
"""

import glob
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.launching import ACCELERATE_CONFIGS, BIN, ROOT, env, free_port, rows

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, "tests", "agent_forced_train.py")
TIMEOUT_S = 600  # a hang fails the test instead of blocking CI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from rlvr.devtools.make_tiny_model import make_tiny_model

    return make_tiny_model("qwen2_5_vl", str(tmp_path_factory.mktemp("tools-model")), tool_tokens=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    from rlvr.devtools.make_tools_demo_data import main as make_tools_demo_data

    out = str(tmp_path_factory.mktemp("tools-data"))
    make_tools_demo_data(["--out", out, "--train", "4", "--val", "1", "--sft", "1"])
    # mixed.jsonl: the 4 image rows (ids train-*), then 4 text-only ones
    with open(f"{out}/train.jsonl", encoding="utf-8") as f:
        text = f.read()
    with open(f"{out}/mixed.jsonl", "w", encoding="utf-8") as f:
        f.write(text + "".join(json.dumps({"id": f"text-{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)})
                               + "\n" for i in range(4)))
    return out


def config(model_dir: str, train_file: str, out: str, path: str) -> str:
    """Two steps of one prompt per rank, two samples each; no evaluation, no final model."""
    cfg = {
        "output_dir": out,
        "model": {"name_or_path": model_dir},
        "data": {"train_files": [train_file], "prompt_template": "{question}",
                 "min_pixels": 3136, "max_pixels": 12544, "max_prompt_tokens": 1024},
        # a call is 43 tokens, an observation with its image ~83: two of each and the answer need ~260
        "tools": {"names": ["zoom_in"], "max_calls": 2, "max_turns": 3, "max_total_tokens": 320},
        "rollout": {"group_size": 2, "max_new_tokens": 64, "micro_batch_size": 8},
        "reward": {"functions": [{"name": "tests.reward_fixtures:odd_length"}]},
        "trainer": {"max_steps": 2, "prompts_per_step": 2, "micro_batch_size": 2, "collective_timeout_s": 300},
        "checkpoint": {"save_final_model": False},
        "log": {"progress_bar": False, "samples_every": 0, "plots": False},
    }
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    return path


def launch(cfg_path: str, calls: str, *overrides: str) -> subprocess.CompletedProcess:
    """``tests/agent_forced_train.py`` on two ZeRO-3 processes; killed, workers included, past TIMEOUT_S."""
    cmd = [os.path.join(BIN, "accelerate"), "launch", "--config_file", os.path.join(ACCELERATE_CONFIGS, "zero3.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()), SCRIPT, "--config", cfg_path, *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env(RLVR_FORCED_CALLS=calls), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"the run hung: no exit after {TIMEOUT_S} s; its stderr ends:\n{err[-3000:]}")
    finally:
        kill_tree(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and every process below it. Not a process group: torch's elastic agent
    starts each rank in a session of its own, so killing the launcher's group would leave the
    ranks running (until their collective timeout, or for ever in a true hang)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.split("/")[2]))
    todo, found = [root], []
    while todo:  # collected before any kill: an orphan is re-parented and lost from the tree
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("gather, calls", [(False, (1, 0)), (True, (1, 0)), (False, (1, 2))],
                         ids=["partitioned", "gathered", "partitioned-rank1-longer"])
def test_ranks_making_different_numbers_of_calls_finish_under_zero3(gather, calls, model_dir, data_dir, tmp_path):
    """calls (1, 0): rank 1 idles through rank 0's second turn; (1, 2): rank 0, the main process,
    idles through rank 1's third turn, which follows two image observations (tools.max_calls=2 and
    max_turns=3 reached, not passed)."""
    out = str(tmp_path / "run")
    cfg = config(model_dir, f"{data_dir}/train.jsonl", out, str(tmp_path / "config.yaml"))
    result = launch(cfg, ",".join(map(str, calls)), f"rollout.zero3_gather_weights={str(gather).lower()}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "process group of 2: rank 0" in result.stderr and "rank 1 on" in result.stderr
    got = rows(f"{out}/metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2]
    c0, c1 = calls  # every trajectory of rank r makes calls[r] calls; each rank's mean, averaged over the ranks
    for r in got:
        assert r["tools/calls_per_sample"] == (c0 + c1) / 2 and r["tools/zoom_in/calls_per_sample"] == (c0 + c1) / 2
        assert r["tools/turns_mean"] == ((c0 + 1) + (c1 + 1)) / 2  # model turns: the calls, then the answer
        assert r["tools/end/answer"] == 1.0 and r["tools/error_frac"] == 0.0
        assert r["tools/answered_after_call"] == ((c0 > 0) + (c1 > 0)) / 2
        # the forward under ZeRO-3 over [prompt | call | observation with its image | ... | answer]
        # gives the log-probs the sampler recorded for the forced tokens
        assert r["rollout/logprob_diff_max"] < 1e-4, r["rollout/logprob_diff_max"]
        assert r["reward/std"] > 0  # "It is 3" and "It is 33" in every group: the step updated
    print(f"gather={gather} calls={calls}: logprob_diff_max {max(r['rollout/logprob_diff_max'] for r in got):.1e}, "
          f"step times {[round(r['time/step_s'], 1) for r in got]} s")


def test_observation_images_on_one_rank_while_the_other_has_only_text(model_dir, data_dir, tmp_path):
    """Trajectories whose prompt has an image call zoom_in once, text-only ones answer at once.
    In a step where rank 1 drew a text-only prompt, rank 0's second turn encodes the observation
    image while rank 1's throwaway generate has no image: the vision tower must still be called
    on both ranks (under partitioned ZeRO-3 its parameters are gathered collectively), in the
    generate and in the training forward."""
    out = str(tmp_path / "run")
    cfg = config(model_dir, f"{data_dir}/mixed.jsonl", out, str(tmp_path / "config.yaml"))
    result = launch(cfg, "image", "rollout.zero3_gather_weights=false", "trainer.max_steps=4")
    assert result.returncode == 0, result.stderr[-4000:]
    got, prompts = rows(f"{out}/metrics.jsonl"), rows(f"{out}/prompts.jsonl")
    assert [r["step"] for r in got] == [p["step"] for p in prompts] == [1, 2, 3, 4]
    mixed = 0
    for r, p in zip(got, prompts):
        with_image = [[i < 4 for i in rows_] for rows_ in p["by_rank"]]  # rows 0-3 have an image
        per_rank = [sum(flags) / len(flags) for flags in with_image]  # each rank's calls per sample
        assert r["tools/calls_per_sample"] == sum(per_rank) / 2, (p, r["tools/calls_per_sample"])
        assert r["tools/turns_mean"] == 1 + sum(per_rank) / 2 and r["tools/end/answer"] == 1.0
        assert r["rollout/logprob_diff_max"] < 1e-4, r["rollout/logprob_diff_max"]
        mixed += sorted(per_rank) == [0.0, 1.0]
    assert mixed  # with seed 42: steps 2 and 3 give one rank an image and the other only text
    print(f"image on one rank: {mixed} mixed steps of 4, logprob_diff_max "
          f"{max(r['rollout/logprob_diff_max'] for r in got):.1e}")


def test_more_active_trajectories_than_one_micro_batch(model_dir, data_dir, tmp_path):
    """Rank 0: 2 prompts x 2 samples all call (4 active in turn 2, two micro-batches of 2); rank 1:
    none (one throwaway generate). Every rank must run as many micro-batches as the busiest."""
    out = str(tmp_path / "run")
    cfg = config(model_dir, f"{data_dir}/train.jsonl", out, str(tmp_path / "config.yaml"))
    result = launch(cfg, "1,0", "rollout.zero3_gather_weights=false", "rollout.micro_batch_size=2",
                    "trainer.prompts_per_step=4")
    assert result.returncode == 0, result.stderr[-4000:]
    got = rows(f"{out}/metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2] and all(r["tools/calls_per_sample"] == 0.5 for r in got)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
