"""The vLLM engine itself: weight sync (full and LoRA), one engine per rank, errors, vLLM imported only when selected.

- After the HF model's weights change, the engine's samples are stale until ``sync_weights``;
  after it, their log-probs are the training forward's of the NEW weights (1e-5, fp32), also when
  the change touched the tied embeddings / output head.
- A peft LoRA policy: the engine gets base + adapter merged (its log-probs are the adapted
  forward's, far from the base model's).
- Two processes (torchrun, gloo): each rank's engine samples its own prompts, with the samples
  a single-process engine gives for the same seeds, and syncs its own weights.
- Errors: no vllm installed, a head size vLLM's CPU kernels do not run; a prompt whose images
  are missing.
- ``make_engine`` with rollout.engine=hf never imports vllm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

if __name__ != "__main__":
    pytest.importorskip("vllm")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rlvr.rollout.vllm_env import patch_broken_torchvision  # noqa: E402

patch_broken_torchvision()  # before transformers' image processing imports torchvision

from rlvr.batch import PromptInputs, collate_sequences  # noqa: E402
from rlvr.config import Config, RolloutConfig  # noqa: E402
from rlvr.logprobs import response_logprobs  # noqa: E402
from rlvr.models import load_model, load_processor, stop_token_ids  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIXELS = (3136, 200_000)
_RNG_AFTER_ENGINE: dict = {}  # filled by the setup fixture


def _config(path: str) -> Config:
    cfg = Config()
    cfg.model.name_or_path, cfg.model.dtype = path, "float32"
    cfg.data.min_pixels, cfg.data.max_pixels, cfg.data.max_prompt_tokens = *PIXELS, 512
    cfg.rollout = RolloutConfig(group_size=2, max_new_tokens=8, temperature=0.7)
    cfg.rollout.vllm.enforce_eager, cfg.rollout.vllm.max_num_seqs = True, 32
    return cfg


def _prompts(processor, texts: list[str]) -> list[PromptInputs]:
    out = []
    for i, text in enumerate(texts):
        images = [Image.new("RGB", (56 + 28 * i, 84), (40 * i % 255, 120, 30))] if i % 2 == 0 else []
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        chat = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
        enc = processor(text=[chat], images=images or None, return_tensors="pt")
        out.append(PromptInputs(enc["input_ids"][0], enc["mm_token_type_ids"][0], enc.get("pixel_values"),
                                enc.get("image_grid_thw"), images or None))
    return out


def _gap(model, prompts, responses, pad: int, temperature: float = 0.7) -> float:
    """Largest gap between the recorded log-probs and ``model``'s training forward."""
    batch = collate_sequences([prompts[r.prompt_index] for r in responses], [r.token_ids for r in responses], pad)
    with torch.no_grad():
        forward, _ = response_logprobs(model, batch, temperature=temperature)  # [B, R]
    recorded = torch.zeros_like(forward)
    for row, r in enumerate(responses):
        recorded[row, :len(r.logprobs)] = r.logprobs
    return float(((forward - recorded).abs() * batch["response_mask"]).max())


def _add_noise(model, seed: int, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from rlvr.devtools.make_tiny_model import make_tiny_model, vllm_text_sizes

    out = str(tmp_path_factory.mktemp("vllm-engine"))
    return make_tiny_model("qwen2_5_vl", out, text=vllm_text_sizes("qwen2_5_vl"))


@pytest.fixture(scope="module")
def setup(model_dir):
    from rlvr.rollout.vllm import VLLMEngine

    processor = load_processor(model_dir, *PIXELS)
    model = load_model(model_dir, dtype="float32").eval()
    stop, pad = stop_token_ids(processor, model), processor.tokenizer.pad_token_id
    torch.manual_seed(1234)
    engine = VLLMEngine(_config(model_dir), stop, pad)
    prompts = _prompts(processor, ["What colour is it?", "no image here", "And the size?"])
    engine.generate(prompts, seeds=[7, 8, 9])
    drawn = torch.rand(4)  # vLLM reseeds at start and draws at every sampling step, in this process
    _RNG_AFTER_ENGINE.update(drawn=drawn, expected=torch.rand(4, generator=torch.Generator().manual_seed(1234)))
    yield processor, model, engine, prompts, pad
    engine.close()


def test_weight_sync_makes_samples_follow_the_new_weights(setup):
    processor, model, engine, prompts, pad = setup
    before = engine.generate(prompts, seeds=[1, 2, 3])
    assert _gap(model, prompts, before, pad) < 1e-5
    _add_noise(model, seed=0)  # every tensor, the tied embedding / output head included
    stale = engine.generate(prompts, seeds=[1, 2, 3])
    assert _gap(model, prompts, stale, pad) > 0.1  # the engine still samples the old weights
    report = engine.sync_weights(model)
    state = model.state_dict()  # lm_head.weight is the tied embedding: sent once, as embed_tokens
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert report.tensors == len(state) - 1
    assert report.bytes == sum(t.numel() * t.element_size() for k, t in state.items() if k != "lm_head.weight")
    assert report.seconds > 0 and report.metrics()["rollout/sync_mib"] == report.bytes / 2**20
    after = engine.generate(prompts, seeds=[1, 2, 3])
    assert _gap(model, prompts, after, pad) < 1e-5
    # the prefix and encoder caches held the old weights' prompts and images: same seeds, new samples
    assert [r.token_ids.tolist() for r in after] != [r.token_ids.tolist() for r in before]


def test_lora_policy_syncs_merged_weights(setup):
    from peft import LoraConfig, get_peft_model

    from rlvr.lora import inner_model

    processor, model, engine, prompts, pad = setup
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                              target_modules=r".*language_model.*(q_proj|v_proj|down_proj)"))
    try:
        report = engine.sync_weights(policy)
        adapters = [k for k in model.state_dict() if "lora_" in k]
        assert len(adapters) > 0 and report.tensors == len(model.state_dict()) - len(adapters) - 1  # merged, not sent
        responses = engine.generate(prompts, seeds=[4, 5, 6])
        assert _gap(inner_model(policy), prompts, responses, pad) < 1e-5  # base + adapter
        with policy.disable_adapter():
            assert _gap(inner_model(policy), prompts, responses, pad) > 0.1  # not the base alone
    finally:
        policy.unload()  # the module's model without adapters again, for the tests after this one
        engine.sync_weights(model)


def test_engine_leaves_the_global_random_state_alone(setup):
    # the global draws after seeding, starting an engine and sampling: as if neither had happened
    assert torch.equal(_RNG_AFTER_ENGINE["drawn"], _RNG_AFTER_ENGINE["expected"])


def test_prompt_with_image_placeholders_needs_its_images(setup):
    processor, model, engine, prompts, pad = setup
    bare = PromptInputs(prompts[0].input_ids, prompts[0].mm_token_type_ids, prompts[0].pixel_values,
                        prompts[0].image_grid_thw, None)
    with pytest.raises(ValueError, match="needs PromptInputs.images"):
        engine.generate([bare], seeds=[1])


def test_vision_token_processor_serves_both_model_runners(model_dir):
    """CPU runs vLLM's V1 model runner; GPUs default to V2, whose processors have another interface."""
    from types import SimpleNamespace

    from transformers import AutoConfig
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1Processor
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2Processor

    from rlvr.rollout.vllm import never_sample_processor

    cls = never_sample_processor()
    assert issubclass(cls, V1Processor) and issubclass(cls, V2Processor)
    hf_config = AutoConfig.from_pretrained(model_dir)
    vllm_config = SimpleNamespace(model_config=SimpleNamespace(hf_config=hf_config))
    vision = [hf_config.image_token_id, hf_config.video_token_id, hf_config.vision_start_token_id,
              hf_config.vision_end_token_id]
    v1 = cls(vllm_config, torch.device("cpu"), False)
    v2 = cls(vllm_config, SimpleNamespace(device=torch.device("cpu"), max_num_reqs=4, vocab_size=400))
    assert not v1.is_argmax_invariant() and v2.add_request(0, None)
    for logits in (v1.apply(torch.zeros(3, 400)), v2.apply(torch.zeros(3, 400), None)):
        assert bool(logits[:, vision].isneginf().all()) and int(logits.isneginf().sum()) == 3 * len(vision)


def test_collapse_placeholders():
    from rlvr.rollout.vllm import collapse_placeholders

    ids = torch.tensor([1, 7, 9, 9, 9, 8, 2, 7, 9, 9, 8, 9])  # 9 = <|image_pad|>
    assert collapse_placeholders(ids, 9) == [1, 7, 9, 8, 2, 7, 9, 8, 9]
    assert collapse_placeholders(ids, None) == ids.tolist()


def test_sampling_params_follow_rollout_settings():
    import vllm

    from rlvr.rollout.vllm import _sampling_params

    settings = RolloutConfig(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=33, min_new_tokens=3)
    p = _sampling_params(vllm, settings, [5, 6], seed=123, greedy=False)
    assert (p.n, p.temperature, p.top_p, p.top_k, p.seed) == (1, 0.7, 0.9, 20, 123)
    assert (p.max_tokens, p.min_tokens, sorted(p.stop_token_ids)) == (33, 3, [5, 6])
    # the model's own eos stops a response only when it is one of ours; the sampled token's log-prob, no text
    assert p.ignore_eos and p.logprobs == 0 and not p.detokenize
    g = _sampling_params(vllm, settings, [5], seed=123, greedy=True)
    assert (g.temperature, g.top_p, g.top_k, g.seed) == (0.0, 1.0, 0, None)


def test_engine_arguments(model_dir):
    from types import SimpleNamespace

    from rlvr.rollout.vllm import engine_kwargs

    cfg = _config(model_dir)
    one = engine_kwargs(cfg)
    assert one["model"] == model_dir and one["dtype"] == "float32"  # auto on CPU too
    assert one["max_model_len"] == 512 + 8  # data.max_prompt_tokens + rollout.max_new_tokens
    assert one["logprobs_mode"] == "processed_logprobs" and one["generation_config"] == "vllm"
    assert one["mm_processor_kwargs"] == {"size": {"shortest_edge": 3136, "longest_edge": 200_000}}
    assert one["enable_prefix_caching"] and one["limit_mm_per_prompt"]["image"] >= 8
    assert one["enable_chunked_prefill"] is False  # CPU: whole prefills (seeded CPU generators cannot rewind)
    assert "distributed_executor_backend" not in one and "gpu_memory_utilization" not in one  # CPU
    # two processes: each rank its own TP=1 engine on its own device (LOCAL_RANK), inside the run's group
    two = engine_kwargs(cfg, SimpleNamespace(num_processes=2, process_index=1))
    assert two["distributed_executor_backend"] == "external_launcher" and two["seed"] == one["seed"] + 1
    cfg.rollout.vllm.max_model_len = 300
    assert engine_kwargs(cfg)["max_model_len"] == 300


def test_prepare_sets_vllm_environment_and_keeps_the_users(monkeypatch):
    from rlvr.rollout import vllm_env

    for key in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    monkeypatch.setattr(vllm_env, "on_cpu", lambda: True)
    assert vllm_env.prepare(cpu_kv_cache_gib=3.4) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                                                       "VLLM_CPU_KVCACHE_SPACE": "3"}
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"


def test_missing_vllm_names_the_install_command(monkeypatch):
    from rlvr.rollout.vllm import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'rlvr\[vllm\]'"):
        import_vllm()


def test_unsupported_head_size_says_which_work(tmp_path):
    from rlvr.devtools.make_tiny_model import make_tiny_model
    from rlvr.rollout.vllm import VLLMEngine

    path = make_tiny_model("qwen2_5_vl", str(tmp_path / "h16"), text={"hidden_size": 64, "intermediate_size": 128})
    with pytest.raises(ValueError, match="head size 16 .* 32, 64, 80"):
        VLLMEngine(_config(path), [1], 0)  # before vLLM starts (it would start, then fail at the first generate)


def test_qwen3_5_on_cpu_needs_bf16(tmp_path):
    from rlvr.devtools.make_tiny_model import make_tiny_model, vllm_text_sizes
    from rlvr.rollout.vllm import check_cpu_model

    path = make_tiny_model("qwen3_5", str(tmp_path / "q35"), text=vllm_text_sizes("qwen3_5"))
    with pytest.raises(ValueError, match="model.dtype=bfloat16"):
        check_cpu_model(path, "float32")  # vLLM would start, then fail its first generate
    check_cpu_model(path, "bfloat16")
    # on CPU prefills are whole (seeded CPU generators cannot rewind), and vLLM caches a
    # linear-attention model's prefixes only with chunked prefill
    from rlvr.rollout.vllm import engine_kwargs

    kwargs = engine_kwargs(_config(path))
    assert kwargs["enable_chunked_prefill"] is False and kwargs["enable_prefix_caching"] is False


def test_vllm_is_imported_only_when_selected():
    code = ("import sys\n"
            "from rlvr.config import Config\n"
            "from rlvr.rollout import make_engine, HFEngine\n"
            "cfg = Config()\n"
            "engine = make_engine(cfg, [1], 0, policy=object())\n"
            "assert isinstance(engine, HFEngine), engine\n"
            "assert 'vllm' not in sys.modules and 'rlvr.rollout.vllm' not in sys.modules, 'vllm imported'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ---------------------------------------------------------------------------------------- two processes


def _rank_main(model_dir: str, out_dir: str) -> None:
    """One rank of the 2-process test: its own engine, its own prompts, a sync of its own weights."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from rlvr.rollout.vllm import VLLMEngine

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    accelerator = SimpleNamespace(num_processes=dist.get_world_size(), process_index=rank)
    processor = load_processor(model_dir, *PIXELS)
    model = load_model(model_dir, dtype="float32").eval()
    pad = processor.tokenizer.pad_token_id
    engine = VLLMEngine(_config(model_dir), stop_token_ids(processor, model), pad, accelerator=accelerator)
    prompts = _prompts(processor, [f"rank {rank} asks about the picture", "a question without an image"])
    first = engine.generate(prompts, seeds=[100 + rank, 200 + rank])
    _add_noise(model, seed=10 + rank)  # each rank its own update
    engine.sync_weights(model)
    second = engine.generate(prompts, seeds=[100 + rank, 200 + rank])
    result = {"rank": rank, "gap_after_sync": _gap(model, prompts, second, pad),
              "tokens": [r.token_ids.tolist() for r in first], "prompts": [p.input_ids.tolist() for p in prompts]}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    os._exit(0)  # vLLM's and gloo's teardown at interpreter exit is not needed


def test_two_processes_each_run_their_own_engine(setup, model_dir, tmp_path):
    processor, model, engine, prompts, pad = setup
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           os.path.abspath(__file__), model_dir, str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=420)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    fresh = load_model(model_dir, dtype="float32").eval()
    engine.sync_weights(fresh)  # the module's engine back to the weights on disk, as the ranks started
    for rank, result in enumerate(results):
        assert result["gap_after_sync"] < 1e-5, result
        rank_prompts = _prompts(processor, [f"rank {rank} asks about the picture", "a question without an image"])
        assert [p.input_ids.tolist() for p in rank_prompts] == result["prompts"]
        # a single-process engine, same weights and seeds: the same samples
        alone = engine.generate(rank_prompts, seeds=[100 + rank, 200 + rank])
        assert [r.token_ids.tolist() for r in alone] == result["tokens"], rank
    assert results[0]["tokens"] != results[1]["tokens"]
    engine.sync_weights(model)


if __name__ == "__main__":
    _rank_main(sys.argv[1], sys.argv[2])
