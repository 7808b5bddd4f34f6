"""Rollout throughput with and without group-shared prefill, at G = 8 and G = 16.

    .venv/bin/python benchmarks/rollout.py [--runs 5] [--prompts 2] [--new-tokens 64] [--image 448]

The workload of ``benchmarks/step_vs_trl.py``: a random-weight Qwen2.5-VL (text hidden 256,
4 layers, vision depth 4), one 448x448 image per prompt (256 image tokens after merging,
1,024 vision patches), ``--prompts`` prompts x G samples in one generate call, exactly
``--new-tokens`` new tokens per sample (stop tokens suppressed until then), seeded sampling
at temperature 1. The plain path feeds every sample's image through the vision tower and
its prompt through the prefill; the shared path does both once per prompt and expands the
KV cache. Reported: median seconds per rollout over ``--runs`` runs (the two paths
alternate, after one warm-up each) and generated tokens per second; their ratio in one
column. Both paths sample the same tokens (checked on every run).
"""

from __future__ import annotations

import argparse
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
        "hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 1024}, vision={"depth": 4})
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
                                    enc["image_grid_thw"]))
    return model, processor, prompts, stop_token_ids(processor, model)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--image", type=int, default=448, help="image side, pixels")
    parser.add_argument("--groups", default="8,16", help="group sizes G, comma-separated")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)

    import torch

    from rlvr.config import RolloutConfig
    from rlvr.rollout import generate

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        model, processor, prompts, stops = build(args, root)
        grid = prompts[0].image_grid_thw[0].tolist()
        print(f"model: Qwen2.5-VL random weights, text hidden 256 x 4 layers, vision depth 4, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, fp32; torch threads {args.threads}")
        print(f"workload: {args.prompts} prompts, {args.image}x{args.image} image each (grid {grid}, "
              f"{len(prompts[0].input_ids)} prompt tokens), {args.new_tokens} new tokens per sample, "
              f"median of {args.runs} runs after 1 warm-up\n")
        print(f"{'G':>3} {'plain s':>9} {'shared s':>9} {'plain tok/s':>12} {'shared tok/s':>13} {'speed-up':>9}")
        for g in [int(x) for x in args.groups.split(",")]:
            times: dict[bool, list[float]] = {False: [], True: []}
            tokens: dict[bool, list] = {}
            for run in range(args.runs + 1):
                for shared in (False, True):
                    cfg = RolloutConfig(group_size=g, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                        micro_batch_size=g * args.prompts, shared_prefill=shared)
                    start = time.perf_counter()
                    out = generate(model, prompts, cfg, stops, processor.tokenizer.pad_token_id,
                                   seeds=list(range(100 * run, 100 * run + args.prompts)))
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


if __name__ == "__main__":
    main()
