"""Multi-turn tool rollouts (``rlvr.agent.rollout.ToolRollout``) on the vLLM engine.

vLLM records processed log-probs, so a logits processor that forced tokens would make the
recorded numbers the forced distribution's. Instead the behaviour is put in the weights: the tiny
Qwen2.5-VL (hidden 128, ``tool_tokens``: ``</tool_call>`` is one token) is trained with plain
torch on two trajectories, laid out by ``rlvr.sft.trajectory_sample`` as a rollout samples them::

    prompt (tools system turn, an image) | zoom_in call | observation (the zoomed image) | "3<|im_end|>"

where the digit is the colour of the image's top-left quarter (yellow 3, blue 7), which the
zoomed observation shows: cross-entropy on the model's tokens, observations masked, until every
model token has probability >= ``TARGET_P`` (measured: 68 Adam steps, 6.5 s on one thread). The
weights are saved with the processor and vLLM loads them. The model reads the observation:
swapping the two trajectories' observation images moves its log-probs by 3.3.

On that model, ``ToolRollout(VLLMEngine)``:
- greedy: [model, observation, model] turns; the call's and the answer's ids as trained; the
  observation is ``observation_turn`` of the zoomed image (the 56x42 quarter of one colour,
  enlarged 2x: 12 image tokens); the recorded log-probs equal the training forward's over the
  whole trajectory (``collate_sequences`` + ``response_logprobs``, shared-prompt and plain) within
  the engine contract's fp32 bound, 1e-5 (tests/vllm/test_engine_contract.py; measured 8e-7);
  the trajectories' ids and turns equal ``ToolRollout(HFEngine)``'s;
- sampled (seeded, temperature 0.5, two per prompt): the same turns; log-probs equal at the
  sampling temperature (measured 1.1e-6); the same seeds give the same trajectories in another
  batch composition.
The prompts (392 tokens) fill ``data.max_prompt_tokens`` (400): the engine's context holds the
prompt and the trajectory's tool budget (``rlvr.rollout.vllm.engine_kwargs``; with one turn's
room, vLLM refused turn 2: "maximum context length is 448 tokens ... your prompt contains 491").
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

pytest.importorskip("vllm")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rlvr.rollout.vllm_env import patch_broken_torchvision  # noqa: E402

patch_broken_torchvision()  # before transformers' image processing imports torchvision

from rlvr import logprobs as logprobs_module  # noqa: E402
from rlvr.agent.calls import observation_turn, parse_tool_call  # noqa: E402
from rlvr.agent.rollout import ToolRollout, build_registry, with_tools_prompt  # noqa: E402
from rlvr.agent.tools import Observation  # noqa: E402
from rlvr.batch import collate_sequences  # noqa: E402
from rlvr.config import Config, RolloutConfig  # noqa: E402
from rlvr.config.tools import ToolsConfig  # noqa: E402
from rlvr.data import Example  # noqa: E402
from rlvr.logprobs import response_logprobs  # noqa: E402
from rlvr.models import load_model, load_processor, save_processor, stop_token_ids  # noqa: E402
from rlvr.rollout import HFEngine  # noqa: E402
from rlvr.sft import trajectory_sample  # noqa: E402

CALL = '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [0, 0, 500, 500], "factor": 2}}\n</tool_call>'
# two rows: the digit is the colour of the image's top-left quarter, which the zoomed observation shows
CORNERS = {"3": (250, 250, 0), "7": (0, 60, 250)}
MIN_PIXELS, MAX_PIXELS = 3136, 200_000
FP32_BOUND = 1e-5  # the engine contract's fp32 bound (tests/vllm/test_engine_contract.py)
TARGET_P = 0.9  # training stops when every model token is predicted with at least this probability
MAX_STEPS = 200
TEMPERATURE = 0.5
PROMPT_BUDGET = 400


def _image(corner, size=(112, 84)) -> Image.Image:
    """Green with the top-left quarter ``corner``: zoom_in on bbox [0, 0, 500, 500] reads that quarter."""
    image = Image.new("RGB", size, (30, 160, 90))
    image.paste(corner, (0, 0, size[0] // 2, size[1] // 2))
    return image


def _config() -> Config:
    cfg = Config()
    cfg.model.dtype = "float32"
    cfg.data.min_pixels, cfg.data.max_pixels = MIN_PIXELS, MAX_PIXELS
    # the prompts are 392 tokens: the engine's context must hold the prompt and the trajectory after it,
    # not one turn (vLLM refused turn 2 when max_model_len was data.max_prompt_tokens + rollout.max_new_tokens)
    cfg.data.max_prompt_tokens = PROMPT_BUDGET
    cfg.tools = ToolsConfig(names=["zoom_in"])
    cfg.rollout = RolloutConfig(group_size=2, max_new_tokens=48, temperature=TEMPERATURE, micro_batch_size=8)
    cfg.rollout.vllm.enforce_eager, cfg.rollout.vllm.max_num_seqs = True, 32
    return with_tools_prompt(cfg)


def _train(model, prompts, samples, pad: int) -> dict:
    """Teacher-forced cross-entropy on the trajectories' model tokens (their loss masks), Adam, until
    each is predicted with probability >= TARGET_P. Returns the steps, the final NLL, min p, seconds."""
    batch = collate_sequences(prompts, samples, pad)
    mask = batch["response_mask"].bool()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    start = time.perf_counter()
    for step in range(1, MAX_STEPS + 1):
        logprobs, _ = response_logprobs(model, batch, temperature=1.0, share_prompts=False)  # [B, R]
        if float(logprobs.detach()[mask].min()) >= np.log(TARGET_P):
            break
        loss = -logprobs[mask].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    done = logprobs.detach()[mask]
    return {"steps": step, "nll": float(-done.mean()), "min_p": float(done.min().exp()),
            "seconds": round(time.perf_counter() - start, 2)}


class Setup:
    """The trained tiny model (in memory and saved), its prompts and both engines behind ToolRollout."""

    def __init__(self, tmp_path_factory):
        from rlvr.devtools.make_tiny_model import make_tiny_model, vllm_text_sizes
        from rlvr.rollout.vllm import VLLMEngine

        base = make_tiny_model("qwen2_5_vl", str(tmp_path_factory.mktemp("tools-base")),
                               text=vllm_text_sizes("qwen2_5_vl"), tool_tokens=True)
        self.cfg = _config()
        self.processor = load_processor(base, MIN_PIXELS, MAX_PIXELS)
        self.model = load_model(base, dtype="float32")
        self.pad = self.processor.tokenizer.pad_token_id
        self.registry = build_registry(self.cfg.tools)
        rows = tmp_path_factory.mktemp("tools-rows")
        self.images, self.prompts, self.samples = [], [], []
        for k, (answer, corner) in enumerate(CORNERS.items()):
            image = _image(corner)
            # the row a teacher would write: the call, the tool's observation (its image as a file), the answer
            observation = self.registry.run(parse_tool_call(CALL, self.registry.names()), [image])
            assert observation.status == "ok" and len(observation.images) == 1, observation
            observation.images[0].save(rows / f"zoom{k}.png")
            row = Example(id=str(k), question="<image>Which digit?", answer=answer, gold=None, images=[image],
                          columns={"messages": [
                              {"role": "assistant", "content": CALL},
                              {"role": "tool", "content": [{"type": "text", "text": observation.text},
                                                           {"type": "image", "image": f"zoom{k}.png"}]},
                              {"role": "assistant", "content": answer}]})
            prompt, sample = trajectory_sample(row, self.processor, self.cfg.data, base_dir=str(rows))
            self.images.append(image)
            self.prompts.append(prompt)
            self.samples.append(sample)
        torch.manual_seed(0)
        self.training = _train(self.model, self.prompts, self.samples, self.pad)
        print(f"\ntrained the tool call into the tiny model: {json.dumps(self.training)}")
        assert self.training["min_p"] >= TARGET_P, f"training did not converge: {self.training}"
        self.path = str(tmp_path_factory.mktemp("tools-trained"))
        self.model.save_pretrained(self.path)
        save_processor(load_processor(base), self.path)
        self.cfg.model.name_or_path = self.path
        stop = stop_token_ids(self.processor, self.model)
        self.hf = ToolRollout(HFEngine(self.cfg.rollout, list(stop), self.pad, self.model), self.registry,
                              self.processor, self.cfg.tools)
        self.vllm = ToolRollout(VLLMEngine(self.cfg, list(stop), self.pad), self.registry, self.processor,
                                self.cfg.tools)

    def ids(self, text: str) -> list[int]:
        return self.processor.tokenizer.encode(text, add_special_tokens=False)

    def gap(self, prompts, responses, temperature: float, share: bool) -> float:
        """Largest gap between the recorded log-probs and the training forward's on the model's tokens."""
        batch = collate_sequences([prompts[r.prompt_index] for r in responses], responses, self.pad)
        with torch.no_grad():
            forward, _ = response_logprobs(self.model, batch, temperature=temperature, share_prompts=share)  # [B, R]
        recorded = torch.zeros_like(forward)
        for row, r in enumerate(responses):
            recorded[row, :len(r.logprobs)] = r.logprobs
        return float(((forward - recorded).abs() * batch["response_mask"]).max())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = Setup(tmp_path_factory)
    yield s
    s.vllm.close()


def _check_call_trajectory(s: Setup, r, k: int) -> None:
    """``r`` calls zoom_in on prompt ``k``'s image as trained, reads its observation, then answers its digit."""
    answer, colour = list(CORNERS.items())[k]
    assert [t.kind for t in r.turns] == ["model", "observation", "model"], r.turns
    assert r.end_reason == "answer" and r.finished and r.tool_calls == 1
    first, obs, last = r.turns
    assert r.token_ids[first.start:first.end].tolist() == s.ids(CALL)  # ends with </tool_call>, one token
    assert r.token_ids[last.start:last.end].tolist() == s.ids(answer + "<|im_end|>") == r.answer_ids().tolist()
    # the observation: the top-left quarter (56 x 42, one colour) enlarged 2x, processed as observation_turn does
    assert obs.tool == "zoom_in" and obs.status == "ok" and obs.images == 1 and len(r.images) == 1
    assert r.images[0].size == (112, 84) and (np.asarray(r.images[0]) == colour).all()
    expected = observation_turn(Observation(obs.text, r.images), s.processor)
    assert r.token_ids[obs.start:obs.end].tolist() == expected.inputs.input_ids.tolist()
    assert torch.equal(r.mm_token_type_ids[obs.start:obs.end], expected.inputs.mm_token_type_ids)
    assert int(r.mm_token_type_ids.sum()) == 12  # (112 / 14) x (84 / 14) patches, merged 2 x 2
    assert torch.equal(r.image_grid_thw, expected.inputs.image_grid_thw)
    assert torch.equal(r.pixel_values, expected.inputs.pixel_values)
    mask = torch.zeros(len(r.token_ids))
    mask[first.start:first.end] = 1
    mask[last.start:last.end] = 1
    assert torch.equal(r.loss_mask, mask) and bool((r.logprobs[obs.start:obs.end] == 0).all())
    # the whole trajectory is the one trained on (SFT's layout of the teacher's row)
    assert r.token_ids.tolist() == s.samples[k].token_ids.tolist()


def test_greedy_tool_trajectories_on_vllm(setup, monkeypatch):
    s = setup
    one = dataclasses.replace(s.cfg.rollout, group_size=1)
    out = s.vllm.generate(s.prompts, greedy=True, settings=one)
    assert max(len(p.input_ids) for p in s.prompts) <= PROMPT_BUDGET < max(len(p.input_ids) + len(r.token_ids)
                                                                          for p, r in zip(s.prompts, out)) - 48
    # tools.max_turns (4) x rollout.max_new_tokens (48) after the prompt budget
    assert s.vllm.engine.llm.llm_engine.model_config.max_model_len == PROMPT_BUDGET + 4 * 48
    for k, r in enumerate(out):
        _check_call_trajectory(s, r, k)
    # greedy log-probs are of the untempered distribution; the model's tokens are not all certain
    model_logprobs = torch.cat([r.logprobs[r.loss_mask.bool()] for r in out])
    print(f"\ngreedy: min log-prob {float(model_logprobs.min()):.3e}")
    assert float(model_logprobs.min()) < -1e-2
    shared = []
    monkeypatch.setattr(logprobs_module, "_shared_prompt_hidden",
                        lambda *a, original=logprobs_module._shared_prompt_hidden: shared.append(1) or original(*a))
    for share in (True, False):
        gap = s.gap(s.prompts, out, 1.0, share)
        print(f"greedy gap (share_prompts={share}) {gap:.3e}")
        assert gap < FP32_BOUND, (share, gap)
    assert shared == [1]
    # a sequence the model never saw (the other prompt's zoomed image in the observation) gives other log-probs
    swapped = [dataclasses.replace(r, pixel_values=o.pixel_values) for r, o in zip(out, reversed(out))]
    wrong = s.gap(s.prompts, swapped, 1.0, False)
    print(f"gap with the observation images swapped {wrong:.3e}")
    assert wrong > 1e-2


def test_greedy_tool_trajectories_equal_between_engines(setup):
    s = setup
    one = dataclasses.replace(s.cfg.rollout, group_size=1)
    out = {name: engine.generate(s.prompts, greedy=True, settings=one) for name, engine in (("hf", s.hf),
                                                                                              ("vllm", s.vllm))}
    assert [r.token_ids.tolist() for r in out["hf"]] == [r.token_ids.tolist() for r in out["vllm"]]
    assert [[dataclasses.astuple(t) for t in r.turns] for r in out["hf"]] == \
        [[dataclasses.astuple(t) for t in r.turns] for r in out["vllm"]]
    for k, r in enumerate(out["hf"]):
        _check_call_trajectory(s, r, k)


def test_sampled_tool_trajectories_on_vllm(setup):
    s = setup
    together = s.vllm.generate(s.prompts, seeds=[11, 12])  # group_size 2, at TEMPERATURE
    assert [r.prompt_index for r in together] == [0, 0, 1, 1]
    for r in together:
        _check_call_trajectory(s, r, r.prompt_index)
    model_logprobs = torch.cat([r.logprobs[r.loss_mask.bool()] for r in together])
    print(f"\nsampled: min log-prob {float(model_logprobs.min()):.3e}")
    assert float(model_logprobs.min()) < -1e-3
    for share in (True, False):
        gap = s.gap(s.prompts, together, TEMPERATURE, share)
        print(f"sampled gap (share_prompts={share}) {gap:.3e}")
        assert gap < FP32_BOUND, (share, gap)
    # the same seeds, another batch: the same trajectories, every turn
    alone = s.vllm.generate(s.prompts[::-1], seeds=[12, 11])
    assert [r.token_ids.tolist() for r in alone] == [r.token_ids.tolist() for r in together[2:] + together[:2]]
    assert [r.prompt_index for r in alone] == [0, 0, 1, 1]
