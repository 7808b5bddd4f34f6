"""One RL step at the real Qwen2.5-VL-3B and -7B sizes on one GPU: rollout tokens/s, step time, memory, MFU.

    python benchmarks/gpu_step.py 2>&1 | tee gpu_step.txt       # one H200, about 8 minutes
    .venv-vllm/bin/python benchmarks/gpu_step.py --quick      # CPU smoke test, tiny sizes

``python``: an environment with CUDA torch, vLLM and rlvr (``pip install -e '.[vllm]'`` on
the GPU machine; ``.venv-vllm`` here is vLLM's CPU build, for ``--quick``; without vLLM
only the HF engine runs). Nothing is downloaded: each model is
built here with random weights from the real model's config, written inline below
(``SIZES``: hidden sizes, layers, heads, intermediate sizes, vocabulary, tied embeddings and
the vision tower of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct), and saved with a small
byte-level tokenizer and the Qwen2-VL processor (``rlvr.devtools.make_tiny_model``'s). The
tokenizer knows only a few hundred of the vocabulary's ids; the model samples from all of
them and the reward decodes the rest to nothing, which changes no compute.

The workload, per model: 8 prompts x G = 8 samples (64 sequences), one 448x448 image per
prompt (256 image tokens), responses of exactly ``--new-tokens`` (1,024) tokens (the stop
tokens are suppressed until then), temperature 1. rlvr's Trainer, built from the library's
defaults plus the overrides in ``overrides()``: bf16 weights and AdamW states (``model.dtype=
bfloat16``; the "auto" default keeps fp32 master weights, 16 bytes a parameter, which does
not fit 7B next to vLLM on one GPU), gradient checkpointing, micro-batches of 8 sequences,
one optimizer step per rollout, SAPO, no KL; vLLM colocated with the library's
``rollout.vllm`` defaults (30% of the GPU, sleep level 1 during the update, CUDA graphs),
``max_num_seqs`` = the step's 64 sequences.

Three steps per model, in order: a vLLM warm-up step (engine compile and graph capture, the
first weight sync, AdamW's state allocation: printed, not compared), a timed vLLM step, then
a timed step with the HF engine (transformers' generate with group-shared prefill) on the
same trainer, the vLLM engine asleep. Each step prints its phases (rollout, sync, update),
rollout tokens/s, the peak memory (the PyTorch allocator's, and the device's used memory
sampled every 50 ms, which includes vLLM's own pool), and the actor MFU of the update:
model FLOPs / update seconds / the GPU's dense bf16 peak (989 TFLOP/s for H100/H200 SXM;
``--peak-tflops`` for others). Model FLOPs are 6 x parameters per trained token (forward and
backward; the output head for response tokens only; gradient checkpointing's recompute not
counted) plus causal attention 6 x hidden x L^2 per layer and sequence, and the vision tower
6 x its parameters per patch. Two counts: every sequence's prompt in full (as verl and TRL
count), and each prompt once (what rlvr's shared-prompt forward needs at least).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The real models' config.json (text and vision), as published with Qwen2.5-VL-3B/7B-Instruct.
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, hidden_act="silu", patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
              tokens_per_second=2)
SIZES = {
    "3b": dict(text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                         num_key_value_heads=2, vocab_size=151936), tie=True, vision=VISION),
    "7b": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064), tie=False, vision=VISION),
    # --quick: CPU-sized; the vocabulary still exceeds the tokenizer's, as in the real sizes
    "tiny": dict(text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1024), tie=True,
                 vision=dict(VISION, depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                             fullatt_block_indexes=[1])),
}
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # dense bf16, SXM where it varies
QUESTION = "How many rectangles are in the image? Put your final answer, a single number, in \\boxed{}."


def write_model(size: str, out: str, device: str) -> None:
    """A random-weight Qwen2.5-VL of ``SIZES[size]`` with tokenizer and processor, in ``out``."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    from rlvr.devtools.make_tiny_model import build_processor, build_tokenizer
    from rlvr.models import save_processor

    spec = SIZES[size]
    tokenizer = build_tokenizer(family="qwen2_5_vl")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                                           "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    text = dict(spec["text"], hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
                tie_word_embeddings=spec["tie"],  # vLLM reads the text config's, transformers the top level's
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    if size == "tiny":  # head size 32: 16 rotary pairs
        text["rope_parameters"]["mrope_section"] = [4, 6, 6]
    vision = dict(spec["vision"], out_hidden_size=spec["text"]["hidden_size"])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=spec["tie"],
                              image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                              vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    with torch.device(device):  # random init on the GPU: seconds instead of minutes for 8B parameters
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16 if device == "cuda"
                                                        else torch.float32)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]], ids["<|endoftext|>"]
    model.save_pretrained(out)
    save_processor(build_processor("qwen2_5_vl", tokenizer), out)
    del model


def write_data(out: Path, prompts: int, image_size: int) -> Path:
    """``prompts`` rows, each a PNG of 1-9 coloured rectangles and the question how many."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(0)
    (out / "images").mkdir(parents=True)
    with open(out / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(prompts):
            count = rng.randint(1, 9)
            image = Image.new("RGB", (image_size, image_size), (250, 250, 250))
            draw = ImageDraw.Draw(image)
            for _ in range(count):
                x, y = rng.randrange(image_size - 40), rng.randrange(image_size - 40)
                draw.rectangle([x, y, x + rng.randint(10, 40), y + rng.randint(10, 40)],
                               fill=tuple(rng.randrange(256) for _ in range(3)))
            image.save(out / "images" / f"{i}.png")
            f.write(json.dumps({"id": f"gpu-{i}", "question": QUESTION, "answer": str(count),
                                "images": [str(out / "images" / f"{i}.png")]}) + "\n")
    return out / "train.jsonl"


def overrides(args, model: str, data: Path, out: str, gpu: bool, engine: str) -> list[str]:
    batch = args.prompts * args.group_size
    return [
        f"output_dir={out}", f"model.name_or_path={model}",
        f"model.dtype={'bfloat16' if gpu else 'float32'}", f"model.gradient_checkpointing={str(gpu).lower()}",
        f"data.train_files=[{data}]", "data.val_files=[]",
        f"data.max_pixels={args.image_size ** 2}", f"data.max_prompt_tokens={(args.image_size // 28) ** 2 + 256}",
        f"rollout.engine={engine}", f"rollout.group_size={args.group_size}",
        f"rollout.max_new_tokens={args.new_tokens}", f"rollout.min_new_tokens={args.new_tokens}",
        f"rollout.micro_batch_size={batch}", "rollout.temperature=1.0",
        # every sequence of the step decoded together; fewer CUDA graphs to capture than the default 256
        f"rollout.vllm.max_num_seqs={batch}",
        f"trainer.prompts_per_step={args.prompts}", "trainer.num_minibatches=1",
        f"trainer.micro_batch_size={args.micro_batch}", "trainer.lr=1e-6", "trainer.lr_schedule=constant",
        "trainer.warmup_steps=0", "trainer.max_steps=100", "algorithm.loss=sapo", "algorithm.kl_coef=0.0",
        "log.wandb=false", "log.progress_bar=false", "log.samples_every=0", "log.plots=false",
    ]


class MemoryWatch:
    """Peak memory during a step: the PyTorch allocator's peak and, on a GPU, the device's used
    memory (``cudaMemGetInfo``, which also sees vLLM's pool) polled every 50 ms; on CPU the
    process's peak resident set (since it started)."""

    def __init__(self, gpu: bool):
        self.gpu, self.device_peak, self._stop = gpu, 0, threading.Event()

    def __enter__(self):
        import torch

        if self.gpu:
            torch.cuda.reset_peak_memory_stats()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.device_peak = max(self.device_peak, total - free)
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        if self.gpu:
            self._thread.join()

    def describe(self) -> str:
        import torch

        if self.gpu:
            return (f"peak memory: device {self.device_peak / 2**30:.1f} GiB used (all allocations), torch "
                    f"allocator {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated / "
                    f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB reserved")
        import resource

        return f"peak memory: process resident set {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def update_flops(policy, prompt_tokens: list[int], response_tokens: list[int], patches: list[int],
                 group_size: int) -> tuple[float, float]:
    """Model FLOPs of one update (forward + backward): (every sequence's prompt in full, each prompt once).

    ``prompt_tokens``/``patches``: per prompt; ``response_tokens``: per sequence, prompt-major.
    """
    cfg = policy.config.get_text_config()
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    visual = sum(p.numel() for n, p in policy.named_parameters() if ".visual." in f".{n}")
    embed = policy.get_input_embeddings().weight.numel()
    # parameters() counts a tied head once, as the embedding; an untied one is counted apart
    # below: it runs on response tokens only (the training forward needs no prompt logits)
    untied_head = 0 if policy.config.tie_word_embeddings else h * vocab
    body = sum(p.numel() for p in policy.parameters()) - visual - embed - untied_head  # decoder layers, norms
    head = 6 * h * vocab
    vision = sum(6 * visual * n for n in patches)
    full = once = vision
    for i, p in enumerate(prompt_tokens):
        responses = response_tokens[i * group_size:(i + 1) * group_size]
        for j, r in enumerate(responses):
            # linear layers on every trained token, the head on response tokens, causal attention
            # causal attention over L tokens: L^2 / 2 query-key pairs, 4h FLOPs each forward, x3 with backward
            full += 6 * body * (p + r) + head * r + 6 * h * layers * (p + r) ** 2
            if j == 0:  # the prompt, once
                once += 6 * body * p + 6 * h * layers * p ** 2
            # the response: its own tokens and their attention to the prompt (p r pairs) and to each other
            once += 6 * body * r + head * r + 6 * h * layers * (2 * p * r + r * r)
    return full, once


def run_step(trainer, step: int, label: str, args, gpu: bool, peak: float | None) -> None:
    import torch

    with MemoryWatch(gpu) as memory:
        metrics, _, _ = trainer.step(step)
        if gpu:
            torch.cuda.synchronize()
    b = trainer._bench_batch
    tokens = sum(b["responses"])
    full, once = update_flops(trainer.accelerator.unwrap_model(trainer.model).policy, b["prompts"], b["responses"],
                              b["patches"], args.group_size)
    mfu = "n/a (unknown GPU peak; --peak-tflops)" if peak is None else (
        f"{100 * full / metrics['time/update_s'] / (peak * 1e12):.1f}% counting every sequence's prompt, "
        f"{100 * once / metrics['time/update_s'] / (peak * 1e12):.1f}% counting each prompt once")
    print(f"  {label}: step {metrics['time/step_s']:.2f} s = rollout {metrics['time/rollout_s']:.2f} + sync "
          f"{metrics.get('time/sync_s', 0.0):.2f} + reward {metrics['time/reward_s']:.2f} + update "
          f"{metrics['time/update_s']:.2f}; rollout {tokens / metrics['time/rollout_s']:,.0f} tokens/s "
          f"({len(b['responses'])} x {tokens // len(b['responses'])} tokens)", flush=True)
    print(f"    {memory.describe()}; update {full / 1e12:.3g} / {once / 1e12:.3g} TFLOP; actor MFU {mfu}", flush=True)


def record_batches(trainer) -> None:
    """Keep what the update saw (prompt tokens, image patches, response lengths) for the FLOP count."""
    run = trainer.update.run

    def recorded(prompts, responses, advantages, step):
        firsts = prompts[::trainer.cfg.rollout.group_size]  # prompt-major: one per group
        trainer._bench_batch = {
            "prompts": [len(p.input_ids) for p in firsts],
            "patches": [int(p.image_grid_thw.prod(-1).sum()) if p.image_grid_thw is not None else 0 for p in firsts],
            "responses": [len(r.token_ids) for r in responses],
        }
        return run(prompts, responses, advantages, step)

    trainer.update.run = recorded


def bench_model(size: str, args, gpu: bool, vllm: bool, peak: float | None) -> None:
    import torch

    from rlvr.config import check_config, load_config
    from rlvr.rollout import HFEngine
    from rlvr.trainer import Trainer

    spec = SIZES[size]
    print(f"\n== Qwen2.5-VL-{size.upper()} size: text hidden {spec['text']['hidden_size']} x "
          f"{spec['text']['num_hidden_layers']} layers, vocab {spec['text']['vocab_size']}; vision depth "
          f"{spec['vision']['depth']}, random weights", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"rlvr-gpu-{size}-", dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        write_model(size, str(tmp / "model"), "cuda" if gpu else "cpu")
        data = write_data(tmp / "data", args.prompts, args.image_size)
        cfg = load_config(None, overrides(args, str(tmp / "model"), data, str(tmp / "run"), gpu,
                                          "vllm" if vllm else "hf"))
        check_config(cfg)
        t1 = time.perf_counter()
        trainer = Trainer(cfg)
        record_batches(trainer)
        policy = trainer.accelerator.unwrap_model(trainer.model).policy
        print(f"  model written in {t1 - t0:.0f} s; trainer{' and vLLM engine' if vllm else ''} ready in "
              f"{time.perf_counter() - t1:.0f} s; {sum(p.numel() for p in policy.parameters()) / 1e9:.3g}B "
              f"parameters, {next(policy.parameters()).dtype}", flush=True)
        first = "vLLM" if vllm else "HF"
        run_step(trainer, 0, f"{first} warm-up step (not compared)", args, gpu, peak)
        run_step(trainer, 1, f"{first} step", args, gpu, peak)
        if vllm:  # the same trainer, now sampling with transformers' generate; vLLM stays asleep
            vllm_engine = trainer.engine
            trainer.engine = HFEngine(cfg.rollout, trainer.stop_ids, trainer.pad_id, trainer._generation_policy)
            run_step(trainer, 2, "HF step", args, gpu, peak)
            trainer.engine = vllm_engine
        trainer.engine.close()
        del trainer, policy
        if gpu:
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: a tiny model, 2 prompts x 2, 8 tokens")
    parser.add_argument("--models", default="3b,7b", help="comma-separated from 3b, 7b (default both)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=448, help="square images, pixels (multiple of 28)")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, TFLOP/s")
    parser.add_argument("--tmp", default=None, help="folder for the models (3B: 7.5 GB, 7B: 16.6 GB)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.prompts, args.group_size, args.new_tokens, args.image_size, args.micro_batch = \
            "tiny", 2, 2, 8, 56, 2
    models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in models if m not in SIZES or (m == "tiny") != args.quick]
    if unknown:
        parser.error(f"--models {args.models}: unknown {unknown}; choose from 3b, 7b (--quick uses a tiny model)")
    if args.image_size % 28:
        parser.error(f"--image-size {args.image_size} must be a multiple of 28 (14-px patches merged 2x2)")
    if len(models) > 1:
        # One process per model: the GPU starts empty and vLLM's process-wide state (its
        # distributed group, compile caches) starts fresh for each.
        argv = list(sys.argv[1:] if argv is None else argv)
        for size in models:
            code = subprocess.run([sys.executable, __file__, *argv, "--models", size], check=False).returncode
            if code:
                print(f"\nQwen2.5-VL-{size.upper()}: the run failed (exit {code}); see above", flush=True)
        return

    import importlib.util

    import torch

    gpu = torch.cuda.is_available() and not args.quick
    if not gpu and not args.quick:
        raise SystemExit("no GPU here: this benchmark is for a GPU machine; --quick smoke-tests it on CPU")
    vllm = importlib.util.find_spec("vllm") is not None
    if vllm:
        from rlvr.rollout.vllm_env import prepare

        prepare()
    name = torch.cuda.get_device_name() if gpu else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None) if gpu else None
    print(f"device: {name}; torch {torch.__version__}; vLLM "
          f"{__import__('vllm').__version__ if vllm else 'not installed (HF engine only)'}; bf16 peak "
          f"{peak or 'unknown'} TFLOP/s")
    print(f"workload: {args.prompts} prompts x G={args.group_size}, {args.image_size}x{args.image_size} image each, "
          f"{args.new_tokens} new tokens per response (stop tokens suppressed), trainer micro-batch {args.micro_batch}")
    for size in models:
        bench_model(size, args, gpu, vllm, peak)


if __name__ == "__main__":
    main()
