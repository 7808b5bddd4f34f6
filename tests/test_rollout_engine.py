"""The engine interface with the HF engine, and how the trainer drives an engine.

The contract tests that run the same prompts through both engines (and vLLM's own) are in
``tests/vllm/``, which runs in the vLLM environment (``make test-vllm``).
"""

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from rlvr.batch import PromptInputs, collate_sequences, continue_prompt, encode_prompt
from rlvr.config import Config, ConfigError, DataConfig, RolloutConfig, load_config
from rlvr.data import Example, prompt_text
from rlvr.logprobs import response_logprobs
from rlvr.models import load_model, load_processor, stop_token_ids
from rlvr.rollout import HFEngine, generate, make_engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(qwen25_dir):
    processor = load_processor(qwen25_dir)
    model = load_model(qwen25_dir, dtype="float32").eval()
    image = Image.new("RGB", (56, 84), (200, 40, 90))
    example = Example(id="a", question="<image>What colour?", answer="3", gold=None, images=[image])
    prompt = encode_prompt(example, processor, DataConfig())
    text_only = encode_prompt(Example(id="b", question="Count to three.", answer="3", gold=None, images=[]), processor,
                              DataConfig())
    return processor, model, [prompt, text_only], example


def _engine(processor, model, **settings):
    cfg = Config()
    cfg.rollout = RolloutConfig(**{"group_size": 3, "max_new_tokens": 6, "micro_batch_size": 6, **settings})
    return make_engine(cfg, stop_token_ids(processor, model), processor.tokenizer.pad_token_id, policy=model)


def test_the_hf_engine_is_generate_behind_the_interface(setup):
    processor, model, prompts, _ = setup
    engine = _engine(processor, model, temperature=0.7)
    assert isinstance(engine, HFEngine) and engine.name == "hf"
    out = engine.generate(prompts, [11, 12])
    direct = generate(model, prompts, engine.settings, engine.stop_ids, engine.pad_id, seeds=[11, 12])
    assert [r.prompt_index for r in out] == [0, 0, 0, 1, 1, 1]
    assert [r.token_ids.tolist() for r in out] == [r.token_ids.tolist() for r in direct]
    assert all(torch.equal(a.logprobs, b.logprobs) for a, b in zip(out, direct))
    # other settings for one call (the evaluator's k and temperature), the engine's own untouched
    two = engine.generate(prompts, [11, 12], settings=RolloutConfig(group_size=2, max_new_tokens=4, temperature=0.7))
    assert len(two) == 4 and max(len(r.token_ids) for r in two) <= 4 and engine.settings.group_size == 3
    assert {r.finish_reason for r in out} <= {"stop", "length"}
    assert all(r.finish_reason == ("stop" if r.finished else "length") for r in out)
    assert engine.sync_weights(model) is None  # it samples from the live model


def test_the_hf_engine_generates_in_eval_mode_and_gives_the_mode_back(setup):
    processor, model, prompts, _ = setup
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        model.train()
        _engine(processor, model).generate(prompts[:1], [1])
        assert seen and not any(seen)  # dropout off while sampling
        assert model.training  # restored
    finally:
        handle.remove()
        model.eval()


def test_a_continued_conversation_samples_from_the_whole_sequence(setup):
    """Turn 2 continues from turn 1's own token ids plus appended tokens with a new image; its
    recorded log-probs equal the training forward over the whole conversation as one prompt."""
    processor, model, prompts, example = setup
    engine = _engine(processor, model, group_size=1, max_new_tokens=5)  # no min_new_tokens: it renormalises
    first = engine.generate(prompts[:1], [7])[0]
    crop = Image.new("RGB", (112, 56), (10, 220, 30))
    tool_turn = "<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>the crop<|im_end|>\n" \
                "<|im_start|>assistant\n"
    enc = processor(text=[tool_turn], images=[crop], return_tensors="pt")
    appended = PromptInputs(enc["input_ids"][0], enc["mm_token_type_ids"][0], enc["pixel_values"],
                            enc["image_grid_thw"], images=[crop])
    whole = continue_prompt(prompts[0], first.token_ids, appended)
    n0, r = len(prompts[0].input_ids), len(first.token_ids)
    assert torch.equal(whole.input_ids[n0:n0 + r], first.token_ids)  # the sampled ids as they are
    assert whole.image_grid_thw.shape[0] == 2 and whole.images[1] is crop
    # the images in the order of their placeholders, as one processor call over both turns gives them
    joint = processor(text=[prompt_text(example, processor, DataConfig()) + tool_turn],
                      images=[example.images[0], crop], return_tensors="pt")
    assert torch.equal(whole.pixel_values, joint["pixel_values"])
    assert torch.equal(whole.image_grid_thw, joint["image_grid_thw"])
    assert int(whole.mm_token_type_ids.sum()) == int(prompts[0].mm_token_type_ids.sum() + appended.mm_token_type_ids.sum())
    second = engine.generate([whole], [8])[0]
    batch = collate_sequences([whole], [second.token_ids], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        expected, _ = response_logprobs(model, batch, temperature=engine.settings.temperature)
    assert torch.allclose(expected[0, :len(second.token_ids)], second.logprobs, atol=1e-5)


def test_vllm_is_a_message_where_it_is_not_installed_and_never_imported_for_hf(setup):
    import importlib.util

    processor, model, _, _ = setup
    cfg = load_config(None, ["rollout.engine=vllm"])
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match=r"rollout.engine=vllm needs vLLM, which is not installed here: "
                                              r"pip install 'rlvr\[vllm\]'"):
            make_engine(cfg, [1], 0)
    script = ("import sys; from rlvr.config import Config; from rlvr.rollout import make_engine; "
              "make_engine(Config(), [1], 0, policy=object()); import rlvr.trainer, rlvr.evaluate; "
              "print(sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


class _Recording(HFEngine):
    """The HF engine, writing down what the trainer asks of it and which weights it is sent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def generate(self, prompts, seeds=None, *, settings=None, greedy=False):
        self.calls.append("generate-greedy" if greedy else "generate")
        return super().generate(prompts, seeds, settings=settings, greedy=greedy)

    def sync_weights(self, model):
        digest = hashlib.sha1(b"".join(p.detach().float().numpy().tobytes() for p in model.parameters())).hexdigest()
        self.calls.append(f"sync:{digest[:8]}")
        return None

    def wake(self):
        self.calls.append("wake")

    def sleep(self):
        self.calls.append("sleep")

    def close(self):
        self.calls.append("close")


def test_the_trainer_sends_the_weights_after_every_update_and_before_evaluating(qwen25_dir, tmp_path, monkeypatch):
    from rlvr.devtools.make_demo_data import main as make_data
    import rlvr.trainer

    data = tmp_path / "data"
    make_data(["--out", str(data), "--train", "8", "--val", "2"])
    engines = []

    def recording(cfg, stop_ids, pad_id, *, policy=None, accelerator=None):
        engines.append(_Recording(cfg.rollout, stop_ids, pad_id, policy))
        return engines[-1]

    monkeypatch.setattr(rlvr.trainer, "make_engine", recording)
    cfg = load_config(os.path.join(ROOT, "recipes", "demo.yaml"), [
        f"model.name_or_path={qwen25_dir}", f"data.train_files={data}/train.jsonl", f"data.val_files={data}/val.jsonl",
        f"output_dir={tmp_path / 'run'}", "trainer.max_steps=2", "trainer.prompts_per_step=2", "rollout.group_size=2",
        "trainer.micro_batch_size=4", "rollout.micro_batch_size=4", "rollout.max_new_tokens=4", "eval.every_steps=0",
        "eval.k=1", "eval.greedy=false", "trainer.lr=1e-2", "checkpoint.save_final_model=false", "log.plots=false",
        "log.progress_bar=false", "log.wandb=false"])
    trainer = rlvr.trainer.Trainer(cfg)
    trainer.train()
    calls = engines[0].calls
    syncs = [c for c in calls if c.startswith("sync:")]
    # before the first rollout (a resumed run's weights are not the folder's), after each update before
    # the next rollout and before the evaluation at the last step; every sync sees new weights
    assert [c if not c.startswith("sync:") else "sync" for c in calls] == [
        "sync", "wake", "generate", "sleep", "sync", "wake", "generate", "sleep",
        "sync", "wake", "generate", "sleep", "close"]
    assert len(set(syncs)) == 3
