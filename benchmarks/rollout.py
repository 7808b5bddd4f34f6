"""Rollout throughput: with and without group-shared prefill (G = 8 and 16), and the HF engine against vLLM.

    .venv/bin/python benchmarks/rollout.py [--runs 5] [--prompts 2] [--new-tokens 64] [--image 448]
    .venv-vllm/bin/python benchmarks/rollout.py --engines --threads 1 [--runs 5] [--groups 8]

The workload of ``benchmarks/step_vs_trl.py``: a random-weight Qwen2.5-VL (text hidden 256,
4 layers, vision depth 4), one 448x448 image per prompt (256 image tokens after merging,
1,024 vision patches), ``--prompts`` prompts x G samples in one generate call, exactly
``--new-tokens`` new tokens per sample (stop tokens suppressed until then), seeded sampling
at temperature 1. The plain path feeds every sample's image through the vision tower and
its prompt through the prefill; the shared path does both once per prompt and expands the
KV cache. Reported: median seconds per rollout over ``--runs`` runs (the two paths
alternate, after one warm-up each) and generated tokens per second; their ratio in one
column. Both paths sample the same tokens (checked on every run).

``--engines``: rlvr's two rollout engines on the same prompts, seeds and settings, in one
process (the vLLM environment, ``.venv-vllm``): ``hf`` (transformers' generate with
group-shared prefill, the path above) and ``vllm`` (a vLLM engine in this process, fp32,
prefix caching; ``rlvr.rollout.vllm``), by default on a medium random Qwen2.5-VL (text
hidden 1024, 8 layers, 4 heads of 256; vision depth 4), each run's prompts x G samples in
one call of each engine, exactly ``--new-tokens`` tokens per sample. The engines sample
different tokens for the same seed (each reproduces its own), so what is checked on every
run is the shape of the work: every sample has ``--new-tokens`` tokens with finite log-probs.
vLLM's engine start (and its compile, on the warm-up run) is not timed. ``OMP_NUM_THREADS``
is set to ``--threads`` before torch loads, so vLLM's kernels and torch's get the same count;
with 2 threads on a shared 2-core machine vLLM's times swung 10x (issue 14): use ``--threads 1``
there.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(args, root: str):
    import torch
    from PIL import Image

    from rlvr.models import load_model, load_processor, stop_token_ids
    from rlvr.batch import PromptInputs
    from rlvr.devtools.make_tiny_model import make_tiny_model

    path = make_tiny_model("qwen2_5_vl", os.path.join(root, "model"), text={
        "hidden_size": args.hidden, "num_hidden_layers": args.layers, "intermediate_size": 4 * args.hidden},
        vision={"depth": 4})
    pixels = args.image * args.image
    processor = load_processor(path, min_pixels=pixels, max_pixels=pixels)
    model = load_model(path, "float32").eval()
    prompts = []
    for i in range(args.prompts):
        g = torch.Generator().manual_seed(i)
        image = Image.fromarray(torch.randint(0, 256, (args.image, args.image, 3), generator=g,
                                              dtype=torch.uint8).numpy())
        content = [{"type": "image"}, {"type": "text", "text": f"How many red squares are in picture {i}?"}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
        enc = processor(text=[text], images=[image], return_tensors="pt")
        prompts.append(PromptInputs(enc["input_ids"][0], enc["mm_token_type_ids"][0], enc["pixel_values"],
                                    enc["image_grid_thw"], images=[image]))
    return model, processor, prompts, stop_token_ids(processor, model)


def compare_prefill(args, model, prompts, stops, pad_id) -> None:
    """Plain against group-shared prefill, HF engine: the table of seconds and tokens/s per G."""
    from rlvr.config import RolloutConfig
    from rlvr.rollout import generate

    print(f"{'G':>3} {'plain s':>9} {'shared s':>9} {'plain tok/s':>12} {'shared tok/s':>13} {'speed-up':>9}")
    for g in [int(x) for x in args.groups.split(",")]:
        times: dict[bool, list[float]] = {False: [], True: []}
        tokens: dict[bool, list] = {}
        for run in range(args.runs + 1):
            for shared in (False, True):
                cfg = RolloutConfig(group_size=g, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                    micro_batch_size=g * args.prompts, shared_prefill=shared)
                start = time.perf_counter()
                seeds = list(range(100 * run, 100 * run + args.prompts))
                out = generate(model, prompts, cfg, stops, pad_id, seeds=seeds)
                elapsed = time.perf_counter() - start
                assert all(len(r.token_ids) == args.new_tokens for r in out)
                tokens[shared] = [r.token_ids.tolist() for r in out]
                if run:  # run 0 warms up
                    times[shared].append(elapsed)
            if tokens[False] != tokens[True]:
                raise SystemExit(f"G={g} run {run}: the two paths sampled different tokens")
        plain, shared = statistics.median(times[False]), statistics.median(times[True])
        n = g * args.prompts * args.new_tokens
        print(f"{g:>3} {plain:>9.3f} {shared:>9.3f} {n / plain:>12.1f} {n / shared:>13.1f} {plain / shared:>8.2f}x")


def engine_config(args, root: str, prompt_tokens: int):
    """The run config both engines are built from: the benchmark's model, images and sampling."""
    from rlvr.config import load_config

    groups = [int(x) for x in args.groups.split(",")]
    return load_config(None, [
        f"model.name_or_path={os.path.join(root, 'model')}", "model.dtype=float32",
        f"data.min_pixels={args.image ** 2}", f"data.max_pixels={args.image ** 2}",
        f"data.max_prompt_tokens={prompt_tokens}", f"rollout.max_new_tokens={args.new_tokens}",
        f"rollout.min_new_tokens={args.new_tokens}", "rollout.temperature=1.0", "rollout.top_p=1.0",
        "rollout.top_k=0", f"rollout.micro_batch_size={max(groups) * args.prompts}",
        f"rollout.vllm.max_num_seqs={max(groups) * args.prompts}",
        *args.set,
    ])


def compare_engines(args, root: str, model, prompts, stops, pad_id) -> None:
    """rlvr's HF engine against its vLLM engine: the same prompts, seeds and settings, alternating."""
    import dataclasses

    import torch

    from rlvr.rollout import make_engine

    cfg = engine_config(args, root, max(len(p.input_ids) for p in prompts))
    engines = {"hf": make_engine(cfg, stops, pad_id, policy=model)}
    start = time.perf_counter()
    engines["vllm"] = make_engine(dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, engine="vllm")),
                                  stops, pad_id)
    print(f"vLLM engine started in {time.perf_counter() - start:.1f} s (not timed below); torch threads "
          f"{torch.get_num_threads()} after it\n")
    print(f"{'G':>3} {'HF s':>9} {'vLLM s':>9} {'HF tok/s':>10} {'vLLM tok/s':>11} {'vLLM/HF':>8}")
    for g in [int(x) for x in args.groups.split(",")]:
        settings = dataclasses.replace(cfg.rollout, group_size=g)
        times: dict[str, list[float]] = {name: [] for name in engines}
        for run in range(args.runs + 1):
            for name, engine in engines.items():
                if torch.get_num_threads() != args.threads:  # the same count for both, whatever an engine set
                    torch.set_num_threads(args.threads)
                start = time.perf_counter()
                out = engine.generate(prompts, list(range(100 * run, 100 * run + args.prompts)), settings=settings)
                elapsed = time.perf_counter() - start
                wrong = [len(r.token_ids) for r in out if len(r.token_ids) != args.new_tokens
                         or not torch.isfinite(r.logprobs).all()]
                if len(out) != g * args.prompts or wrong:
                    raise SystemExit(f"{name}, G={g}, run {run}: {len(out)} samples, lengths {wrong} off "
                                     f"{args.new_tokens} or log-probs not finite")
                if run:  # run 0 warms up (vLLM compiles its graphs for the batch size there)
                    times[name].append(elapsed)
        hf, vllm = statistics.median(times["hf"]), statistics.median(times["vllm"])
        n = g * args.prompts * args.new_tokens
        print(f"{g:>3} {hf:>9.3f} {vllm:>9.3f} {n / hf:>10.1f} {n / vllm:>11.1f} {hf / vllm:>7.2f}x")
        print(f"    runs, s: HF {' '.join(f'{t:.2f}' for t in times['hf'])}; "
              f"vLLM {' '.join(f'{t:.2f}' for t in times['vllm'])}", flush=True)
    engines["vllm"].close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", action="store_true", help="HF engine against vLLM (instead of plain vs shared "
                        "prefill); defaults to the medium model and G = 8")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--image", type=int, default=448, help="image side, pixels")
    parser.add_argument("--groups", default=None, help="group sizes G, comma-separated (default 8,16; --engines 8)")
    parser.add_argument("--hidden", type=int, default=None, help="text hidden size (default 256; --engines 1024)")
    parser.add_argument("--layers", type=int, default=None, help="text decoder layers (default 4; --engines 8)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="--engines: a config override for both engines (repeatable), "
                        "e.g. rollout.vllm.enforce_eager=true")
    args = parser.parse_args(argv)
    args.groups = args.groups or ("8" if args.engines else "8,16")
    args.hidden = args.hidden or (1024 if args.engines else 256)
    args.layers = args.layers or (8 if args.engines else 4)
    if args.engines and args.hidden // 4 not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512):
        parser.error(f"--hidden {args.hidden}: 4 heads of {args.hidden // 4}, a head size vLLM's CPU attention "
                     "does not support; try 128, 256, 512 or 1024")
    if args.engines and importlib.util.find_spec("vllm") is None:
        raise SystemExit("--engines needs vLLM: run with the vLLM environment's Python (.venv-vllm/bin/python)")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads: vLLM's OpenMP kernels too

    import torch

    torch.set_num_threads(args.threads)
    if args.engines:
        from rlvr.rollout.vllm_env import prepare

        prepare()  # vLLM's environment variables, and torchvision importable there
    with tempfile.TemporaryDirectory() as root:
        model, processor, prompts, stops = build(args, root)
        grid = prompts[0].image_grid_thw[0].tolist()
        print(f"model: Qwen2.5-VL random weights, text hidden {args.hidden} x {args.layers} layers, vision depth 4, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, fp32; torch threads {args.threads}")
        print(f"workload: {args.prompts} prompts, {args.image}x{args.image} image each (grid {grid}, "
              f"{len(prompts[0].input_ids)} prompt tokens), {args.new_tokens} new tokens per sample, "
              f"median of {args.runs} runs after 1 warm-up\n")
        if args.engines:
            compare_engines(args, root, model, prompts, stops, processor.tokenizer.pad_token_id)
        else:
            compare_prefill(args, model, prompts, stops, processor.tokenizer.pad_token_id)


if __name__ == "__main__":
    main()
