"""The supervised cold start (rlvr.sft): the trajectory's token layout, the loss on assistant tokens only,
counted skips, the config rule, and a short SFT run of the tiny model whose NLL falls."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rlvr.agent.calls import observation_turn
from rlvr.agent.tools import Observation
from rlvr.config import Config, ConfigError, check_config, load_config
from rlvr.data import DataError, load_examples, open_image
from tests.conftest import save_image, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALL = '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [0, 0, 500, 500]}}\n</tool_call>'


def _messages(answer: str, image: str = "images/zoom.png", text: str = "Zoomed in.") -> list[dict]:
    """A two-turn trajectory: a call, its observation (text and an image), the answer."""
    return [{"role": "assistant", "content": CALL},
            {"role": "tool", "content": [{"type": "text", "text": text}, {"type": "image", "image": image}]},
            {"role": "assistant", "content": f"The digit is {answer}."}]


def _row(i: int, answer: str = "7", **extra) -> dict:
    return {"id": f"t{i}", "question": "Which digit?", "answer": answer, "images": ["images/q.png"],
            "messages": _messages(answer), **extra}


def _data(tmp_path, rows) -> str:
    os.makedirs(tmp_path / "images", exist_ok=True)
    save_image(tmp_path / "images" / "q.png", (56, 56), (200, 30, 30))
    save_image(tmp_path / "images" / "zoom.png", (56, 56), (30, 30, 200))
    return write_jsonl(tmp_path / "traj.jsonl", rows)


def _examples(tmp_path, rows, processor):
    cfg = Config()
    return load_examples([_data(tmp_path, rows)], cfg.data, processor)[0], cfg


@pytest.fixture(scope="module")
def processor(qwen25_dir):
    from rlvr.models import load_processor

    return load_processor(qwen25_dir)


def test_trajectory_layout_is_prompt_call_observation_answer(tmp_path, processor):
    """token ids = prompt | assistant 1 | observation | assistant 2 + <|im_end|>, mask 1 on the assistant's only."""
    from rlvr.batch import encode_prompt
    from rlvr.sft import trajectory_sample

    (example,), cfg = _examples(tmp_path, [_row(0)], processor)
    prompt, response = trajectory_sample(example, processor, cfg.data, base_dir=str(tmp_path))
    tok = processor.tokenizer
    a1 = tok(CALL, add_special_tokens=False)["input_ids"]
    obs = observation_turn(Observation("Zoomed in.", [open_image(str(tmp_path / "images" / "zoom.png"))]), processor)
    o = obs.inputs.input_ids.tolist()
    a2 = tok("The digit is 7.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(a2[-1]) == "<|im_end|>"  # the stop token is trained on
    assert torch.equal(prompt.input_ids, encode_prompt(example, processor, cfg.data).input_ids)
    assert response.token_ids.tolist() == a1 + o + a2
    assert response.loss_mask.tolist() == [1.0] * len(a1) + [0.0] * len(o) + [1.0] * len(a2)
    assert response.trained_tokens == len(a1) + len(a2)
    # the observation's tokens, image slots and pixels are observation_turn's, after the prompt's image
    assert response.mm_token_type_ids.tolist() == [0] * len(a1) + obs.inputs.mm_token_type_ids.tolist() + [0] * len(a2)
    assert response.mm_token_type_ids.sum() > 0
    assert len(response.images) == 1 and response.image_grid_thw.shape == (1, 3)
    assert torch.equal(response.pixel_values, obs.inputs.pixel_values)
    assert prompt.image_grid_thw.shape == (1, 3)  # the question's own image stays the prompt's
    assert [(t.kind, t.start, t.end) for t in response.turns] == [
        ("model", 0, len(a1)), ("observation", len(a1), len(a1) + len(o)),
        ("model", len(a1) + len(o), len(a1) + len(o) + len(a2))]
    assert response.turns[1].tool == "zoom_in" and response.turns[1].images == 1 and response.tool_calls == 1
    assert response.finished and response.end_reason == "answer" and not response.logprobs.any()
    assert torch.equal(response.answer_ids(), torch.tensor(a2))


def test_sft_loss_counts_the_assistant_tokens_only(tmp_path, processor, qwen25_dir):
    """The loss of the pipeline (collate, training forward, sft loss) equals the NLL of the assistant
    tokens computed here from the tiny model's logits on the whole sequence, by hand."""
    from rlvr.batch import collate_sequences
    from rlvr.logprobs import response_logprobs
    from rlvr.losses import POLICY_LOSSES
    from rlvr.models import load_model, never_sample_ids
    from rlvr.sft import trajectory_sample

    (example,), cfg = _examples(tmp_path, [_row(0)], processor)
    prompt, response = trajectory_sample(example, processor, cfg.data, base_dir=str(tmp_path))
    model = load_model(qwen25_dir, "float32").eval()

    # Independently: one unpadded sequence through the model; token s is predicted at position s - 1.
    ids = torch.cat([prompt.input_ids, response.token_ids])  # [L]
    with torch.no_grad():
        logits = model(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None],
                       mm_token_type_ids=torch.cat([prompt.mm_token_type_ids, response.mm_token_type_ids])[None],
                       pixel_values=torch.cat([prompt.pixel_values, response.pixel_values]),
                       image_grid_thw=torch.cat([prompt.image_grid_thw, response.image_grid_thw])).logits[0]  # [L, V]
    # The policy never samples the vision markers (rlvr.models.never_sample_ids): its softmax leaves them out.
    logits = logits.float()
    logits[:, never_sample_ids(model)] = float("-inf")
    logp = logits.log_softmax(-1)  # [L, V]
    p = len(prompt.input_ids)
    token_logp = [logp[p + t - 1, ids[p + t]].item() for t in range(len(response.token_ids))]
    mask = response.loss_mask.tolist()
    by_hand = -sum(lp for lp, m in zip(token_logp, mask) if m) / sum(mask)  # assistant tokens only
    everything = -sum(token_logp) / len(token_logp)  # what a loss on the observation too would give

    batch = collate_sequences([prompt], [response], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        lp, _ = response_logprobs(model, batch, temperature=1.0)  # [1, R]
    loss, metrics = POLICY_LOSSES["sft"](lp, lp, torch.ones(1), batch["response_mask"])
    assert loss.item() == pytest.approx(by_hand, abs=1e-5)
    assert metrics["sft/nll"].item() == pytest.approx(by_hand, abs=1e-5)
    assert metrics["sft/nll#tokens"].item() == response.trained_tokens
    assert abs(everything - by_hand) > 0.05, (everything, by_hand)  # the observation tokens would change it


@pytest.fixture(scope="module")
def given(processor):
    """4 prompts with 0 to 2 images x 2 given responses of 2 to 9 tokens (as tests/test_update.py's rollout)."""
    from rlvr.batch import Response
    from tests.test_logprobs import _prompt

    prompts = [_prompt(processor, "q" * (1 + 9 * i), [(56 + 28 * (i % 3), 56)] * (i % 3)) for i in range(4)]
    g = torch.Generator().manual_seed(3)
    responses = [Response(i // 2, torch.randint(10, 300, (2 + (5 * i) % 8,), generator=g), torch.zeros(2 + (5 * i) % 8),
                          True) for i in range(8)]
    return processor, [prompts[r.prompt_index] for r in responses], responses, torch.ones(8)


def test_the_update_with_sft_reads_the_data_at_temperature_one(qwen25_dir, given):
    """PolicyUpdate with algorithm.loss=sft: sft/nll is the NLL of the given tokens at temperature 1
    (rollout.temperature=0.5 and a vLLM engine's rollout correction play no part), the same with one
    sample per micro-batch, and there are no rollout/* metrics (no sampler log-probs exist)."""
    from rlvr.batch import collate_sequences
    from rlvr.logprobs import response_logprobs
    from rlvr.models import load_model
    from tests.test_update import _update

    processor, prompts, responses, _ = given
    with torch.no_grad():
        lp, _ = response_logprobs(load_model(qwen25_dir, "float32"),
                                  collate_sequences(prompts, responses, processor.tokenizer.pad_token_id))  # [8, R]
    mask = collate_sequences(prompts, responses, processor.tokenizer.pad_token_id)["response_mask"]  # [8, R]
    nll = (-(lp * mask).sum() / mask.sum()).item()

    def sft(cfg):
        cfg.algorithm.loss, cfg.rollout.temperature, cfg.rollout.engine = "sft", 0.5, "vllm"

    metrics = _update(qwen25_dir, given, 1, configure=sft)[0]
    assert metrics["sft/nll"] == pytest.approx(nll, rel=1e-5)
    assert not [k for k in metrics if k.startswith("rollout")], metrics
    one_by_one = _update(qwen25_dir, given, 1, micro_batch_size=1, configure=sft)[0]
    assert one_by_one["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    assert one_by_one["sft/nll"] == pytest.approx(nll, rel=1e-5)


def test_bad_trajectories_are_counted_skips_with_reasons(tmp_path, processor):
    from rlvr.data import RowError
    from rlvr.sft import TrajectoryBudget, check_trajectories, trajectory_sample

    call_then_text = [{"role": "assistant", "content": "let me look"}, *_messages("7")[1:]]
    rows = [
        _row(0),
        _row(1, messages=[]),  # no_messages
        _row(2, messages=_messages("7")[1:]),  # bad_roles: a tool message first
        _row(3, messages=call_then_text),  # bad_call: the turn before a tool message is no call
        _row(4, messages=_messages("7")[:2]),  # no_answer: ends with the tool's message
        _row(5, messages=_messages("7", image="images/gone.png")),  # missing_image
        _row(6, messages=[{"role": "assistant", "content": "x " * 200}]),  # too_long: over the turn budget
        _row(7, messages=[{"role": "assistant", "content": CALL}]),  # no_answer: a call nobody answers
        _row(8, messages=[{"role": "assistant", "content": "", }]),  # empty_turn
    ]
    examples, cfg = _examples(tmp_path, rows, processor)
    dirs = [str(tmp_path)] * len(examples)
    kept, report = check_trajectories(examples, processor, cfg.data, dirs, TrajectoryBudget(turn_tokens=100))
    assert kept == [0]
    assert dict(report.reasons) == {"no_messages": 1, "bad_roles": 1, "bad_call": 1, "no_answer": 2,
                                    "missing_image": 1, "too_long": 1, "empty_turn": 1}
    summary = report.summary()
    assert "9 rows, skipped 8" in summary and "trajectory t1: no 'messages' list" in summary
    assert "message 0 has role 'tool' where 'assistant' belongs" in summary
    assert "must be one call ending with </tool_call>" in summary and "images/gone.png" in summary
    # (the report quotes the first five reasons, as load_examples' does; the rest raise the same way)
    with pytest.raises(RowError, match="trajectory t6: message 0 is 4.. tokens, over rollout.max_new_tokens=100"):
        trajectory_sample(examples[6], processor, cfg.data, base_dir=dirs[6], budget=TrajectoryBudget(turn_tokens=100))
    # budgets of the tools config: two calls where tools.max_calls=1 allows one
    two_calls = _messages("7")[:2] * 2 + _messages("7")[2:]
    examples, _ = _examples(tmp_path, [_row(0, messages=two_calls)], processor)
    _, report = check_trajectories(examples, processor, cfg.data, dirs, TrajectoryBudget(calls=1))
    assert dict(report.reasons) == {"too_long": 1} and "2 tool calls, over tools.max_calls=1" in report.summary()
    with pytest.raises(DataError, match="data.strict=true"):
        check_trajectories(_examples(tmp_path, rows[1:2], processor)[0], processor, cfg.data, dirs, TrajectoryBudget(),
                           strict=True)


def test_trajectory_images_are_relative_to_their_own_file(tmp_path, processor):
    """Two trajectory files in different folders: each row's tool images resolve against its own file."""
    from rlvr.sft import example_dirs

    a, b = _data(tmp_path / "a", [_row(0), _row(1)]), _data(tmp_path / "b", [_row(0), _row(2, messages=[])])
    cfg = Config()
    examples = load_examples([a, b], cfg.data, processor)[0]
    assert [e.id for e in examples] == ["t0", "t1", "t0#3", "t2"]  # load_examples renames the repeated id
    assert example_dirs(examples, [a, b], cfg.data) == [str(tmp_path / "a")] * 2 + [str(tmp_path / "b")] * 2


def test_sft_needs_one_sequence_per_row():
    cfg = load_config(None, ["algorithm.loss=sft", "rollout.group_size=4", "trainer.prompts_per_step=4",
                             "trainer.micro_batch_size=4", "model.name_or_path=m", "data.train_files=[t.jsonl]"])
    with pytest.raises(ConfigError, match="algorithm.loss=sft trains on one given trajectory per row, so "
                                          "rollout.group_size=4 must be 1"):
        check_config(cfg)
    cfg.rollout.group_size = 1
    check_config(cfg)  # fine
    cfg.trainer.dynamic_sampling.filter_groups = True
    with pytest.raises(ConfigError, match="has no rewards: set trainer.dynamic_sampling.filter_groups=false"):
        check_config(cfg)
    cfg.trainer.dynamic_sampling.filter_groups, cfg.algorithm.loss = False, "sapo"  # RL still needs groups
    with pytest.raises(ConfigError, match="a group needs at least 2.*only algorithm.loss=sft .* takes 1"):
        check_config(cfg)


def _sft_config(model_dir, data: str, val: str, out, steps: int, *extra):
    return load_config(os.path.join(ROOT, "recipes", "demo.yaml"), [
        f"model.name_or_path={model_dir}", f"data.train_files={data}", f"data.val_files={val}", f"output_dir={out}",
        "algorithm.loss=sft", "algorithm.entropy_coef=0", "rollout.group_size=1", f"trainer.max_steps={steps}",
        "trainer.prompts_per_step=4", "trainer.micro_batch_size=2", "trainer.lr_schedule=constant", "trainer.lr=3e-3",
        "rollout.max_new_tokens=96", "data.max_prompt_tokens=1536", "eval.k=1", "eval.max_new_tokens=4",
        "checkpoint.every_steps=0", "log.plots=false", "log.progress_bar=false", "log.wandb=false",
        "log.samples_every=0", *extra])


def test_sft_run_halves_the_nll_and_writes_final(tmp_path, qwen25_dir):
    """20 steps on 4 trajectories (every step sees all four: its sft/nll is the training set's NLL
    before that step's update); RL then starts from final/."""
    from rlvr.models import load_model, load_processor
    from rlvr.sft import SFTTrainer, trajectory_sample

    rows = [_row(i, answer=str(i)) for i in range(4)] + [_row(9, messages=[])]  # one skipped
    data = _data(tmp_path, rows)
    val = write_jsonl(tmp_path / "val.jsonl", [_row(10, answer="3")])
    cfg = _sft_config(qwen25_dir, data, val, tmp_path / "run", 20, "tools.names=[zoom_in]")
    check_config(cfg)
    trainer = SFTTrainer(cfg)
    assert len(trainer.examples) == 4 and dict(trainer.trajectory_skips.reasons) == {"no_messages": 1}
    # the prompt lists the tools, as the RL run's will (Trainer: with_tools_prompt)
    prompt, _ = trajectory_sample(trainer.examples[0], trainer.processor, trainer.cfg.data, base_dir=str(tmp_path))
    assert '"name": "zoom_in"' in trainer.processor.tokenizer.decode(prompt.input_ids)
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    nll = [m["sft/nll"] for m in lines]
    print("sft/nll by step:", [round(x, 3) for x in nll], "step s:", [round(m["time/step_s"], 2) for m in lines])
    assert len(nll) == 20 and nll[-1] < nll[0] / 2, nll  # measured 5.958 -> 2.080
    assert lines[0]["sft/tokens"] > 0 and lines[0]["sft/tool_calls"] == 1.0
    assert not any(k.startswith("rollout/") for k in lines[0])  # no sampler, no sampler gap
    assert "eval/pass@1" in lines[-1]  # the trainer's evaluator ran at the end
    final = tmp_path / "run" / "final"
    assert (final / "config.json").is_file()
    load_model(str(final), "float32"), load_processor(str(final))  # what an RL run's model.name_or_path loads


def test_a_resumed_sft_run_continues_the_uninterrupted_one(tmp_path, qwen25_dir):
    """4 steps whole, or 2 then resume=auto to 4: the same rows (the skipped one left out of the
    order in both) and the same NLL at every step."""
    from rlvr.sft import SFTTrainer

    data = _data(tmp_path, [_row(9, messages=[])] + [_row(i, answer=str(i)) for i in range(4)])

    def run(out, steps, *extra):
        cfg = _sft_config(qwen25_dir, data, "[]", tmp_path / out, steps, "trainer.prompts_per_step=2",
                          "checkpoint.every_steps=1", "checkpoint.save_final_model=false", *extra)
        SFTTrainer(cfg).train()
        rows = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
        prompts = (tmp_path / out / "prompts.jsonl").read_text().splitlines()
        return [json.loads(m)["sft/nll"] for m in rows], [json.loads(p)["ids"] for p in prompts]

    whole = run("whole", 4)
    run("split", 2)
    split = run("split", 4, "resume=auto")
    assert split[1] == whole[1] and "t9" not in sum(whole[1], [])
    assert split[0] == pytest.approx(whole[0], abs=1e-6)


@pytest.mark.slow
def test_sft_under_zero3_on_two_processes_equals_one_process(tmp_path, qwen25_dir):
    """Rank 0's trajectory calls the tool (an observation image), rank 1's answers at once: ZeRO-3
    does not hang, and each step's NLL and loss equal the one-process run's (measured |diff| < 1e-6)."""
    from tests.launching import run

    rows = [_row(i, answer=str(i)) for i in range(4)]
    for row in rows[1::2]:
        row["messages"] = [{"role": "assistant", "content": f"The digit is {row['answer']}."}]
    data = _data(tmp_path, rows)
    args = ["--config", os.path.join(ROOT, "recipes", "tools", "sft.yaml"), f"model.name_or_path={qwen25_dir}",
            f"data.train_files={data}", "data.val_files=[]", "data.shuffle=false", "trainer.max_steps=2",
            "trainer.prompts_per_step=2", "trainer.micro_batch_size=1", "trainer.lr_schedule=constant",
            "tools.max_total_tokens=400", "rollout.max_new_tokens=96", "log.progress_bar=false", "log.plots=false",
            "checkpoint.save_final_model=false"]
    runs = {}
    for name, config, processes in (("one", None, 1), ("zero3", "zero3", 2)):
        result = run([*args, f"output_dir={tmp_path / name}"], config, processes, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    prompts = [json.loads(line) for line in (tmp_path / "zero3" / "prompts.jsonl").read_text().splitlines()]
    assert prompts[0]["by_rank"] == [[0], [1]]  # rank 0: t0 with its observation image; rank 1: t1 without
    for one, two in zip(runs["one"], runs["zero3"], strict=True):
        for key in ("sft/nll", "loss", "sft/tokens"):
            assert two[key] == pytest.approx(one[key], abs=1e-5), key
