"""launch/train.py with a forced sampler: each rank's trajectories make a known number of tool calls.

    DS_ACCELERATOR=cpu RLVR_FORCED_CALLS=1,0 accelerate launch --config_file launch/accelerate/zero3.yaml \
        --num_processes 2 tests/agent_forced_train.py --config CONFIG [key=value ...]

Run by ``tests/test_agent_distributed.py`` (not collected by pytest itself). ``RLVR_FORCED_CALLS``
gives the calls of each rank's trajectories (rank r: the r-th number), or is ``image``: one call
in trajectories whose prompt has an image, none in text-only ones. ``SeededSampling`` is
replaced by a sampler that writes, on rank r, ``CALL`` while the row has had fewer than that many
observations, then an answer: "It is 3" on even rows of a generate micro-batch, "It is 33" on odd
ones (so a group's rewards differ under ``tests.reward_fixtures:odd_length`` and every step
updates). The turn is read from the row itself (how many ``<tool_response>`` tokens it holds),
so the throwaway generate of an idle rank and the evaluation change nothing. Like the test
sampler of ``tests/test_agent_rollout.py`` it records the model's own log-prob of each forced
token, so the training forward must reproduce them (``rollout/logprob_diff_max``).
"""

from __future__ import annotations

import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CALL = '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [0, 0, 500, 500], "factor": 2}}\n</tool_call>'
ANSWERS = ("It is 3<|im_end|>", "It is 33<|im_end|>")  # decoded without the stop: 7 and 8 characters


def forced_sampling(calls_by_rank: list[int], model_dir: str):
    from transformers import AutoTokenizer

    from rlvr.rollout import sampling

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    call, answers = encode(CALL), [encode(a) for a in ANSWERS]
    response_open = tokenizer.convert_tokens_to_ids("<tool_response>")
    assert len(encode("<tool_response>")) == 1 and len(encode("</tool_call>")) == 1, "needs --tool-tokens"

    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")

    class Forced(sampling.SeededSampling):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self.calls = calls_by_rank[rank] if calls_by_rank else None

        def script(self, row: int, ids: torch.Tensor) -> list[int]:
            observations = int((ids == response_open).sum())  # the system turn names no <tool_response>
            calls = self.calls if self.calls is not None else int(bool((ids == image_pad).any()))
            return call if observations < calls else answers[row % 2]

        def __call__(self, input_ids, scores):
            logp = self.distribution(scores)  # [b, V] the model's own, temperature-scaled
            tokens = [self.script(row, input_ids[row]) for row in range(scores.shape[0])]
            chosen = torch.tensor([t[min(self.position, len(t) - 1)] for t in tokens], device=scores.device)  # [b]
            self.logprobs.append(logp.gather(-1, chosen[:, None]).squeeze(-1))
            self.position += 1
            return torch.full_like(scores, float("-inf")).scatter_(-1, chosen[:, None], 0.0)

    return Forced


def main(argv: list[str]) -> int:
    from rlvr.cli import run_training
    from rlvr.config import load_config, parse_cli
    from rlvr.rollout import hf

    spec = os.environ["RLVR_FORCED_CALLS"]
    calls = None if spec == "image" else [int(c) for c in spec.split(",")]
    path, overrides = parse_cli(argv)
    hf.SeededSampling = forced_sampling(calls, load_config(path, overrides).model.name_or_path)
    return run_training(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
