"""Multi-turn tool rollouts (rlvr.agent.rollout) on the HF engine with a tiny Qwen2.5-VL.

A forced-token sampler makes the random model write a known tool call: the sampler records the
model's own log-prob of each forced token (the distribution it would have sampled from), so the
training forward over the whole trajectory must give the same numbers on the model's tokens.
"""

import dataclasses
import threading
import time

import pytest
import torch
from PIL import Image

from rlvr.agent.calls import observation_turn, tools_system_prompt
from rlvr.agent.rollout import ToolRollout, build_registry, tool_columns, tool_metrics, with_tools_prompt
from rlvr.agent.tools import Observation, Tool
from rlvr.batch import collate_sequences, encode_prompt
from rlvr.config import Config, DataConfig, RolloutConfig
from rlvr.config.tools import ToolsConfig
from rlvr.data import Example
from rlvr.devtools.make_tiny_model import make_tiny_model
from rlvr import logprobs as logprobs_module
from rlvr.logprobs import response_logprobs
from rlvr.models import load_model, load_processor, stop_token_ids
from rlvr.rollout import HFEngine, hf, sampling

CALL = '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [0, 0, 500, 500], "factor": 2}}\n</tool_call>'


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_model("qwen2_5_vl", str(tmp_path_factory.mktemp("tools")), tool_tokens=True)
    return load_processor(path), load_model(path, dtype="float32").eval()


class Script:
    """What the forced sampler writes: ``turns[k]`` is the text of the k-th generate call's rows."""

    def __init__(self, tokenizer, turns: list[str]):
        self.turns = [tokenizer.encode(t, add_special_tokens=False) for t in turns]
        self.calls = 0


def forced_sampling(script: Script):
    """A SeededSampling that chooses the script's tokens but records the model's log-prob of each."""

    class Forced(sampling.SeededSampling):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.tokens = script.turns[min(script.calls, len(script.turns) - 1)]
            script.calls += 1

        def __call__(self, input_ids, scores):
            logp = self.distribution(scores)  # [b, V] the model's, temperature-scaled
            token = self.tokens[min(self.position, len(self.tokens) - 1)]
            chosen = torch.full((scores.shape[0],), token, dtype=torch.long)
            self.logprobs.append(logp.gather(-1, chosen[:, None]).squeeze(-1))
            self.position += 1
            return torch.full_like(scores, float("-inf")).scatter_(-1, chosen[:, None], 0.0)

    return Forced


def _setup(tiny, monkeypatch, turns, tools=None, max_new_tokens=80, image_size=(280, 196)):
    processor, model = tiny
    cfg = Config()
    cfg.tools = tools or ToolsConfig(names=["zoom_in", "crop"])
    cfg.rollout = RolloutConfig(group_size=2, max_new_tokens=max_new_tokens, temperature=0.8, micro_batch_size=8)
    cfg = with_tools_prompt(cfg)
    image = Image.new("RGB", image_size, (30, 160, 90))
    image.paste((250, 250, 0), (0, 0, image_size[0] // 2, image_size[1] // 2))
    example = Example(id="a", question="<image>Which digit?", answer="3", gold=None, images=[image])
    prompt = encode_prompt(example, processor, cfg.data)
    script = Script(processor.tokenizer, turns)
    monkeypatch.setattr(hf, "SeededSampling", forced_sampling(script))
    engine = HFEngine(cfg.rollout, stop_token_ids(processor, model), processor.tokenizer.pad_token_id, model)
    rollout = ToolRollout(engine, build_registry(cfg.tools), processor, cfg.tools)
    return processor, model, cfg, prompt, rollout


def test_a_forced_call_runs_the_tool_and_the_trajectory_trains_on_the_models_tokens_only(tiny, monkeypatch):
    processor, model, cfg, prompt, rollout = _setup(tiny, monkeypatch, [CALL, "It is 3<|im_end|>"])
    seen, generate = [], rollout.engine.generate
    rollout.engine.generate = lambda prompts, seeds, **kw: seen.append((len(prompts), seeds, kw)) or generate(
        prompts, seeds, **kw)
    out = rollout.generate([prompt], [5])
    assert len(out) == 2
    # turn 1: the prompt's G samples together; turn 2: each sample's own stream, mix_seed(mix_seed(5, j), 1)
    assert seen[0][:2] == (1, [5]) and seen[0][2]["settings"].group_size == 2
    assert seen[1][:2] == (2, [sampling.mix_seed(sampling.mix_seed(5, j), 1) for j in range(2)])
    assert seen[1][2]["settings"].group_size == 1 and len(seen) == 2
    tok = processor.tokenizer
    call_ids, answer_ids = (tok.encode(t, add_special_tokens=False) for t in (CALL, "It is 3<|im_end|>"))
    for r in out:
        assert [t.kind for t in r.turns] == ["model", "observation", "model"]
        assert r.end_reason == "answer" and r.finished and r.tool_calls == 1
        first, obs, last = r.turns
        # the model's tokens are the sampled ids themselves, in place (never decoded and re-tokenised)
        assert r.token_ids[first.start:first.end].tolist() == call_ids
        assert r.token_ids[last.start:last.end].tolist() == answer_ids
        assert r.answer_ids().tolist() == answer_ids
        # the observation is what observation_turn makes of the tool's output, image included
        assert obs.tool == "zoom_in" and obs.status == "ok" and obs.images == 1 and len(r.images) == 1
        assert r.images[0].size == (280, 196)  # the top-left quarter (140 x 98) zoomed 2x
        expected = observation_turn(Observation(obs.text, r.images), processor)
        assert r.token_ids[obs.start:obs.end].tolist() == expected.inputs.input_ids.tolist()
        assert torch.equal(r.mm_token_type_ids[obs.start:obs.end], expected.inputs.mm_token_type_ids)
        assert torch.equal(r.image_grid_thw, expected.inputs.image_grid_thw)
        # loss mask: 1 exactly on the model's tokens
        mask = torch.zeros(len(r.token_ids))
        mask[first.start:first.end] = 1
        mask[last.start:last.end] = 1
        assert torch.equal(r.loss_mask, mask) and r.trained_tokens == len(call_ids) + len(answer_ids)
        assert torch.all(r.logprobs[obs.start:obs.end] == 0)
    # the training forward over [prompt | trajectory] gives the sampler's log-probs on the model's tokens
    batch = collate_sequences([prompt, prompt], out, processor.tokenizer.pad_token_id)
    assert len(batch["image_grid_thw"]) == 4 and batch["image_source"].tolist() == [0, 1, 0, 3]
    assert batch["image_owner"].tolist() == [0, 1, 0, 1]
    shared = []
    monkeypatch.setattr(logprobs_module, "_shared_prompt_hidden",
                        lambda *a, original=logprobs_module._shared_prompt_hidden: shared.append(1) or original(*a))
    for share in (True, False):
        logprobs, _ = response_logprobs(model, batch, temperature=0.8, share_prompts=share)
        for row, r in enumerate(out):
            m = r.loss_mask.bool()
            diff = (logprobs[row, :len(r.token_ids)][m] - r.logprobs[m]).abs().max().item()
            assert diff < 1e-4, diff
    assert shared == [1]  # the prompt computed once, the observation images encoded after it
    # and a sequence the model never saw (the observation image left out of the batch) does not match
    broken = dataclasses.replace(out[0], mm_token_type_ids=torch.zeros_like(out[0].mm_token_type_ids),
                                 pixel_values=None, image_grid_thw=None)
    batch = collate_sequences([prompt], [broken], processor.tokenizer.pad_token_id)
    logprobs, _ = response_logprobs(model, batch, temperature=0.8)
    m = out[0].loss_mask.bool()
    last = out[0].turns[2]
    assert (logprobs[0, last.start:last.end] - out[0].logprobs[last.start:last.end]).abs().max() > 1e-3


def test_tool_errors_become_observations_and_budgets_end_trajectories(tiny, monkeypatch):
    bad = '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [0, 0]}}\n</tool_call>'
    unknown = '<tool_call>\n{"name": "rotate", "arguments": {}}\n</tool_call>'
    processor, model, cfg, prompt, rollout = _setup(tiny, monkeypatch, [bad, unknown, CALL, "3<|im_end|>"],
                                                    tools=ToolsConfig(names=["zoom_in"], max_calls=2))
    out = rollout.generate([prompt], [1])
    r = out[0]
    obs = [t for t in r.turns if t.kind == "observation"]
    assert [t.status for t in obs] == ["error", "invalid"] and obs[0].tool == "zoom_in" and obs[1].tool is None
    assert "bbox_2d" in obs[0].text and "unknown tool 'rotate'" in obs[1].text
    # the third call is past max_calls=2: not run, the trajectory ends there, and there is no answer to score
    assert r.end_reason == "max_calls" and r.answer_ids().numel() == 0 and not r.finished
    assert [t.kind for t in r.turns] == ["model", "observation", "model", "observation", "model"]
    assert tool_columns(out) == {"tool_calls": [2, 2], "tool_errors": [2, 2], "end_reason": ["max_calls"] * 2}
    # text-only observations: the shared-prompt forward runs, and attends to them although they are not trained on
    batch = collate_sequences([prompt, prompt], out, processor.tokenizer.pad_token_id)
    assert int(batch["response_images"]) == 0
    for share in (True, False):
        logprobs, _ = response_logprobs(model, batch, temperature=0.8, share_prompts=share)
        for row, r in enumerate(out):
            m = r.loss_mask.bool()
            assert (logprobs[row, :len(r.token_ids)][m] - r.logprobs[m]).abs().max() < 1e-4, share
    m = tool_metrics(out, ["zoom_in"])
    assert m["tools/calls_per_sample"] == 2 and m["tools/error_frac"] == 0.5 and m["tools/invalid_frac"] == 0.5
    assert m["tools/end/max_calls"] == 1 and m["tools/answered_after_call"] == 0 and m["tools/turns_mean"] == 3


def test_max_turns_max_images_and_the_token_budget(tiny, monkeypatch):
    for tools, reason, kinds in (
        (ToolsConfig(names=["zoom_in"], max_turns=1), "max_turns", ["model"]),
        (ToolsConfig(names=["zoom_in"], max_images=0), "max_images", ["model"]),
        (ToolsConfig(names=["zoom_in"], max_total_tokens=100), "max_tokens", ["model"]),
    ):
        _, _, _, prompt, rollout = _setup(tiny, monkeypatch, [CALL, "3<|im_end|>"], tools=tools)
        r = rollout.generate([prompt], [1])[0]
        assert r.end_reason == reason and [t.kind for t in r.turns] == kinds, (reason, r.end_reason)
        assert r.tool_calls == 0 and r.answer_ids().numel() == 0
    # a turn longer than what is left of the budget is cut there
    _, _, _, prompt, rollout = _setup(tiny, monkeypatch, [CALL, "3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3<|im_end|>"],
                                      tools=ToolsConfig(names=["zoom_in"], max_total_tokens=None), max_new_tokens=80)
    r = rollout.generate([prompt], [1])[0]
    assert r.end_reason == "answer"
    budget = rollout.budget(rollout.settings)
    _, _, _, prompt, rollout = _setup(tiny, monkeypatch, [CALL, "3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3<|im_end|>"],
                                      tools=ToolsConfig(names=["zoom_in"], max_total_tokens=len(r.token_ids) - 5))
    cut = rollout.generate([prompt], [1])[0]
    assert cut.end_reason == "max_tokens" and len(cut.token_ids) == len(r.token_ids) - 5 and budget > len(r.token_ids)
    assert torch.equal(cut.token_ids, r.token_ids[:len(cut.token_ids)])


class Sleepy(Tool):
    name = "sleepy"
    description = "never answers in time"
    parameters = {"type": "object", "properties": {}}

    release = threading.Event()

    def call(self, arguments, images):
        self.release.wait(60)  # hangs until the test lets it go
        return Observation("late")


def test_a_tool_that_times_out_still_yields_an_observation(tiny, monkeypatch):
    processor, model, cfg, prompt, rollout = _setup(
        tiny, monkeypatch, ['<tool_call>\n{"name": "sleepy", "arguments": {}}\n</tool_call>', "3<|im_end|>"],
        tools=ToolsConfig(names=["zoom_in"], call_timeout_s=0.2))
    rollout.registry.register(Sleepy())
    t0 = time.perf_counter()
    r = rollout.generate([prompt], [1])[0]
    Sleepy.release.set()
    assert time.perf_counter() - t0 < 30  # the rollout went on without the hung tool
    obs = r.turns[1]
    assert obs.status == "timeout" and obs.tool == "sleepy" and "timed out" in obs.text and r.end_reason == "answer"


def test_the_tools_are_listed_in_the_system_turn(tiny):
    processor, _ = tiny
    cfg = Config()
    cfg.tools = ToolsConfig(names=["crop", "zoom_in"])
    cfg.data = DataConfig(system_prompt="Be brief.")
    with_prompt = with_tools_prompt(cfg)
    assert with_prompt.data.system_prompt == tools_system_prompt(build_registry(cfg.tools).schemas(), "Be brief.")
    assert '"name": "crop"' in with_prompt.data.system_prompt and cfg.data.system_prompt == "Be brief."
    assert with_tools_prompt(Config()) .data.system_prompt is None  # no tools: the config unchanged


def test_seeds_make_trajectories_reproducible_in_any_batch(tiny):
    """Without forcing: the random model's own samples; the same seeds give the same trajectories."""
    processor, model = tiny
    cfg = Config()
    cfg.tools = ToolsConfig(names=["zoom_in"])
    cfg.rollout = RolloutConfig(group_size=2, max_new_tokens=8, micro_batch_size=8)
    cfg = with_tools_prompt(cfg)
    prompts = [encode_prompt(Example(id=str(i), question=f"Question {i}", answer="1", gold=None, images=[]),
                             processor, cfg.data) for i in range(3)]
    engine = HFEngine(cfg.rollout, stop_token_ids(processor, model), processor.tokenizer.pad_token_id, model)
    rollout = ToolRollout(engine, build_registry(cfg.tools), processor, cfg.tools)
    both = rollout.generate(prompts, [7, 8, 9])
    alone = rollout.generate(prompts[1:2], [8])
    assert [r.token_ids.tolist() for r in both[2:4]] == [r.token_ids.tolist() for r in alone]
    assert all(r.turns and r.end_reason in ("answer", "length") for r in both)


def test_a_dead_or_wrong_service_stops_the_run_before_it_starts(monkeypatch):
    import socket

    from rlvr.agent.rollout import check_tool_services
    from rlvr.config import ConfigError
    from rlvr.config.tools import ToolServiceConfig

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tools = ToolsConfig(services=[ToolServiceConfig(name="detect", url=f"http://127.0.0.1:{port}")])
    with pytest.raises(ConfigError, match=f"detect: cannot reach http://127.0.0.1:{port}/health"):
        check_tool_services(tools)
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    tools.services[0].token_env = "NO_SUCH_TOKEN"
    with pytest.raises(ConfigError, match="token_env NO_SUCH_TOKEN is not set"):
        build_registry(tools)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "qwen3_5"])
def test_every_family_trains_on_the_context_it_sampled_in(family, tmp_path, monkeypatch):
    """The other families (Qwen2.5-VL above): a forced zoom call, its image observation, the answer;
    the training forward (shared-prompt where the family allows it, and plain) equals the sampler."""
    path = make_tiny_model(family, str(tmp_path / family), tool_tokens=True)
    tiny = (load_processor(path), load_model(path, dtype="float32").eval())
    processor, model, cfg, prompt, rollout = _setup(tiny, monkeypatch, [CALL, "3<|im_end|>"])
    out = rollout.generate([prompt], [2])
    assert all([t.kind for t in r.turns] == ["model", "observation", "model"] and r.end_reason == "answer"
               and r.turns[1].status == "ok" and len(r.images) == 1 for r in out)
    batch = collate_sequences([prompt, prompt], out, processor.tokenizer.pad_token_id)
    for share in (True, False):
        logprobs, _ = response_logprobs(model, batch, temperature=0.8, share_prompts=share)
        for row, r in enumerate(out):
            m = r.loss_mask.bool()
            assert (logprobs[row, :len(r.token_ids)][m] - r.logprobs[m]).abs().max() < 1e-4, (family, share)


def test_a_vllm_context_shorter_than_a_trajectory_is_refused_with_the_length_it_needs():
    from rlvr.config import ConfigError, check_config, load_config

    over = ["rollout.engine=vllm", "tools.names=[zoom_in]", "tools.max_turns=3", "rollout.max_new_tokens=100",
            "data.max_prompt_tokens=500", "data.train_files=[x.jsonl]", "model.name_or_path=m"]
    with pytest.raises(ConfigError, match="max_model_len=600 is shorter .* = 800"):
        check_config(load_config(None, over + ["rollout.vllm.max_model_len=600"]))
    check_config(load_config(None, over + ["rollout.vllm.max_model_len=800"]))
    check_config(load_config(None, over[1:] + ["rollout.vllm.max_model_len=600"]))  # the HF engine has no such limit
